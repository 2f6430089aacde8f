"""The scipy/numpy side of `cargo xtask bench postprocess`.

Usage: postprocess_scipy.py WORKDIR OUT.json [--reps N]

Reads WORKDIR/labels.nii.gz and WORKDIR/image.nii.gz (written by medseg-infer's bench_postprocess
example: 512x512x300, 117 classes) and times the same work as the Rust side, the way TotalSegmentator
does it: per-class statistics (voxels, ml, mean/std/min/max/median of the image inside the class),
keep the largest 6-connected component of every class (scipy.ndimage.label per class, as
TotalSegmentator's keep_largest_blob_multilabel) and remove components under 0.1 ml
(scipy.ndimage.label per class). Medians of N runs (default 3); the voxel counts removed must equal
the Rust side's.
"""
import json
import statistics as st
import sys
import time

import nibabel as nib
import numpy as np
from scipy import ndimage


def class_statistics(labels, image, voxel_ml):
    out = {}
    order = np.argsort(labels, axis=None, kind="stable")
    sorted_labels = labels.ravel()[order]
    values = image.ravel()[order].astype(np.float64)
    bounds = np.searchsorted(sorted_labels, np.arange(1, 119))
    for c in range(1, 118):
        v = values[bounds[c - 1]:bounds[c]]
        out[c] = (v.size, v.size * voxel_ml, v.mean(), v.std(), v.min(), v.max(), np.median(v)) if v.size else None
    return out


def keep_largest(labels):
    out = labels.copy()
    removed = 0
    for c in range(1, 118):
        mask = labels == c
        blobs, n = ndimage.label(mask)
        if n <= 1:
            continue
        counts = np.bincount(blobs.ravel())[1:]
        keep = int(np.argmax(counts)) + 1
        drop = mask & (blobs != keep)
        removed += int(drop.sum())
        out[drop] = 0
    return out, removed


def remove_small(labels, voxel_ml, min_ml):
    out = labels.copy()
    removed = 0
    for c in range(1, 118):
        mask = labels == c
        blobs, n = ndimage.label(mask)
        if n == 0:
            continue
        counts = np.bincount(blobs.ravel())
        small = counts * voxel_ml < min_ml
        small[0] = False
        drop = small[blobs]
        removed += int(drop.sum())
        out[drop] = 0
    return out, removed


def main():
    work, out = sys.argv[1], sys.argv[2]
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 3
    lab_img = nib.load(f"{work}/labels.nii.gz")
    labels = np.asarray(lab_img.dataobj, dtype=np.uint8)
    image = np.asarray(nib.load(f"{work}/image.nii.gz").dataobj, dtype=np.float32)
    voxel_ml = float(np.prod(lab_img.header.get_zooms()[:3])) / 1000.0
    times = {"statistics_s": [], "keep_largest_s": [], "remove_small_s": []}
    for _ in range(reps):
        t = time.perf_counter(); class_statistics(labels, image, voxel_ml); times["statistics_s"].append(time.perf_counter() - t)
        t = time.perf_counter(); _, rl = keep_largest(labels); times["keep_largest_s"].append(time.perf_counter() - t)
        t = time.perf_counter(); _, rs = remove_small(labels, voxel_ml, 0.1); times["remove_small_s"].append(time.perf_counter() - t)
    rec = {k: st.median(v) for k, v in times.items()}
    rec.update({"removed_largest": rl, "removed_small": rs, "load": open("/proc/loadavg").read().split()[:3]})
    print(f"scipy {labels.shape}, 117 classes: statistics {rec['statistics_s']:.2f} s, keep largest "
          f"{rec['keep_largest_s']:.2f} s ({rl} voxels removed), remove < 0.1 ml {rec['remove_small_s']:.2f} s ({rs} removed)")
    with open(out, "w") as f:
        json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
