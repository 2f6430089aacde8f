#!/usr/bin/env python3
"""Compare `medseg convert` with dcm2niix on the same DICOM series (nibabel on both outputs).

Usage: ~/.venvs/ref/bin/python tools/dicom/compare_dcm2niix.py MEDSEG_BIN DIR_OR_ZIP...

For each input: `medseg convert -i X -o medseg.nii.gz` and `dcm2niix -z y -f ref -o OUT X`, then
both images are reoriented to the closest canonical (RAS) orientation (dcm2niix flips the row
axis, medseg keeps DICOM row order: only the voxel order differs, not the world mapping), and
the script prints the largest affine difference and whether every HU value is equal
(dcm2niix's scl_slope/scl_inter applied by nibabel). Exit 1 if any input differs.
"""
import glob
import os
import subprocess
import sys
import shutil
import tempfile
import zipfile

import nibabel as nib
import numpy as np


def canon(path):
    img = nib.as_closest_canonical(nib.load(path))
    return img.affine, np.asarray(img.get_fdata(dtype=np.float64))


def main():
    medseg, inputs = sys.argv[1], sys.argv[2:]
    bad = 0
    print(f"| input | shape | max affine diff (mm) | HU equal | max HU diff |")
    print(f"|---|---|---|---|---|")
    for src in inputs:
        with tempfile.TemporaryDirectory() as tmp:
            ours = os.path.join(tmp, "medseg.nii.gz")
            subprocess.run([medseg, "convert", "-i", src, "-o", ours], check=True, capture_output=True)
            # dcm2niix reads folders: unpack a zip, and give a single file a folder of its own.
            ref_in = os.path.join(tmp, "in")
            os.makedirs(ref_in)
            if src.endswith(".zip"):
                zipfile.ZipFile(src).extractall(ref_in)
            elif os.path.isfile(src):
                shutil.copy(src, ref_in)
            else:
                ref_in = src
            subprocess.run(["dcm2niix", "-z", "y", "-f", "ref", "-o", tmp, ref_in], check=True,
                           capture_output=True)
            refs = sorted(glob.glob(os.path.join(tmp, "ref*.nii.gz")))
            if len(refs) != 1:
                print(f"| {src} | dcm2niix wrote {len(refs)} files | | | |")
                bad += 1
                continue
            a1, v1 = canon(ours)
            a2, v2 = canon(refs[0])
            if v1.shape != v2.shape:
                print(f"| {src} | {v1.shape} vs {v2.shape} | | no | |")
                bad += 1
                continue
            da = float(np.abs(a1 - a2).max())
            dv = float(np.abs(v1 - v2).max())
            ok = da <= 1e-4 and dv == 0.0
            bad += not ok
            print(f"| {src} | {v1.shape} | {da:.2e} | {'yes' if dv == 0 else 'no'} | {dv:g} |")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
