//! Reading the committed synthetic series (`tools/dicom/make_series.py`): geometry, voxels,
//! series choice, the refused geometries and hostile files.
use std::path::{Path, PathBuf};

use medseg_dicom::{Error, Limits, Scan, read_dicom, to_i16_exact};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn check_case(case: &str) {
    let exp = &expected()[case];
    let got = read_dicom(fixtures().join(case), None, Limits::default())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let v = &got.volume;
    let shape: Vec<usize> =
        exp["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(v.shape().to_vec(), shape, "{case}: shape");
    for r in 0..4 {
        for c in 0..4 {
            let want = exp["affine"][r][c].as_f64().unwrap();
            let have = v.affine.0[r][c];
            assert!((want - have).abs() < 1e-6, "{case}: affine[{r}][{c}] {have} vs {want}");
        }
    }
    let [_, ny, nz] = v.shape();
    let (mut sum, mut weighted) = (0f64, 0f64);
    for (idx, &x) in v.data().iter().enumerate() {
        let (i, j, k) = (idx / (ny * nz), (idx / nz) % ny, idx % nz);
        sum += x as f64;
        weighted += x as f64 * (1 + i + 10 * j + 100 * k) as f64;
    }
    assert_eq!(sum, exp["sum"].as_f64().unwrap(), "{case}: sum of HU");
    assert_eq!(weighted, exp["weighted_sum"].as_f64().unwrap(), "{case}: index-weighted sum");
    for item in exp["voxels"].as_array().unwrap() {
        let ijk: Vec<usize> = (0..3).map(|a| item[a].as_u64().unwrap() as usize).collect();
        assert_eq!(
            v.at(ijk[0], ijk[1], ijk[2]),
            item[3].as_f64().unwrap() as f32,
            "{case}: voxel {ijk:?}"
        );
    }
    assert_eq!(to_i16_exact(v).is_some(), exp["int16"].as_bool().unwrap(), "{case}: int16 fit");
    assert_eq!(got.info.slices.len(), shape[2]);
    // Volume order follows the position along the normal, not InstanceNumber or file order.
    let normal = {
        let o = got.info.image_orientation;
        [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]]
    };
    let along: Vec<f64> =
        got.info.slices.iter().map(|s| (0..3).map(|a| s.position[a] * normal[a]).sum()).collect();
    assert!(
        along.windows(2).all(|w| w[1] > w[0]),
        "{case}: slices not in position order: {along:?}"
    );
}

#[test]
fn axial_series_reversed_instance_numbers() {
    check_case("axial");
}

#[test]
fn oblique_orientation() {
    check_case("oblique");
}

#[test]
fn per_slice_rescale_slope_and_intercept() {
    check_case("rescale");
}

#[test]
fn jpeg2000_lossless() {
    check_case("jpeg2000");
}

#[test]
fn rle_lossless() {
    check_case("rle");
}

#[test]
fn zip_of_a_folder() {
    check_case("axial.zip");
}

#[test]
fn enhanced_multiframe_file() {
    check_case("multiframe.dcm");
    let got = read_dicom(fixtures().join("multiframe.dcm"), None, Limits::default()).unwrap();
    let frames: Vec<Option<u32>> = got.info.slices.iter().map(|s| s.frame_number).collect();
    assert!(frames.iter().all(|f| f.is_some()), "frames referenced by number: {frames:?}");
}

#[test]
fn non_dicom_files_are_skipped_and_counted() {
    let scan = Scan::open(fixtures().join("axial"), Limits::default()).unwrap();
    assert_eq!(scan.skipped() as u64, expected()["axial"]["skipped"].as_u64().unwrap());
    assert_eq!(scan.files(), scan.skipped() + 5);
    assert_eq!(scan.series().len(), 1);
}

#[test]
fn two_series_and_a_localizer_choose_by_rule_or_uid() {
    let exp = &expected()["two_series"];
    let mut scan = Scan::open(fixtures().join("two_series"), Limits::default()).unwrap();
    assert_eq!(scan.series().len() as u64, exp["series_count"].as_u64().unwrap());
    let loc = scan.series().iter().find(|s| s.localizer).expect("a localiser series");
    assert!(loc.slices > 5, "the localiser has the most images, so the rule must skip it");
    let chosen = scan.choose(None).unwrap().series_instance_uid.clone();
    assert_eq!(chosen, exp["chosen"].as_str().unwrap());
    check_case("two_series");
    let other = exp["other_ct"].as_str().unwrap();
    let got = scan.load(other).unwrap();
    assert_eq!(got.volume.shape(), [40, 32, 3]);
    match scan.choose(Some("1.2.3.4")) {
        Err(Error::Selection { message, .. }) => assert!(message.contains(other), "{message}"),
        other => panic!("expected a selection error, got {other:?}"),
    }
}

