//! medseg-run: the run infrastructure that training (medseg-train) and pretraining
//! (medseg-pretrain) share — run folders created exclusively and held by a lock
//! ([`folder`]), atomic files that respect the umask and whose stale temporaries are cleaned
//! ([`files`]), checkpoint generations that are wholly old or wholly new ([`checkpoint`]),
//! Ctrl-C handling ([`stop`]), configuration text and run-folder names ([`config`]), seeded
//! initialisation ([`seeded`]) and the run's pictures ([`picture`]). See the README.
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod files;
pub mod folder;
pub mod picture;
pub mod seeded;
pub mod stop;

pub use error::{Error, Result};
pub use files::write_atomic;
pub use folder::{RunLock, create_fresh};
pub use seeded::SeededVarMap;
