"""Golden data for crates/medseg-data (nibabel 5 / MONAI 1.6.1 / numpy).

Run: ~/.venvs/ref/bin/python tools/golden/data_golden.py
Writes crates/medseg-data/tests/golden/{nifti/*.nii*, nifti_small.json, shared_cases.json, transforms.json}.
Arrays are flattened in C order over the NIfTI index axes (i, j, k), the crate's memory layout.
"""
import json
import os
import sys
import warnings

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Affine, CropForeground, Orientation, ScaleIntensityRange, Spacing, Zoom

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "medseg-data", "tests", "golden")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
os.makedirs(os.path.join(OUT, "nifti"), exist_ok=True)


def flat(a):
    return [float(x) for x in np.asarray(a, dtype=np.float64).ravel(order="C")]


def affine(img_or_a):
    a = img_or_a.affine if hasattr(img_or_a, "affine") else img_or_a
    return [[float(v) for v in row] for row in np.asarray(a, dtype=np.float64)]


# ---------------------------------------------------------------- small nibabel-written files
rng = np.random.default_rng(0)
small = {}


def save(name, data, aff, header_fn=None, sform=None, qform=None, dtype=None):
    img = nib.Nifti1Image(data, aff)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if sform is not None:
        img.header.set_sform(aff if sform[1] else None, code=sform[0])
    if qform is not None:
        img.header.set_qform(aff if qform[1] else None, code=qform[0])
    if header_fn:
        header_fn(img.header)
    path = os.path.join(OUT, "nifti", name)
    nib.save(img, path)
    back = nib.load(path)
    small[name] = {
        "shape": list(back.shape[:3]),
        "affine": affine(back),
        "axcodes": "".join(nib.aff2axcodes(back.affine)),
        "data": flat(back.get_fdata()),
        "dtype": str(back.get_data_dtype()),
    }


shape = (5, 4, 3)
oblique = np.array([[-0.9, 0.1, 0.0, 20.0], [0.05, 1.1, 0.2, -7.5], [0.0, -0.15, 2.5, 3.25], [0, 0, 0, 1]])
rot = np.array([[0.0, 0.0, 2.0, 1.0], [-1.5, 0.0, 0.0, 2.0], [0.0, -1.2, 0.0, 3.0], [0, 0, 0, 1]])
i16 = rng.integers(-1000, 1000, size=shape).astype(np.int16)
save("sform_i16.nii.gz", i16, oblique, sform=(2, True), qform=(0, False))
save("qform_only_f32.nii", rng.normal(size=shape).astype(np.float32), rot, sform=(0, False), qform=(1, True))
save("noxform_u8.nii.gz", rng.integers(0, 10, size=shape).astype(np.uint8), np.diag([2.0, 3.0, 4.0, 1.0]),
     sform=(0, False), qform=(0, False))


def slope(h):
    h.set_slope_inter(0.5, -3.0)


save("scaled_i16.nii.gz", rng.integers(-100, 100, size=shape).astype(np.int16), rot, header_fn=slope)
save("f64.nii.gz", rng.normal(size=shape), oblique)
save("u16.nii.gz", rng.integers(0, 60000, size=shape).astype(np.uint16), rot)
save("i8.nii", rng.integers(-100, 100, size=shape).astype(np.int8), rot)
save("u32.nii.gz", rng.integers(0, 4_000_000_000, size=shape, dtype=np.uint32), oblique)
save("i32.nii.gz", rng.integers(-2**31, 2**31 - 1, size=shape, dtype=np.int32), oblique)
# Big-endian file.
be = nib.Nifti1Image(i16.astype(">i2"), rot, header=nib.Nifti1Header(endianness=">"))
be_path = os.path.join(OUT, "nifti", "bigendian_i16.nii")
be.to_filename(be_path)
b = nib.load(be_path)
small["bigendian_i16.nii"] = {"shape": list(b.shape), "affine": affine(b), "axcodes": "".join(nib.aff2axcodes(b.affine)),
                              "data": flat(b.get_fdata()), "dtype": str(b.get_data_dtype())}
with open(os.path.join(OUT, "nifti_small.json"), "w") as f:
    json.dump(small, f)