#[test]
fn refused_geometries_and_transfer_syntaxes_say_which() {
    let exp = expected();
    for (case, words) in exp["errors"].as_object().unwrap() {
        let err = read_dicom(fixtures().join(case), None, Limits::default()).expect_err(case);
        let text = err.to_string();
        assert!(text.contains(words.as_str().unwrap()), "{case}: {text}");
    }
}

#[test]
fn listing_reports_geometry_problems() {
    let scan = Scan::open(fixtures().join("missing"), Limits::default()).unwrap();
    let s = &scan.series()[0];
    assert_eq!(s.slices, 4);
    assert!(s.geometry_problem.as_deref().unwrap_or("").contains("missing slice"), "{s:?}");
    let ok = Scan::open(fixtures().join("axial"), Limits::default()).unwrap();
    let s = &ok.series()[0];
    assert_eq!(s.geometry_problem, None);
    assert_eq!(s.dims, [40, 32, 5]);
    assert!((s.spacing[2].unwrap() - 2.5).abs() < 1e-6);
}

fn first_image(case: &str) -> PathBuf {
    fixtures().join(case).join("IM0001")
}

#[test]
fn truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(first_image("axial")).unwrap();
    for cut in [140, 400, bytes.len() - 100] {
        let p = dir.path().join(format!("cut{cut}.dcm"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = read_dicom(&p, None, Limits::default()).expect_err("truncated");
        assert!(err.to_string().contains(&format!("cut{cut}.dcm")), "{err}");
    }
}

#[test]
fn header_larger_than_the_pixel_data_is_refused_before_allocating() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let mut obj = dicom_object::open_file(first_image("axial")).unwrap();
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(8000u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(8000u16)));
    let p = dir.path().join("huge.dcm");
    obj.write_to_file(&p).unwrap();
    match read_dicom(&p, None, Limits::default()) {
        Err(Error::Limit { file, message }) => {
            assert!(file.contains("huge.dcm") && message.contains("PixelData holds"), "{message}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Over the rows/columns limit: refused from the header alone.
    let small = Limits { max_rows_cols: 4000, ..Limits::default() };
    let err = read_dicom(&p, None, small).expect_err("over the limit");
    assert!(matches!(err, Error::Limit { .. }), "{err}");
}

#[test]
fn not_dicom_at_all_is_a_clear_error() {
    let err =
        read_dicom(fixtures().join("axial/README.txt"), None, Limits::default()).expect_err("text");
    assert!(matches!(err, Error::NoImages { .. }), "{err}");
}

#[test]
fn convert_writes_int16_when_the_hu_fit_else_float32() {
    let dir = tempfile::tempdir().unwrap();
    for (case, dtype) in [("axial", "int16"), ("rescale", "float32")] {
        let out = dir.path().join(format!("{case}.nii.gz"));
        let done =
            medseg_dicom::convert(&fixtures().join(case), &out, None, Limits::default()).unwrap();
        assert_eq!(done.dtype, dtype, "{case}");
        let back: medseg_data::Volume<f32> = medseg_data::read_volume(&out).unwrap();
        let direct = read_dicom(fixtures().join(case), None, Limits::default()).unwrap();
        assert_eq!(back.data(), direct.volume.data(), "{case}: voxels after the NIfTI round trip");
        assert!(back.affine.max_abs_diff(&direct.volume.affine) < 1e-4, "{case}: affine");
        let info = medseg_data::read_info(&out).unwrap();
        let want = if dtype == "int16" { medseg_data::Dtype::I16 } else { medseg_data::Dtype::F32 };
        assert_eq!(info.dtype, want, "{case}: on-disk type");
    }
}

#[test]
fn element_length_larger_than_the_file_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(first_image("axial")).unwrap();
    // PixelData (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
    let pat = [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
    let at = bytes.windows(8).rposition(|w| w == pat).expect("PixelData header") + 8;
    bytes[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let p = dir.path().join("liar.dcm");
    std::fs::write(&p, &bytes).unwrap();
    match read_dicom(&p, None, Limits::default()) {
        Err(Error::Limit { file, message }) => {
            assert!(file.contains("liar.dcm") && message.contains("4294967280"), "{message}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}
