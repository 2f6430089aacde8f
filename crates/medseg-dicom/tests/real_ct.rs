//! The real CTs of `../shared/data`, written as DICOM series by
//! `tools/dicom/make_series.py --from-nifti CT OUT` into `/tmp/dicom-real/<case>` (not committed),
//! read back: HU equal to the NIfTI voxel for voxel, affine within 1e-4 mm. Skipped, with the reason
//! printed, when either is absent.
use std::path::{Path, PathBuf};

use medseg_dicom::{Limits, read_dicom};

fn shared(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(case).join("ct.nii.gz")
}

#[test]
fn real_ct_series_equal_their_nifti() {
    let mut ran = 0;
    for case in ["ts-abdomen-3mm-small", "ts-abdomen-pelvis-3mm", "ts-thorax-aorta-1.5mm"] {
        let nifti = shared(case);
        let series = Path::new("/tmp/dicom-real").join(case);
        if !nifti.exists() || !series.exists() {
            println!(
                "skipped {case}: needs {} and {} (tools/dicom/make_series.py --from-nifti)",
                nifti.display(),
                series.display()
            );
            continue;
        }
        let want: medseg_data::Volume<f32> = medseg_data::read_volume(&nifti).unwrap();
        let got = read_dicom(&series, None, Limits::default()).unwrap();
        assert_eq!(got.volume.shape(), want.shape(), "{case}");
        let d = got.volume.affine.max_abs_diff(&want.affine);
        assert!(d < 1e-4, "{case}: affine differs by {d}");
        let bad = got.volume.data().iter().zip(want.data()).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{case}: {bad} voxels differ");
        ran += 1;
    }
    println!("{ran} real CT series compared");
}
