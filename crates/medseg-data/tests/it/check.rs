//! The pre-flight data check: one error listing every bad item, warnings, the roi limit, the cache.
use std::path::Path;

use medseg_data::check::{CheckOptions, check_datalist, default_cache_path};
use medseg_data::{Affine, Datalist, Error, Limits, Volume, write_volume};

/// A datalist of 6 training + 1 validation items in `dir`; items 2, 3, 4 and 5 are bad.
fn write_datalist(dir: &Path) -> std::path::PathBuf {
    let aff = Affine::from_diagonal([2.0, 2.0, 2.0]);
    let p = |n: &str| dir.join(n);
    for n in 0..7 {
        let img = Volume::from_fn([8, 8, 6], aff, |i, j, k| (i + j + k) as f32);
        write_volume(p(&format!("img{n}.nii.gz")), &img).expect("img");
    }
    let lbl = |f: fn(usize) -> u8| Volume::from_fn([8, 8, 6], aff, move |i, _, _| f(i));
    for n in [0, 1, 6] {
        write_volume(p(&format!("lbl{n}.nii.gz")), &lbl(|i| (i % 3) as u8)).expect("lbl");
    }
    // 2: a different grid.
    write_volume(p("lbl2.nii.gz"), &Volume::filled([8, 8, 5], 0u8, aff)).expect("lbl2");
    // 3: a label value >= num_classes (3).
    write_volume(p("lbl3.nii.gz"), &lbl(|i| if i == 7 { 4 } else { 1 })).expect("lbl3");
    // 4: a fractional label.
    write_volume(
        p("lbl4.nii.gz"),
        &Volume::from_fn(
            [8, 8, 6],
            aff,
            |i, j, k| if (i, j, k) == (1, 2, 3) { 1.5f32 } else { 0.0 },
        ),
    )
    .expect("lbl4");
    // 5: a truncated label file.
    let good = std::fs::read(p("lbl0.nii.gz")).expect("read");
    std::fs::write(p("lbl5.nii.gz"), &good[..good.len() / 2]).expect("lbl5");
    let item = |n: usize| format!(r#"{{"image": "img{n}.nii.gz", "label": "lbl{n}.nii.gz"}}"#);
    let training: Vec<String> = (0..6).map(item).collect();
    let json = format!(
        r#"{{"name": "t", "labels": {{"0": "bg", "1": "a", "2": "b"}},
            "training": [{}], "validation": [{}]}}"#,
        training.join(","),
        item(6)
    );
    std::fs::write(p("dataset.json"), json).expect("json");
    p("dataset.json")
}

