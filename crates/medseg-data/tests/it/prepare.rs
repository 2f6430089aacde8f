//! `prepare`: MSD archive verification/unpacking and TotalSegmentator conversion on small local
//! archives (the network part cannot run in tests).
use std::io::Write;
use std::path::Path;

use medseg_data::phantom::{self, PhantomConfig};
use medseg_data::prepare::{self, MsdTask};
use medseg_data::totalseg::{self, TOTALSEG_CLASSES};
use medseg_data::{Affine, Datalist, Error, Volume, read_volume, write_volume};

use crate::common::shared_data;

fn tar_dir(src: &Path, prefix: &str, out: &Path) {
    let f = std::fs::File::create(out).expect("tar");
    let mut b = tar::Builder::new(f);
    b.append_dir_all(prefix, src).expect("append");
    b.finish().expect("finish");
}

#[test]
fn msd_archive_is_verified_and_unpacked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    let cfg = PhantomConfig {
        n_cases: 2,
        n_validation: 0,
        shape: [16, 16, 16],
        ..PhantomConfig::default()
    };
    phantom::generate(&src, &cfg).expect("phantom");
    // macOS resource-fork files as found in the real MSD tars must be ignored.
    std::fs::write(src.join("imagesTr/._phantom_000.nii.gz"), b"junk").expect("junk");
    let archive = tmp.path().join("Task99_Phantom.tar");
    tar_dir(&src, "Task99_Phantom", &archive);
    let md5 = prepare::md5_file(&archive, false).expect("md5");
    let task = MsdTask {
        name: "Task99_Phantom",
        url: "file:///nowhere",
        md5: Box::leak(md5.into_boxed_str()),
    };
    let bad = MsdTask { md5: "00000000000000000000000000000000", ..task };
    let dest = tmp.path().join("data");
    let err = prepare::prepare_msd_from_archive(&bad, &archive, &dest, false).expect_err("bad md5");
    assert!(matches!(err, Error::Prepare { .. }) && err.to_string().contains("md5"), "{err}");
    let json = prepare::prepare_msd_from_archive(&task, &archive, &dest, false).expect("prepare");
    let dl = Datalist::from_json(&json).expect("datalist");
    assert_eq!(dl.training.len(), 2);
    let dl2 = Datalist::from_folders(dest.join("Task99_Phantom")).expect("folders");
    assert_eq!(dl2.training.len(), 2, "hidden ._ files are skipped");
    // Second call reuses the unpacked task without touching the archive.
    std::fs::remove_file(&archive).expect("rm");
    assert_eq!(
        prepare::prepare_msd_from_archive(&task, &archive, &dest, false).expect("again"),
        json
    );
    assert_eq!(prepare::msd_task("spleen").map(|t| t.name), Some("Task09_Spleen"));
}

#[test]
fn corrupt_and_malicious_archives_are_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 1000]).expect("w");
    assert!(prepare::unpack_tar(&junk, &tmp.path().join("out")).is_err());
    assert!(prepare::unpack_zip(&junk, &tmp.path().join("out")).is_err());
    // A tar entry named "../evil.txt".
    let evil = tmp.path().join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&evil).expect("c"));
        let mut h = tar::Header::new_old();
        let name = b"../evil.txt";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).expect("append");
        b.finish().expect("finish");
    }
    let err = prepare::unpack_tar(&evil, &tmp.path().join("safe")).expect_err("escape");
    assert!(err.to_string().contains("evil"), "{err}");
    assert!(!tmp.path().join("evil.txt").exists());
}

/// Writes a fake TotalSegmentator case: every mask empty except three overlapping cubes.
fn fake_case(root: &Path, id: &str, shift: usize) {
    let dir = root.join(id).join("segmentations");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let aff = Affine::from_diagonal([1.5, 1.5, 1.5]);
    write_volume(root.join(id).join("ct.nii.gz"), &Volume::filled([10, 9, 8], -100i16, aff))
        .expect("ct");
    for (c, name) in TOTALSEG_CLASSES.iter().enumerate() {
        let m = Volume::from_fn([10, 9, 8], aff, |i, j, k| {
            let inside =
                |lo: usize| (lo..lo + 4).contains(&i) && (1..5).contains(&j) && (1..5).contains(&k);
            u8::from(match c {
                0 => inside(shift),     // spleen
                4 => inside(shift + 2), // liver, overlapping the spleen: liver (later) wins
                116 => i == 9 && j == 8 && k == 7,
                _ => false,
            })
        });
        write_volume(dir.join(format!("{name}.nii.gz")), &m).expect("mask");
    }
}

#[test]
fn totalsegmentator_zip_is_merged_in_official_order_and_cached() {
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = tmp.path().join("Totalsegmentator_dataset_v201");
    fake_case(&raw, "s0001", 0);
    fake_case(&raw, "s0002", 3);
    std::fs::write(
        raw.join("meta.csv"),
        "image_id;age;gender;split\ns0001;50;m;train\ns0002;60;f;val\n",
    )
    .expect("csv");
    // Zip it like Zenodo does (one top-level directory).
    let zip_path = tmp.path().join("ts.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).expect("zip"));
        let opts = zip::write::SimpleFileOptions::default();
        for e in walk(&raw) {
            let rel = e.strip_prefix(tmp.path()).expect("rel").to_string_lossy().into_owned();
            z.start_file(rel, opts).expect("start");
            z.write_all(&std::fs::read(&e).expect("read")).expect("write");
        }
        z.finish().expect("finish");
    }
    let dest = tmp.path().join("prepared");
    let json = prepare::prepare_totalseg(&zip_path, &dest).expect("convert");
    let dl = Datalist::from_json(&json).expect("datalist");
    assert_eq!((dl.training.len(), dl.validation.len()), (1, 1));
    assert_eq!(dl.num_classes(), Some(118));
    let l: Volume<u8> = read_volume(dl.training[0].label.as_ref().expect("label")).expect("read");
    assert_eq!(l.at(0, 1, 1), 1, "spleen only");
    assert_eq!(l.at(2, 1, 1), 5, "overlap: liver (later class) wins");
    assert_eq!(l.at(5, 1, 1), 5);
    assert_eq!(l.at(9, 8, 7), 117);
    assert_eq!(l.at(8, 1, 1), 0);
    // Cached: a second conversion does not need the masks any more.
    std::fs::remove_dir_all(dest.join("raw/Totalsegmentator_dataset_v201/s0001/segmentations"))
        .expect("rm");
    prepare::prepare_totalseg(&zip_path, &dest).expect("cached");
    // A missing mask is an error naming it.
    let root2 = tmp.path().join("broken");
    fake_case(&root2, "s0003", 0);
    std::fs::remove_file(root2.join("s0003/segmentations/aorta.nii.gz")).expect("rm");
    let err = totalseg::datalist(&root2, tmp.path().join("cache2")).expect_err("missing");
    assert!(err.to_string().contains("aorta.nii.gz"), "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn class_order_matches_the_shared_labels_json() {
    let Some(root) = shared_data() else { return };
    let text =
        std::fs::read_to_string(root.join("ts-abdomen-3mm-small/labels.json")).expect("labels");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for (c, name) in TOTALSEG_CLASSES.iter().enumerate() {
        assert_eq!(v[(c + 1).to_string()].as_str(), Some(*name));
    }
}
