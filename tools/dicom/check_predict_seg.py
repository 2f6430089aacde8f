#!/usr/bin/env python3
"""Validate the DICOM SEG that `medseg predict` writes from a DICOM series, end to end: dciodvfy, then
highdicom's masks against the NIfTI label map the same command writes.

Usage: ~/.venvs/ref/bin/python tools/dicom/check_predict_seg.py MEDSEG MODEL DICOM_DIR OUT_DIR
  MEDSEG     the medseg binary (target/debug/medseg or target/release/medseg)
  MODEL      what `medseg predict --model` takes (a run folder, a package)
  DICOM_DIR  a DICOM series folder (e.g. a real CT written by make_series.py --from-nifti)
  OUT_DIR    receives labels.nii.gz and seg.dcm

Runs `medseg predict -o OUT_DIR/labels.nii.gz` and `medseg predict -o OUT_DIR/seg.dcm` (same model, same
input: the same label map), reads the class names from `medseg info MODEL --json`, and checks the SEG with
check_seg.validate. Exit 1 on any difference or dciodvfy error.
"""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_seg import validate  # noqa: E402


def main():
    exe, model, dicom_dir, out = sys.argv[1:5]
    os.makedirs(out, exist_ok=True)
    labels, seg = os.path.join(out, "labels.nii.gz"), os.path.join(out, "seg.dcm")
    for target in (labels, seg):
        subprocess.run([exe, "predict", "-i", dicom_dir, "-o", target, "--model", model], check=True,
                       capture_output=True)
    info = json.loads(subprocess.run([exe, "info", model, "--json"], check=True, capture_output=True,
                                     text=True).stdout)
    names = info["classes"]
    lab = np.asarray(nib.load(labels).dataobj).astype(np.int64)  # [i, j, k]
    print(f"{dicom_dir}: label map {lab.shape}, classes {names}")
    sys.exit(0 if validate(seg, lab, names, dicom_dir) else 1)


if __name__ == "__main__":
    main()
