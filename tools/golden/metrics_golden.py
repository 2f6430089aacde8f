"""Golden values for crates/medseg-metrics from MONAI 1.6.1.

Run from the repository root with the reference venv:

    ~/.venvs/ref/bin/python tools/golden/metrics_golden.py

Writes crates/medseg-metrics/tests/golden/metrics_golden.json (metadata + expected values) and one
gzip file per case, `metrics_<case>.bin.gz` = prediction bytes then ground-truth bytes, uint8,
C order over `dims` (numpy order; MONAI's spacing applies to the same axes in the same order).
Non-finite expected values are written as the strings "nan" / "inf".
"""

import gzip
import json
import math
import pathlib
import sys

import monai
import numpy as np
import torch
from monai.metrics import (
    DiceMetric,
    HausdorffDistanceMetric,
    MeanIoU,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
)

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "medseg-metrics" / "tests" / "golden"


def enc(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def ellipsoid(dims, center, radii):
    g = np.meshgrid(*[np.arange(n) for n in dims], indexing="ij")
    return sum(((g[k] - center[k]) / radii[k]) ** 2 for k in range(3)) <= 1.0


def blobs(rng, dims, num_classes, per_class=2, rmin=2.0, rmax=6.0):
    """Random ellipsoids; returns (gt, pred) where pred perturbs every ellipsoid and adds salt."""
    gt = np.zeros(dims, np.uint8)
    pred = np.zeros(dims, np.uint8)
    for c in range(1, num_classes):
        for _ in range(per_class):
            center = [rng.uniform(0, n - 1) for n in dims]
            radii = [rng.uniform(rmin, rmax) for _ in dims]
            gt[ellipsoid(dims, center, radii)] = c
            pc = [x + rng.uniform(-2, 2) for x in center]
            pr = [r * rng.uniform(0.8, 1.2) for r in radii]
            pred[ellipsoid(dims, pc, pr)] = c
    salt = rng.random(dims) < 0.0005
    pred[salt] = rng.integers(1, num_classes, size=int(salt.sum()))
    return gt, pred


def onehot(lbl, num_classes):
    t = torch.from_numpy(lbl.astype(np.int64))
    return torch.nn.functional.one_hot(t, num_classes).permute(3, 0, 1, 2)[None].float()


def monai_scores(pred, gt, num_classes, spacing, tolerances):
    """Per-class MONAI values (background excluded) for one case."""
    p, g = onehot(pred, num_classes), onehot(gt, num_classes)
    out = {}
    for ie in (True, False):
        d = DiceMetric(include_background=False, reduction="none", ignore_empty=ie)(p, g)[0]
        i = MeanIoU(include_background=False, reduction="none", ignore_empty=ie)(p, g)[0]
        sfx = "" if ie else "_keep_empty"
        out["dice" + sfx] = [enc(x) for x in d]
        out["iou" + sfx] = [enc(x) for x in i]
    out["hd"] = HausdorffDistanceMetric(include_background=False, reduction="none")(p, g, spacing=spacing)[0]
    out["hd95"] = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
        p, g, spacing=spacing
    )[0]
    out["hd95_directed"] = HausdorffDistanceMetric(
        include_background=False, percentile=95, directed=True, reduction="none"
    )(p, g, spacing=spacing)[0]
    out["hd_p0"] = HausdorffDistanceMetric(include_background=False, percentile=0, reduction="none")(
        p, g, spacing=spacing
    )[0]
    out["hd_p50"] = HausdorffDistanceMetric(include_background=False, percentile=50, reduction="none")(
        p, g, spacing=spacing
    )[0]
    out["assd"] = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")(
        p, g, spacing=spacing
    )[0]
    out["nsd"] = SurfaceDiceMetric(class_thresholds=tolerances, include_background=False, reduction="none")(
        p, g, spacing=spacing
    )[0]
    for k in ("hd", "hd95", "hd95_directed", "hd_p0", "hd_p50", "assd", "nsd"):
        out[k] = [enc(x) for x in out[k]]
    return out


