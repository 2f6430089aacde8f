#!/usr/bin/env python3
"""Generate the tiny synthetic DICOM series that medseg-dicom's tests read, plus expected.json.

Usage: ~/.venvs/ref/bin/python tools/dicom/make_series.py [OUT_DIR]
(default crates/medseg-dicom/tests/fixtures). Deterministic: fixed UIDs, fixed voxels.

Real CT mode (not committed; for the dcm2niix comparison and benchmarks):
  make_series.py --from-nifti CT.nii.gz OUT_DIR [--ts explicit|j2k|rle]
writes the NIfTI CT as an axial CT series (one file per slice, HU as int16 with intercept -1024,
IOP/IPP/PixelSpacing from the NIfTI affine; oblique affines give oblique IOP).

Every case is a 40-column x 32-row x 5-slice (JPEG 2000 needs >= 32 pixels a side) volume V[k, j, i] in HU (k slice along the normal,
j row, i column) written as CT Image Storage files. expected.json holds, per loadable case, the
shape, the RAS affine computed independently here (the dicom2nifti formula) and checksums of the
voxels in medseg's (i, j, k) order; per failing case the words the error must contain.
"""
import json
import os
import shutil
import sys
import zipfile

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, RLELossless)

ROOT = "1.2.826.0.1.3680043.10.1455"  # fixed test root; UIDs below are ROOT.<case>.<n>
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
NX, NY, NZ = 40, 32, 5


def uid(*parts):
    return ".".join([ROOT] + [str(p) for p in parts])


def volume(seed):
    """V[k, j, i]: integer HU with structure along every axis."""
    k, j, i = np.meshgrid(np.arange(NZ), np.arange(NY), np.arange(NX), indexing="ij")
    v = -1000 + 37 * i + 101 * j + 433 * k + 7 * seed
    v[2, 3, 4] = 1500  # one bright voxel
    return v.astype(np.int32)


def rot(ax, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    if ax == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def fmt(x):
    """DS values with 6 decimals, as scanners write them (so the expectation uses the same)."""
    return [float(f"{v:.6f}") for v in x]


def write_case(out, case, case_no, *, hu, iop=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.7), gap=2.5,
               origin=(-10.0, 20.0, -30.0), slopes=None, intercepts=None, drop=None, gaps=None,
               tilt_mm=0.0, ts=ExplicitVRLittleEndian, series_no=1, image_type="ORIGINAL\\PRIMARY\\AXIAL",
               modality="CT", description="synthetic", names=None, series_uid=None, study_uid=None):
    os.makedirs(out, exist_ok=True)
    iop = np.array(fmt(iop))
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    slopes = slopes or [1.0] * NZ
    intercepts = intercepts or [-1024.0] * NZ
    zs = np.cumsum([0.0] + (gaps or [gap] * (NZ - 1)))
    series_uid = series_uid or uid(case_no, 1)
    study_uid = study_uid or uid(0, 1)
    written = []
    for k in range(NZ):
        if drop is not None and k == drop:
            continue
        ipp = np.array(origin) + zs[k] * n + tilt_mm * k * c
        raw = np.round((hu[k] - intercepts[k]) / slopes[k]).astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = uid(case_no, 2, k)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = uid(case_no, 2, k)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = uid(0, 3)
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = series_no
        ds.InstanceNumber = NZ - k  # disagrees with the position order on purpose
        ds.ImageType = image_type
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "MEDSEG-SYN-1"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "medseg tools/dicom/make_series.py"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.PixelSpacing = [f"{v:.6f}" for v in spacing]
        ds.SliceThickness = f"{gap:.6f}"
        ds.RescaleSlope = f"{slopes[k]:g}"
        ds.RescaleIntercept = f"{intercepts[k]:g}"
        ds.RescaleType = "HU"
        ds.Rows, ds.Columns = NY, NX
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.PixelData = raw.tobytes()
        if ts != ExplicitVRLittleEndian:
            kw = {"encoding_plugin": "pylibjpeg"} if ts == JPEG2000Lossless else {}
            if ts == JPEGLSLossless:
                kw = {"encoding_plugin": "pyjpegls"}
            ds.compress(ts, **kw)
        # File order disagrees with position order: names count down.
        name = (names or (lambda k: f"IM{NZ - k:04d}"))(k)
        ds.save_as(os.path.join(out, name), enforce_file_format=True)
        written.append(ds)
    return written, series_uid


