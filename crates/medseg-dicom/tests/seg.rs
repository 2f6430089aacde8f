//! DICOM SEG: written from a label map on a synthetic series, read back with dicom-rs (masks,
//! references, codes) and, where `dciodvfy` (dicom3tools) is installed, validated by it.
use std::path::Path;

use dicom_dictionary_std::tags;
use medseg_data::Volume;
use medseg_dicom::{Limits, SegOptions, read_dicom, write_seg};

fn names() -> Vec<String> {
    ["background", "liver", "kidney_left", "spleen"].iter().map(|s| s.to_string()).collect()
}

/// Liver in slices 1..=3, left kidney in slice 4, no spleen.
fn labels(shape: [usize; 3], affine: medseg_data::Affine) -> Volume<u8> {
    Volume::from_fn(shape, affine, |i, j, k| {
        if (1..=3).contains(&k) && (5..20).contains(&i) && (4..12).contains(&j) {
            1
        } else if k == 4 && i > 30 && j > 20 {
            2
        } else {
            0
        }
    })
}

#[test]
fn seg_round_trip_and_references() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/axial");
    let src = read_dicom(&fx, None, Limits::default()).unwrap();
    let lab = labels(src.volume.shape(), src.volume.affine);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.dcm");
    let written = write_seg(&out, &lab, &names(), &src.info, &SegOptions::default()).unwrap();
    assert_eq!(written.segments.len(), 2, "spleen is absent: no segment");
    assert_eq!(written.frames, 3 + 1);
    assert_eq!(written.segments[1].code.value, "64033007");

    let obj = dicom_object::open_file(&out).unwrap();
    let get = |tag| obj.element(tag).unwrap().to_str().unwrap().trim().to_string();
    assert_eq!(get(tags::SOP_CLASS_UID), "1.2.840.10008.5.1.4.1.1.66.4");
    assert_eq!(get(tags::STUDY_INSTANCE_UID), src.info.study_instance_uid);
    assert_eq!(get(tags::FRAME_OF_REFERENCE_UID), src.info.frame_of_reference_uid);
    assert_eq!(get(tags::PATIENT_ID), src.info.patient.patient_id);
    assert_eq!(get(tags::NUMBER_OF_FRAMES), "4");
    let [nx, ny, nz] = lab.shape();
    let bits = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
    let frames = obj.element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).unwrap().items().unwrap();
    let mut rebuilt = vec![0u8; nx * ny * nz];
    for (f, item) in frames.iter().enumerate() {
        let seg: u16 =
            item.element(tags::SEGMENT_IDENTIFICATION_SEQUENCE).unwrap().items().unwrap()[0]
                .element(tags::REFERENCED_SEGMENT_NUMBER)
                .unwrap()
                .to_int()
                .unwrap();
        let deriv = &item.element(tags::DERIVATION_IMAGE_SEQUENCE).unwrap().items().unwrap()[0];
        let source = &deriv.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap()[0];
        let uid = source
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        let k = src
            .info
            .slices
            .iter()
            .position(|s| s.sop_instance_uid == uid)
            .expect("frame references a source slice");
        let label = written.segments[seg as usize - 1].label as u8;
        for j in 0..ny {
            for i in 0..nx {
                let b = f * nx * ny + j * nx + i;
                if bits[b / 8] >> (b % 8) & 1 == 1 {
                    rebuilt[(i * ny + j) * nz + k] = label;
                }
            }
        }
    }
    assert_eq!(rebuilt, lab.data(), "masks read back differ from the label map");
}

#[test]
fn seg_refuses_a_label_map_off_the_source_grid_or_unnamed_labels() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/axial");
    let src = read_dicom(&fx, None, Limits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.dcm");
    let wrong = Volume::filled([4, 4, 4], 1u8, src.volume.affine);
    assert!(write_seg(&out, &wrong, &names(), &src.info, &SegOptions::default()).is_err());
    let unnamed = Volume::filled(src.volume.shape(), 7u8, src.volume.affine);
    let err = write_seg(&out, &unnamed, &names(), &src.info, &SegOptions::default()).unwrap_err();
    assert!(err.to_string().contains("label 7"), "{err}");
    assert!(!out.exists(), "nothing written on error");
}

#[test]
fn dciodvfy_reports_no_errors() {
    let Ok(status) = std::process::Command::new("dciodvfy").arg("-help").output() else {
        println!("skipped: dciodvfy (Debian package dicom3tools) is not installed");
        return;
    };
    let _ = status;
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/axial");
    let src = read_dicom(&fx, None, Limits::default()).unwrap();
    let lab = labels(src.volume.shape(), src.volume.affine);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seg.dcm");
    write_seg(&out, &lab, &names(), &src.info, &SegOptions::default()).unwrap();
    let run = std::process::Command::new("dciodvfy").arg(&out).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy errors:\n{text}");
}