def save_case(name, gt, pred):
    raw = np.ascontiguousarray(pred).tobytes() + np.ascontiguousarray(gt).tobytes()
    (OUT / f"metrics_{name}.bin.gz").write_bytes(gzip.compress(raw, mtime=0))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240605)
    cases = []

    def add(name, gt, pred, num_classes, spacing, tolerances):
        save_case(name, gt, pred)
        cases.append(
            {
                "name": name,
                "dims": list(gt.shape),
                "spacing": list(spacing),
                "num_classes": num_classes,
                "nsd_tolerance": tolerances,
                "expected": monai_scores(pred, gt, num_classes, list(spacing), tolerances),
            }
        )

    # 1. Random blobs, 5 classes, anisotropic spacing, non-cubic grid.
    gt, pred = blobs(rng, (32, 40, 36), 6, per_class=2, rmin=2.5, rmax=7.0)
    add("blobs_aniso", gt, pred, 6, (1.5, 0.8, 2.5), [1.0, 2.0, 1.5, 0.8, 3.0])

    # 2. Random blobs, isotropic unit spacing, more classes, large tolerance.
    gt, pred = blobs(rng, (36, 28, 30), 9, per_class=1, rmin=2.0, rmax=6.0)
    add("blobs_unit", gt, pred, 9, (1.0, 1.0, 1.0), [2.0] * 8)

    # 3. Every edge case in one volume (classes 1..6).
    dims = (20, 24, 28)
    gt = np.zeros(dims, np.uint8)
    pred = np.zeros(dims, np.uint8)
    gt[0:6, 0:7, 0:5] = 1  # touches three image faces
    pred[0:5, 0:8, 0:6] = 1
    pred[12:15, 15:18, 3:6] = 2  # GT empty, prediction not
    gt[5:9, 14:20, 18:24] = 3  # prediction empty, GT not
    # class 4: empty in both
    gt[10, 10, 10] = 5  # single voxels, apart
    pred[13, 11, 12] = 5
    gt[14:19, 2:9, 20:27] = 6  # identical, touching the far face along axis 0? (ends at 18 < 19)
    pred[14:19, 2:9, 20:27] = 6
    gt[19, 20:24, 0:4] = 1  # a second GT component on the last slice, image corner
    add("edge_cases", gt, pred, 7, (2.0, 1.0, 0.5), [1.0, 2.0, 0.5, 1.0, 3.0, 0.0])

    # 4. The two offset cubes of swin-reference.md §5.2, isotropic and (2,1,1).
    dims = (10, 10, 10)
    gt = np.zeros(dims, np.uint8)
    pred = np.zeros(dims, np.uint8)
    gt[2:5, 2:5, 2:5] = 1
    pred[3:6, 3:6, 3:6] = 1
    add("cubes_unit", gt, pred, 2, (1.0, 1.0, 1.0), [1.0])
    add("cubes_aniso", gt, pred, 2, (2.0, 1.0, 1.0), [1.0])

    # 5. A single-slice volume: every foreground voxel is a surface voxel.
    rs = np.random.default_rng(7)
    gt, pred = blobs(rs, (1, 30, 26), 3, per_class=2, rmin=3.0, rmax=8.0)
    add("single_slice", gt, pred, 3, (3.0, 0.7, 0.7), [0.7, 1.4])

    # 6. Distances that tie with the tolerance exactly (NSD uses <=).
    dims = (16, 16, 16)
    gt = np.zeros(dims, np.uint8)
    pred = np.zeros(dims, np.uint8)
    gt[4:10, 4:10, 4:10] = 1
    pred[5:11, 4:10, 4:10] = 1
    gt[2:5, 11:14, 11:14] = 2
    pred[3:6, 12:15, 11:14] = 2
    add("nsd_ties", gt, pred, 3, (1.5, 1.0, 1.0), [1.5, math.sqrt(2.0) * 1.0])

    # 7. A batch of three same-shape cases for the MONAI reductions (mean, mean_batch).
    dims = (24, 24, 24)
    spacing = [1.2, 0.9, 3.0]
    tol = [1.0, 2.0, 1.5]
    batch = []
    for b in range(3):
        gt, pred = blobs(rng, dims, 4, per_class=1, rmin=2.0, rmax=6.0)
        if b == 1:
            gt[gt == 2] = 0  # class 2 absent from this GT: NaN Dice / NSD, inf HD
        if b == 2:
            pred[pred == 3] = 0  # class 3 absent from this prediction
        name = f"batch_{b}"
        save_case(name, gt, pred)
        batch.append((name, gt, pred))
    P = torch.cat([onehot(p, 4) for _, _, p in batch])
    G = torch.cat([onehot(g, 4) for _, g, _ in batch])
    reductions = {}
    for red in ("mean", "mean_batch"):
        d = DiceMetric(include_background=False, reduction=red, get_not_nans=True)
        d(P, G)
        dv, dn = d.aggregate()
        h = HausdorffDistanceMetric(include_background=False, percentile=95, reduction=red, get_not_nans=True)
        h(P, G, spacing=spacing)
        hv, hn = h.aggregate()
        s = SurfaceDiceMetric(class_thresholds=tol, include_background=False, reduction=red, get_not_nans=True)
        s(P, G, spacing=spacing)
        sv, sn = s.aggregate()
        reductions[red] = {
            "dice": [enc(x) for x in dv.reshape(-1)],
            "dice_not_nans": [int(x) for x in dn.reshape(-1)],
            "hd95": [enc(x) for x in hv.reshape(-1)],
            "hd95_not_nans": [int(x) for x in hn.reshape(-1)],
            "nsd": [enc(x) for x in sv.reshape(-1)],
            "nsd_not_nans": [int(x) for x in sn.reshape(-1)],
        }
    # 8. Real TotalSegmentator label map (not copied into the repo; tests skip when it is absent):
    #    prediction = ground truth shifted by one voxel along NIfTI x with class 13 removed.
    real = {}
    seg = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "ts-abdomen-3mm-small" / "seg.nii.gz"
    if seg.exists():
        import nibabel as nib

        img = nib.load(str(seg))
        gt_xyz = np.asarray(img.dataobj).astype(np.uint8)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        pred_xyz = np.zeros_like(gt_xyz)
        pred_xyz[1:] = gt_xyz[:-1]
        pred_xyz[pred_xyz == 13] = 0
        present = sorted(set(np.unique(gt_xyz).tolist()) | set(np.unique(pred_xyz).tolist()))
        present = [c for c in present if c != 0]
        exp = monai_scores(pred_xyz, gt_xyz, 118, zooms, [3.0] * 117)
        real = {
            "file": "ts-abdomen-3mm-small/seg.nii.gz",
            "shape_xyz": list(gt_xyz.shape),
            "spacing_xyz": zooms,
            "transform": "pred[x] = gt[x-1] (zero at x=0), then class 13 -> 0",
            "num_classes": 118,
            "nsd_tolerance": 3.0,
            "classes": present,
            "expected": {k: [v[c - 1] for c in present] for k, v in exp.items()},
        }
    doc = {
        "generator": "tools/golden/metrics_golden.py",
        "monai": monai.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cases": cases,
        "batch": {
            "names": [n for n, _, _ in batch],
            "dims": list(dims),
            "spacing": spacing,
            "num_classes": 4,
            "nsd_tolerance": tol,
            "reductions": reductions,
        },
        "real": real,
    }
    (OUT / "metrics_golden.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(cases)} cases + batch of {len(batch)} to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