def expectation(hu, slopes, intercepts, iop, spacing, gap, origin):
    iop = np.array(fmt(iop))
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    ipp = [np.array(fmt(np.array(origin) + k * gap * n)) for k in range(NZ)]
    lps = np.eye(4)
    lps[:3, 0] = r * spacing[1]
    lps[:3, 1] = c * spacing[0]
    lps[:3, 2] = (ipp[-1] - ipp[0]) / (NZ - 1)
    lps[:3, 3] = ipp[0]
    ras = np.diag([-1, -1, 1, 1]) @ lps
    vals = np.stack([np.round((hu[k] - intercepts[k]) / slopes[k]) * slopes[k] + intercepts[k]
                     for k in range(NZ)])  # [k, j, i]
    ijk = np.transpose(vals, (2, 1, 0)).astype(np.float32)  # [i, j, k]
    i, j, k = np.meshgrid(np.arange(NX), np.arange(NY), np.arange(NZ), indexing="ij")
    return {
        "shape": [NX, NY, NZ],
        "affine": ras.tolist(),
        "sum": float(ijk.astype(np.float64).sum()),
        "weighted_sum": float((ijk.astype(np.float64) * (1 + i + 10 * j + 100 * k)).sum()),
        "voxels": [[int(a), int(b), int(cc), float(ijk[a, b, cc])]
                   for a, b, cc in [(0, 0, 0), (4, 3, 2), (7, 5, 4), (1, 2, 3)]],
        "int16": bool(np.all(np.mod(vals, 1) == 0)),
    }


