"""The Python side of `cargo xtask bench dicom`, and the generator of its input.

Usage: dicom_python.py WORKDIR OUT.json [--reps N]

First run: writes WORKDIR/ct_512x512x300.nii.gz (the shared abdomen-pelvis CT resampled to 512x512x300,
trilinear, HU as int16) and the same volume as two axial CT series, WORKDIR/native (explicit VR little
endian) and WORKDIR/j2k (JPEG 2000 lossless), with tools/dicom/make_series.py. Then times, on the same
files: pydicom + numpy (read every file, sort by ImagePositionPatient along the slice normal, stack,
apply RescaleSlope/Intercept: what medseg-dicom's reader does) and dicom2nifti (folder -> NIfTI).
Medians of N runs (default 3), one JSON record per (reader, series).
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import pydicom
from scipy import ndimage

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPE = (512, 512, 300)


def make_inputs(work: pathlib.Path):
    ct = work / "ct_512x512x300.nii.gz"
    if not ct.exists():
        src = ROOT.parent / "shared/data/ts-abdomen-pelvis-3mm/ct.nii.gz"
        img = nib.load(src)
        data = np.asarray(img.dataobj, dtype=np.float32)
        zoom = [t / s for t, s in zip(SHAPE, data.shape)]
        out = np.rint(ndimage.zoom(data, zoom, order=1)).astype(np.int16)
        aff = img.affine.copy()
        aff[:3, :3] = aff[:3, :3] / np.array(zoom)[None, :]
        nib.save(nib.Nifti1Image(out, aff), ct)
    for name, ts in (("native", "explicit"), ("j2k", "j2k")):
        d = work / name
        if not (d / "done").exists():
            subprocess.run([sys.executable, str(ROOT / "tools/dicom/make_series.py"), "--from-nifti",
                            str(ct), str(d), "--ts", ts], check=True)
            (d / "done").write_text("ok")
    return ct


def pydicom_read(folder: pathlib.Path):
    files = [f for f in folder.iterdir() if f.is_file() and f.name != "done"]
    slices = [pydicom.dcmread(f) for f in files]
    iop = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=np.float64))))
    vol = np.empty((len(slices), slices[0].Rows, slices[0].Columns), np.float32)
    for k, s in enumerate(slices):
        vol[k] = s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1)) + float(
            getattr(s, "RescaleIntercept", 0))
    return vol


def dicom2nifti_convert(folder: pathlib.Path):
    import dicom2nifti
    with tempfile.TemporaryDirectory() as tmp:
        dicom2nifti.dicom_series_to_nifti(str(folder), os.path.join(tmp, "out.nii.gz"), reorient_nifti=False)


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main():
    work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 3
    work.mkdir(parents=True, exist_ok=True)
    make_inputs(work)
    if "--generate-only" in sys.argv:
        return
    records = []
    for series in ("native", "j2k"):
        folder = work / series
        vol = pydicom_read(folder)
        for reader, fn in (("pydicom+numpy", lambda: pydicom_read(folder)),
                           ("dicom2nifti", lambda: dicom2nifti_convert(folder))):
            med, all_t = timed(fn, reps)
            records.append({"reader": reader, "series": series, "shape": list(vol.shape),
                            "median_s": med, "times_s": all_t})
            print(f"{reader:>14} {series:>6}: median {med:.2f} s over {reps} runs {['%.2f' % t for t in all_t]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load": open('/proc/loadavg').read().split()[:3], "records": records}, indent=1))


if __name__ == "__main__":
    main()
