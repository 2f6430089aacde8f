#!/usr/bin/env python3
"""Validate medseg's DICOM SEG writer on a real CT: dciodvfy, then read back with highdicom.

Usage: ~/.venvs/ref/bin/python tools/dicom/check_seg.py SEG_FROM_NIFTI_BIN CASE_DIR DICOM_DIR OUT.dcm
  SEG_FROM_NIFTI_BIN  target/debug/examples/seg_from_nifti (cargo build -p medseg-dicom --example seg_from_nifti)
  CASE_DIR            ../shared/data/<case> (seg.nii.gz + labels.json)
  DICOM_DIR           that case's CT written by make_series.py --from-nifti

Prints dciodvfy's error/warning counts and whether highdicom's masks equal the label map
(every class present, voxel for voxel, in the source slices' order). Exit 1 on any difference.
"""
import json
import os
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom


def validate(seg_path, lab, names, dicom_dir):
    """dciodvfy on `seg_path`, then highdicom's masks against the label map `lab` ([i, j, k], on the grid
    medseg reads from `dicom_dir`) whose label c is called names[c]. Prints the findings; True when
    dciodvfy reports no error and the masks equal the label map."""
    v = subprocess.run(["dciodvfy", seg_path], capture_output=True, text=True)
    lines = (v.stdout + v.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning")]
    print(f"dciodvfy: {len(errors)} errors, {len(warnings)} warnings")
    for l in errors + sorted(set(warnings))[:10]:
        print("  " + l)

    seg = hd.seg.segread(seg_path)
    # Source slices in volume order: sort the CT files by position along the normal, as medseg does.
    src = [pydicom.dcmread(os.path.join(dicom_dir, f), stop_before_pixels=True) for f in os.listdir(dicom_dir)
           if f != "done"]
    iop = np.array(src[0].ImageOrientationPatient, dtype=float)
    n = np.cross(iop[:3], iop[3:])
    src.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), n)))
    uids = [d.SOPInstanceUID for d in src]
    seg_labels = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    present = sorted(set(np.unique(lab)) - {0})
    ok = sorted(names.index(l) for l in seg_labels.values()) == present
    print(f"segments: {len(seg_labels)} written, {len(present)} classes present, match: {ok}")
    rebuilt = np.zeros_like(lab)
    for number, label in seg_labels.items():
        # [slices, rows, cols, 1] for the source instances that have this segment (others: zeros).
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                               ignore_spatial_locations=False, assert_missing_frames_are_empty=True)
        mask = px[..., 0].astype(bool).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
        rebuilt[mask] = names.index(label)
    same = bool((rebuilt == lab).all())
    print(f"highdicom masks equal the label map: {same} ({int((rebuilt != lab).sum())} voxels differ)")
    return same and ok and not errors


def main():
    exe, case, dicom_dir, out = sys.argv[1:5]
    names_map = json.load(open(os.path.join(case, "labels.json")))
    names = [names_map[str(i)] for i in range(len(names_map))]
    lab = np.asarray(nib.load(os.path.join(case, "seg.nii.gz")).dataobj).astype(np.int64)  # [i, j, k]
    subprocess.run([exe, dicom_dir, os.path.join(case, "seg.nii.gz"), ",".join(names), out], check=True,
                   capture_output=True)
    sys.exit(0 if validate(out, lab, names, dicom_dir) else 1)


if __name__ == "__main__":
    main()
