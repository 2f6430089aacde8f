//! Writes a DICOM SEG from a DICOM series and a NIfTI label map on its grid (for the tools/dicom
//! validation scripts): `seg_from_nifti DICOM_DIR LABELS.nii.gz NAME,NAME,… OUT.dcm`, names in
//! label order, background first.
use medseg_dicom::{Limits, SegOptions, read_dicom, write_seg};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dicom, labels, names, out] = args.as_slice() else {
        return Err("usage: seg_from_nifti DICOM_DIR LABELS.nii.gz NAME,NAME,... OUT.dcm".into());
    };
    let src = read_dicom(dicom, None, Limits::default())?;
    let lab: medseg_data::Volume<u16> = medseg_data::read_volume(labels)?;
    let names: Vec<String> = names.split(',').map(str::to_string).collect();
    let written =
        write_seg(std::path::Path::new(out), &lab, &names, &src.info, &SegOptions::default())?;
    println!("{}", serde_json::to_string_pretty(&written)?);
    Ok(())
}
