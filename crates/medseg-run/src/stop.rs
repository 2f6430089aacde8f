//! Ctrl-C handling of the run binaries: the first Ctrl-C sets a flag (the loop saves a
//! checkpoint after the current step and returns), a second one exits at once with status 130.
//! Exiting in the middle of a save is safe: the checkpoint generation being written is simply
//! incomplete, and the previous one stays the newest complete (see [`crate::checkpoint`]).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// Installs the process-wide Ctrl-C handler and returns its stop flag. Call it once per process.
pub fn install_stop_handler() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting now; the last complete checkpoint stays usable");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: saving a checkpoint after the current step (press again to abort)");
    })
    .map_err(|e| Error::Invalid(format!("installing the Ctrl-C handler: {e}")))?;
    Ok(stop)
}
