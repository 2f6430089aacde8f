//! Checkpoint generations under faults: a save cut by a full disk (an injected writer that fails
//! after N bytes, and a real 64 KiB tmpfs when mounting is permitted) leaves the previous
//! generation usable; an incomplete or corrupt generation is skipped; the old two-file layout
//! still resumes and serves inference.
use std::path::Path;

use medseg_run::checkpoint::{
    self, BEST, Fault, LAST_STATE, LAST_WEIGHTS, generations, inference_weights, latest,
    resume_point, save,
};

fn bytes(step: u64, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u64 * 31 + step) as u8).collect()
}

/// Saves steps 1 and 2, then step 3 on a disk that fills after `room` bytes: step 2 must stay
/// the newest complete generation, byte for byte, and no partial folder may remain.
fn full_disk_keeps_the_previous_generation(ckpt: &Path, room: Option<u64>) {
    for step in 1..=2 {
        save(ckpt, step, &bytes(step, 3000), &bytes(step + 100, 6000), None).expect("save");
    }
    let fault = room.map(Fault::DiskFullAfter);
    let e = save(ckpt, 3, &bytes(3, 30_000), &bytes(103, 60_000), fault).expect_err("disk full");
    assert!(e.to_string().contains("space"), "{e}");
    let g = latest(ckpt).expect("scan").expect("a complete generation");
    assert_eq!(g.step, 2);
    assert_eq!(std::fs::read(g.weights()).expect("w"), bytes(2, 3000));
    assert_eq!(std::fs::read(g.state()).expect("s"), bytes(102, 6000));
    assert_eq!(std::fs::read(ckpt.join(LAST_WEIGHTS)).expect("last"), bytes(2, 3000));
    let names: Vec<String> = std::fs::read_dir(ckpt)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".medseg-tmp-")), "partial save left: {names:?}");
    let r = resume_point(ckpt.parent().expect("run")).expect("resume");
    assert_eq!(r.generation.map(|g| g.step), Some(2));
}

#[test]
fn an_injected_full_disk_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    // 40 000 bytes: the weights fit, the state does not.
    full_disk_keeps_the_previous_generation(&tmp.path().join("checkpoints"), Some(40_000));
    let tmp = tempfile::tempdir().expect("tmp");
    full_disk_keeps_the_previous_generation(&tmp.path().join("checkpoints"), Some(100));
}

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_real_full_tmpfs_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&run)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "skipped: cannot mount a tmpfs here (not root?); the injected full disk covers it"
        );
        return;
    }
    let _guard = Mount(run.clone());
    // Two generations of 9 000 bytes fit in 64 KiB; the third (90 000 bytes) cannot.
    full_disk_keeps_the_previous_generation(&run.join("checkpoints"), None);
}

#[test]
fn incomplete_and_corrupt_generations_are_skipped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ckpt = tmp.path().join("checkpoints");
    save(&ckpt, 4, &bytes(4, 100), &bytes(5, 200), None).expect("save 4");
    // A generation renamed into place without a manifest, and one whose state was damaged.
    let g6 = ckpt.join("step-000006");
    std::fs::create_dir(&g6).expect("mkdir");
    std::fs::write(g6.join(checkpoint::WEIGHTS), b"w").expect("w");
    std::fs::write(g6.join(checkpoint::STATE), b"s").expect("s");
    let g5 = ckpt.join("step-000005");
    std::fs::create_dir(&g5).expect("mkdir");
    for f in [checkpoint::WEIGHTS, checkpoint::STATE, checkpoint::MANIFEST] {
        std::fs::copy(ckpt.join("step-000004").join(f), g5.join(f)).expect("copy");
    }
    std::fs::write(
        g5.join(checkpoint::MANIFEST),
        std::fs::read_to_string(ckpt.join("step-000004/manifest.json"))
            .expect("m")
            .replace("\"step\": 4", "\"step\": 5"),
    )
    .expect("m5");
    let mut state = std::fs::read(g5.join(checkpoint::STATE)).expect("s");
    state[7] ^= 0xff;
    std::fs::write(g5.join(checkpoint::STATE), state).expect("damage");
    assert_eq!(generations(&ckpt).expect("scan").len(), 3);
    assert_eq!(latest(&ckpt).expect("scan").map(|g| g.step), Some(4));
    // The next save of step 6 does not collide with the broken folder and prunes the rest.
    let g = save(&ckpt, 6, &bytes(6, 10), &bytes(7, 10), None).expect("save 6");
    assert_eq!(g.dir, ckpt.join("step-000006-2"));
    let left: Vec<u64> = generations(&ckpt).expect("scan").iter().map(|g| g.step).collect();
    assert_eq!(left, vec![6]);
    // Saving the same step again adds a newer generation of it.
    let again = save(&ckpt, 6, &bytes(8, 10), &bytes(9, 10), None).expect("again");
    assert_eq!(latest(&ckpt).expect("scan"), Some(again));
}

#[test]
fn resume_and_inference_read_generations_then_the_old_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path();
    let ckpt = run.join("checkpoints");
    let e = resume_point(run).expect_err("empty");
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    assert!(inference_weights(run).is_err());
    // The layout of older versions: two files, no generations.
    std::fs::create_dir_all(&ckpt).expect("mkdir");
    std::fs::write(ckpt.join(LAST_WEIGHTS), b"w").expect("w");
    std::fs::write(ckpt.join(LAST_STATE), b"s").expect("s");
    let r = resume_point(run).expect("old layout");
    assert_eq!((r.weights, r.generation), (ckpt.join(LAST_WEIGHTS), None));
    assert_eq!(inference_weights(run).expect("old"), ckpt.join(LAST_WEIGHTS));
    // A generation wins over the old files; best wins for inference.
    let g = save(&ckpt, 3, b"weights3", b"state3", None).expect("save");
    assert_eq!(resume_point(run).expect("gen").generation, Some(g.clone()));
    assert_eq!(inference_weights(run).expect("gen"), g.weights());
    assert_eq!(std::fs::read(ckpt.join(LAST_WEIGHTS)).expect("link"), b"weights3");
    checkpoint::save_best(&ckpt, b"best").expect("best");
    assert_eq!(inference_weights(run).expect("best"), ckpt.join(BEST));
    // Generations that all fail to verify: a clear error, not the stale old files.
    std::fs::remove_file(ckpt.join(BEST)).expect("rm");
    std::fs::write(g.dir.join(checkpoint::MANIFEST), b"{").expect("break");
    let e = resume_point(run).expect_err("broken").to_string();
    assert!(e.contains("no complete checkpoint generation") && e.contains("manifest"), "{e}");
}
