"""Goldens for medseg-infer's connected components and statistics, from scipy/numpy.

Writes crates/medseg-infer/tests/golden/postprocess.json: a seeded 3-class label map and image,
scipy.ndimage.label per class (6- and 26-connectivity: component map and counts), TotalSegmentator's
keep-largest-blob per class (largest by np.argmax over scipy's counts), small-component removal,
and numpy statistics (mean, std ddof 0, min, max, median) per class.
"""
import json
import pathlib

import numpy as np
from scipy import ndimage

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/medseg-infer/tests/golden/postprocess.json"
rng = np.random.default_rng(7)
dims = (12, 10, 14)
spacing = (1.5, 0.8, 2.0)
# Smooth random fields thresholded into three classes, so components are blobs of many sizes.
field = ndimage.gaussian_filter(rng.standard_normal(dims), 1.2)
labels = np.zeros(dims, np.uint8)
labels[field > 0.15] = 1
labels[field < -0.2] = 2
labels[(field > 0.0) & (field < 0.05)] = 3
image = (rng.standard_normal(dims) * 40 + 30).astype(np.float32)

structures = {"faces": None, "corners": ndimage.generate_binary_structure(3, 3)}
case = {"dims": dims, "spacing": spacing, "labels": labels.ravel().tolist(),
        "image": [float(v) for v in image.ravel()], "components": {}, "largest": {}, "small": {}}
for conn, st in structures.items():
    comps = {}
    largest = labels.copy()
    small = labels.copy()
    voxel_ml = np.prod(spacing) / 1000.0
    min_ml = 0.02
    for c in (1, 2, 3):
        blob, n = ndimage.label(labels == c, structure=st)
        counts = [int(np.sum(blob == i)) for i in range(1, n + 1)]
        comps[str(c)] = {"map": blob.ravel().tolist(), "counts": counts}
        if counts:
            keep = int(np.argmax(counts)) + 1
            largest[(blob != keep) & (labels == c)] = 0
            for i, cnt in enumerate(counts, start=1):
                if cnt * voxel_ml < min_ml:
                    small[blob == i] = 0
    case["components"][conn] = comps
    case["largest"][conn] = largest.ravel().tolist()
    case["small"][conn] = {"min_ml": min_ml, "labels": small.ravel().tolist()}
stats = {}
for c in (1, 2, 3):
    v = image[labels == c].astype(np.float64)
    stats[str(c)] = {"voxels": int(v.size), "volume_ml": float(v.size * np.prod(spacing) / 1000.0),
                     "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                     "max": float(v.max()), "median": float(np.median(v))}
case["statistics"] = stats
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(case, separators=(",", ":")))
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
