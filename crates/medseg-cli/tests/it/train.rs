//! `medseg train` is `medseg_train::cli`: the same arguments as the `train` binary.
use crate::util::{medseg, medseg_err};

#[test]
fn train_subcommand_has_the_train_binary_arguments() {
    let o = medseg(&["train", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in ["--config", "--device", "--seed", "--out", "--resume"] {
        assert!(help.contains(flag), "medseg train --help lacks {flag}:\n{help}");
    }
    let e = medseg_err(&["train", "--config", "no_such_preset_or_file"]);
    assert!(e.contains("no_such_preset_or_file"), "{e}");
}