# ---------------------------------------------------------------- shared real cases
cases = {}
probe = [(0, 0, 0), (10, 20, 5), (60, 50, 15), (121, 100, 29), (7, 3, 2)]
for case in sorted(os.listdir(SHARED)) if os.path.isdir(SHARED) else []:
    ct = nib.load(os.path.join(SHARED, case, "ct.nii.gz"))
    seg = nib.load(os.path.join(SHARED, case, "seg.nii.gz"))
    cd = np.asanyarray(ct.dataobj)
    sd = np.asanyarray(seg.dataobj)
    pts = [tuple(min(p[d], ct.shape[d] - 1) for d in range(3)) for p in probe]
    ras = Orientation(axcodes="RAS")(MetaTensor(torch.as_tensor(cd[None].astype(np.float32)), affine=torch.as_tensor(ct.affine)))
    cases[case] = {
        "shape": list(ct.shape),
        "dtype": str(ct.get_data_dtype()),
        "seg_dtype": str(seg.get_data_dtype()),
        "affine": affine(ct),
        "axcodes": "".join(nib.aff2axcodes(ct.affine)),
        "probe": [list(p) for p in pts],
        "ct_values": [float(cd[p]) for p in pts],
        "seg_values": [int(sd[p]) for p in pts],
        "world": [[float(v) for v in (ct.affine @ np.array([*p, 1.0]))[:3]] for p in pts],
        "ct_sum": float(cd.astype(np.float64).sum()),
        "seg_max": int(sd.max()),
        "ras_shape": list(ras.shape[1:]),
        "ras_affine": affine(ras.affine),
        "ras_values": [float(ras[0][p]) for p in pts],
    }
with open(os.path.join(OUT, "shared_cases.json"), "w") as f:
    json.dump(cases, f)

# ---------------------------------------------------------------- transforms on a small volume
shape = (12, 10, 8)
img = rng.normal(size=shape).astype(np.float32) * 100.0
x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
img += (x * 10 + y * 3 - z * 5).astype(np.float32)
lbl = np.zeros(shape, dtype=np.uint8)
lbl[3:9, 2:7, 2:6] = 1
lbl[5:8, 4:6, 1:4] = 2
aff = np.array([[-0.8, 0.0, 0.05, 30.0], [0.0, -1.1, 0.0, 12.0], [0.0, 0.1, 1.7, -40.0], [0, 0, 0, 1]])
mt = lambda a: MetaTensor(torch.as_tensor(a[None].astype(np.float32)), affine=torch.as_tensor(aff))
res = {"shape": list(shape), "affine": affine(aff), "image": flat(img), "label": flat(lbl)}

for name, pixdim in [("spacing", (1.5, 1.5, 2.0)), ("spacing_fine", (0.6, 0.7, 1.1))]:
    si = Spacing(pixdim=pixdim, mode="bilinear")(mt(img))
    sl = Spacing(pixdim=pixdim, mode="nearest")(mt(lbl))
    res[name] = {"pixdim": list(pixdim), "shape": list(si.shape[1:]), "affine": affine(si.affine),
                 "image": flat(si[0]), "label": flat(sl[0])}
# Back to the original grid (prediction resampling): SpatialResample with dst affine + shape.
from monai.transforms import SpatialResample
back = SpatialResample(mode="nearest")(Spacing(pixdim=(1.5, 1.5, 2.0), mode="nearest")(mt(lbl)),
                                       dst_affine=torch.as_tensor(aff), spatial_size=shape)
res["spacing_back_label"] = flat(back[0])
o = Orientation(axcodes="RAS")(mt(img))
res["orient_ras"] = {"shape": list(o.shape[1:]), "affine": affine(o.affine), "image": flat(o[0])}
o = Orientation(axcodes="PIL")(mt(img))
res["orient_pil"] = {"shape": list(o.shape[1:]), "affine": affine(o.affine), "image": flat(o[0])}
s = ScaleIntensityRange(a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True)(mt(img))
res["scale_range"] = flat(s[0])
thr = np.where(lbl > 0, img, -1.0).astype(np.float32)
res["crop_src"] = flat(thr)
for name, kw in [("crop_fg", {}), ("crop_fg_margin_k", {"margin": 2, "k_divisible": 4}),
                 ("crop_fg_smaller", {"margin": 4, "allow_smaller": True})]:
    c = CropForeground(**kw)(mt(thr))
    res[name] = {"shape": list(c.shape[1:]), "affine": affine(c.affine), "image": flat(c[0])}
for k in (1, 2, 3):
    res[f"rot90_{k}"] = flat(np.rot90(img, k, axes=(0, 1)))
for mode in ("area", "nearest", "trilinear"):
    zz = Zoom(zoom=1.4, mode=mode, keep_size=False)(mt(img))
    res[f"zoom_{mode}"] = {"shape": list(zz.shape[1:]), "image": flat(zz[0])}
zz = Zoom(zoom=0.6, mode="area", keep_size=False)(mt(img))
res["zoom_area_down"] = {"shape": list(zz.shape[1:]), "image": flat(zz[0])}
params = dict(rotate_params=(0.3, -0.2, 0.5), scale_params=(1.1, 0.9, 1.2), translate_params=(1.5, -2.0, 0.5))
for mode, pad in [("bilinear", "reflection"), ("bilinear", "zeros"), ("bilinear", "border"), ("nearest", "reflection")]:
    a = Affine(**params, mode=mode, padding_mode=pad, image_only=True)(torch.as_tensor(img[None]))
    res[f"affine_{mode}_{pad}"] = flat(a[0])
res["affine_params"] = {k: list(v) for k, v in params.items()}
with open(os.path.join(OUT, "transforms.json"), "w") as f:
    json.dump(res, f)
print("wrote", OUT, file=sys.stderr)
