//! `medseg prepare`: a TotalSegmentator folder becomes 117-class labels + dataset.json and the
//! printed datalist line points at it; MSD archives are md5-checked before anything is unpacked.
use medseg_data::totalseg::TOTALSEG_CLASSES;
use medseg_data::{Affine, Datalist, Volume, nifti_io::write_volume};

use crate::util::{medseg, medseg_err, s};

#[test]
fn totalseg_folder_is_prepared_and_its_datalist_line_printed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = tmp.path().join("Totalsegmentator_dataset_v201");
    let aff = Affine::from_diagonal([1.5, 1.5, 1.5]);
    for case in ["s0001", "s0002"] {
        let seg = raw.join(case).join("segmentations");
        std::fs::create_dir_all(&seg).expect("mkdir");
        write_volume(raw.join(case).join("ct.nii.gz"), &Volume::filled([6, 5, 4], -100i16, aff))
            .expect("ct");
        for (c, name) in TOTALSEG_CLASSES.iter().enumerate() {
            let m = Volume::from_fn([6, 5, 4], aff, |i, _, _| u8::from(c == 4 && i < 3));
            write_volume(seg.join(format!("{name}.nii.gz")), &m).expect("mask");
        }
    }
    std::fs::write(raw.join("meta.csv"), "image_id;split\ns0001;train\ns0002;val\n").expect("csv");
    let dest = tmp.path().join("prepared");
    let args = ["prepare", "totalseg", s(&raw), "--dest", s(&dest)];
    let o = medseg(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let json = dest.join("dataset.json");
    assert!(out.contains(&format!("data.datalist = {:?}", json.display().to_string())), "{out}");
    let dl = Datalist::from_json(&json).expect("datalist");
    assert_eq!((dl.training.len(), dl.validation.len()), (1, 1));
    assert_eq!(dl.num_classes(), Some(118));
}

#[test]
fn msd_archive_with_a_wrong_md5_and_unknown_tasks_are_named_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("Task09_Spleen.tar");
    std::fs::write(&archive, b"not the real archive").expect("archive");
    let dest = tmp.path().join("data");
    let err =
        medseg_err(&["prepare", "msd", "spleen", "--archive", s(&archive), "--dest", s(&dest)]);
    assert!(err.contains("Task09_Spleen") && err.contains("md5"), "{err}");
    assert!(!dest.join("Task09_Spleen").exists(), "nothing unpacked from a bad archive");
    let err = medseg_err(&["prepare", "msd", "Task42_Nothing", "--archive", s(&archive)]);
    assert!(err.contains("unknown MSD task") && err.contains("Task09_Spleen"), "{err}");
}