def main():
    global NZ
    out_root = sys.argv[1] if len(sys.argv) > 1 else "crates/medseg-dicom/tests/fixtures"
    shutil.rmtree(out_root, ignore_errors=True)
    os.makedirs(out_root)
    expected = {}
    base = dict(iop=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.7), gap=2.5, origin=(-10.0, 20.0, -30.0))
    ones, icpt = [1.0] * NZ, [-1024.0] * NZ

    def ok(case, no, hu, slopes=ones, intercepts=icpt, geo=base, **kw):
        write_case(os.path.join(out_root, case), case, no, hu=hu, slopes=slopes,
                   intercepts=intercepts, **geo, **kw)
        expected[case] = expectation(hu, slopes, intercepts, **geo)

    hu = volume(0)
    ok("axial", 1, hu)
    # A README and a DICOMDIR-like object next to the images: skipped, counted.
    with open(os.path.join(out_root, "axial", "README.txt"), "w") as f:
        f.write("synthetic series for medseg-dicom tests\n")
    dd = Dataset()
    dd.file_meta = FileMetaDataset()
    dd.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dd.file_meta.MediaStorageSOPInstanceUID = uid(1, 9)
    dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dd.FileSetID = "SYN"
    dd.save_as(os.path.join(out_root, "axial", "DICOMDIR"), enforce_file_format=True)
    expected["axial"]["skipped"] = 2

    oblique = dict(base)
    m = rot("z", 10) @ rot("x", 25)
    oblique["iop"] = tuple(m[:, 0]) + tuple(m[:, 1])
    oblique["origin"] = (5.5, -12.25, 40.0)
    ok("oblique", 2, volume(1), geo=oblique)

    slopes = [0.5, 1.0, 0.5, 2.0, 1.0]
    intercepts = [-1000.0, -1024.0, -1000.5, -1024.0, 0.25]  # the last gives fractional HU
    ok("rescale", 3, volume(2), slopes=slopes, intercepts=intercepts)
    ok("jpeg2000", 4, volume(3), ts=JPEG2000Lossless)
    ok("rle", 5, volume(4), ts=RLELossless)

    # Two CT series and a localiser series (more images than either) in one folder.
    two = os.path.join(out_root, "two_series")
    write_case(two, "a", 6, hu=volume(5), **base, series_no=2, names=lambda k: f"a{k}.dcm")
    expected["two_series"] = expectation(volume(5), ones, icpt, **base)
    few = volume(6)[:3]
    nz, NZ = NZ, 3
    write_case(two, "b", 7, hu=few, **base, series_no=3, names=lambda k: f"b{k}.dcm")
    NZ = nz
    loc = dict(base)
    loc["iop"] = (1, 0, 0, 0, 0, -1)
    NZ = 6
    write_case(two, "loc", 8, hu=np.concatenate([volume(7), volume(7)[:1]]), **loc, series_no=1,
               image_type="ORIGINAL\\PRIMARY\\LOCALIZER", names=lambda k: f"loc{k}.dcm")
    NZ = nz
    expected["two_series"]["series_count"] = 3
    expected["two_series"]["chosen"] = uid(6, 1)
    expected["two_series"]["other_ct"] = uid(7, 1)

    # Failing cases: the message must contain these words.
    write_case(os.path.join(out_root, "unequal"), "u", 9, hu=volume(8), **base,
               gaps=[2.5, 2.5, 3.0, 2.5])
    write_case(os.path.join(out_root, "missing"), "m", 10, hu=volume(9), **base, drop=2)
    write_case(os.path.join(out_root, "tilt"), "t", 11, hu=volume(10), **base, tilt_mm=0.6)
    write_case(os.path.join(out_root, "jpegls"), "l", 12, hu=volume(11), **base, ts=JPEGLSLossless)
    expected["errors"] = {
        "unequal": "unequal slice spacing",
        "missing": "missing slice",
        "tilt": "gantry tilt",
        "jpegls": "JPEG-LS",
    }

    # A zip of the axial folder, and an enhanced multi-frame CT of the same slices.
    with zipfile.ZipFile(os.path.join(out_root, "axial.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(os.listdir(os.path.join(out_root, "axial"))):
            z.write(os.path.join(out_root, "axial", name), f"export/DICOM/{name}")
    expected["axial.zip"] = expected["axial"]

    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    folder = os.path.join(out_root, "axial")
    dss = [pydicom.dcmread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
           if f.startswith("IM")]
    mf = LegacyConvertedEnhancedCTImage(dss, series_instance_uid=uid(13, 1), series_number=9,
                                        sop_instance_uid=uid(13, 2), instance_number=1)
    mf.save_as(os.path.join(out_root, "multiframe.dcm"), enforce_file_format=True)
    expected["multiframe.dcm"] = expected["axial"]

    with open(os.path.join(out_root, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_root) for f in fs)
    print(f"wrote {out_root}: {total} bytes")


def from_nifti(ct_path, out, ts_name):
    import nibabel as nib
    img = nib.load(ct_path)
    hu = np.asarray(img.dataobj).astype(np.float64)  # [i, j, k]
    a = img.affine
    lps = np.diag([-1, -1, 1, 1]) @ a  # RAS -> LPS
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    r, c, n = (lps[:3, 0] / sp[0], lps[:3, 1] / sp[1], lps[:3, 2])
    ts = {"explicit": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless, "rle": RLELossless}[ts_name]
    os.makedirs(out, exist_ok=True)
    case_no = 100
    for k in range(hu.shape[2]):
        ipp = lps[:3, 3] + k * n
        raw = np.round(hu[:, :, k].T + 1024).astype(np.int16)  # [rows=j, cols=i]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = uid(case_no, 2, k)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = uid(case_no, 2, k)
        ds.StudyInstanceUID = uid(case_no, 0)
        ds.SeriesInstanceUID = uid(case_no, 1)
        ds.FrameOfReferenceUID = uid(case_no, 3)
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = "ORIGINAL\\PRIMARY\\AXIAL"
        ds.PatientName = "Synthetic^FromNifti"
        ds.PatientID = "MEDSEG-NIFTI"
        ds.StudyDate, ds.StudyTime = "20240101", "120000"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(r) + list(c)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.PixelSpacing = [f"{sp[1]:.6f}", f"{sp[0]:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(n):.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.Rows, ds.Columns = raw.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.PixelData = raw.tobytes()
        if ts != ExplicitVRLittleEndian:
            ds.compress(ts, **({"encoding_plugin": "pylibjpeg"} if ts == JPEG2000Lossless else {}))
        ds.save_as(os.path.join(out, f"slice{k:04d}.dcm"), enforce_file_format=True)
    print(f"wrote {hu.shape[2]} slices of {raw.shape} to {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--from-nifti":
        ts_arg = sys.argv[sys.argv.index("--ts") + 1] if "--ts" in sys.argv else "explicit"
        from_nifti(sys.argv[2], sys.argv[3], ts_arg)
    else:
        main()