#[test]
fn every_bad_item_is_listed_in_one_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = write_datalist(dir.path());
    let dl = Datalist::from_json(&json).expect("datalist");
    let opts = CheckOptions::new(Some(3));
    let e = check_datalist(&json, &dl, &opts).expect_err("bad items");
    let Error::CheckFailed { checked, problems, .. } = &e else { panic!("{e}") };
    assert_eq!(*checked, 7);
    assert_eq!(problems.len(), 4, "{e}");
    let msg = e.to_string();
    for (file, what) in [
        ("lbl2.nii.gz", "geometry mismatch"),
        ("lbl3.nii.gz", "label value 4 is out of range (num_classes 3)"),
        ("lbl4.nii.gz", "value 1.5"),
        ("lbl5.nii.gz", ""),
    ] {
        assert!(
            problems.iter().any(|p| p.contains(file) && p.contains(what)),
            "{file} / {what:?} missing from:\n{msg}"
        );
    }
    assert!(msg.contains("pre-flight check found 4 problem(s) in 7 items"), "{msg}");
    // Without the bad items the check passes.
    let mut good = dl.clone();
    good.training
        .retain(|it| ["img0", "img1"].iter().any(|n| it.image.ends_with(format!("{n}.nii.gz"))));
    let r = check_datalist(&json, &good, &opts).expect("good items pass");
    assert_eq!((r.items, r.labels_read, r.labels_cached), (3, 3, 0));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn roi_above_the_limit_and_header_warnings() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = write_datalist(dir.path());
    let mut dl = Datalist::from_json(&json).expect("datalist");
    dl.training.truncate(2);
    let mut opts = CheckOptions::new(Some(3));
    opts.roi = Some([4096; 3]);
    let e = check_datalist(&json, &dl, &opts).expect_err("roi");
    assert!(e.to_string().contains("training crop of shape [4096, 4096, 4096]"), "{e}");
    opts.roi = Some([96; 3]);
    // A zero pixdim with sform_code 0: read with a warning that names the file.
    let p = dir.path().join("img0.nii.gz");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&p).expect("open")),
        &mut raw,
    )
    .expect("gunzip");
    raw[84..88].copy_from_slice(&0f32.to_le_bytes());
    raw[254..256].copy_from_slice(&0i16.to_le_bytes());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &raw).expect("gz");
    std::fs::write(&p, enc.finish().expect("gz")).expect("write");
    // The image grid now differs from its label's (qform vs sform), so only item 1 is clean: check
    // the warning through item 0's error-free header read.
    let e = check_datalist(&json, &dl, &opts).expect_err("grid differs after the edit");
    assert!(e.to_string().contains("lbl0.nii.gz"), "{e}");
    dl.training.retain(|it| it.image.ends_with("img0.nii.gz"));
    dl.training[0].label = None;
    dl.validation.clear();
    let r = check_datalist(&json, &dl, &opts).expect("image only");
    assert!(
        r.warnings.iter().any(|w| w.contains("img0.nii.gz") && w.contains("pixdim[2] is 0")),
        "{:?}",
        r.warnings
    );
    // Tight explicit limits name the file and its shape.
    opts.limits = Some(Limits { max_voxels: 100, max_bytes: 1 << 20 });
    let e = check_datalist(&json, &dl, &opts).expect_err("limits");
    assert!(e.to_string().contains("img0.nii.gz: volume of shape [8, 8, 6]"), "{e}");
}

#[test]
fn label_passes_are_cached_by_path_size_and_mtime() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = write_datalist(dir.path());
    let mut dl = Datalist::from_json(&json).expect("datalist");
    dl.training.truncate(2);
    let mut opts = CheckOptions::new(Some(3));
    opts.cache = Some(default_cache_path(&json));
    let r = check_datalist(&json, &dl, &opts).expect("first");
    assert_eq!((r.labels_read, r.labels_cached), (3, 0));
    assert!(dir.path().join(".medseg-check-cache.json").is_file());
    let r = check_datalist(&json, &dl, &opts).expect("second");
    assert_eq!((r.labels_read, r.labels_cached), (0, 3));
    // The verdict is not cached: fewer classes make the cached maximum (2) fail.
    let e = check_datalist(&json, &dl, &CheckOptions { num_classes: Some(2), ..opts.clone() })
        .expect_err("nc 2");
    assert!(e.to_string().contains("label value 2 is out of range (num_classes 2)"), "{e}");
    // A rewritten label (new size and mtime) is read again and its new values seen.
    let aff = Affine::from_diagonal([2.0, 2.0, 2.0]);
    write_volume(
        dir.path().join("lbl1.nii.gz"),
        &Volume::from_fn([8, 8, 6], aff, |i, j, _| if i == j { 9u8 } else { 0 }),
    )
    .expect("rewrite");
    let e = check_datalist(&json, &dl, &opts).expect_err("rewritten");
    assert!(e.to_string().contains("lbl1.nii.gz: label value 9"), "{e}");
    // A corrupt cache file is ignored.
    std::fs::write(dir.path().join(".medseg-check-cache.json"), "{not json").expect("corrupt");
    let mut dl1 = dl.clone();
    dl1.training.truncate(1);
    let r = check_datalist(&json, &dl1, &opts).expect("corrupt cache ignored");
    assert_eq!((r.labels_read, r.labels_cached), (2, 0));
}
