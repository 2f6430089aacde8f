"""nibabel + MONAI side of the medseg-data benchmark (same files as examples/bench_data.rs).

Run: ~/.venvs/ref/bin/python tools/bench/data_nibabel.py <workdir> [out.json]
(<workdir> as given to `cargo run --release -p medseg-data --example bench_data`, which creates its files.)
"""
import json
import os
import sys
import time
import warnings

import nibabel as nib
import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
work = sys.argv[1] if len(sys.argv) > 1 else "target/bench-data"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
files = [os.path.join(shared, c, "ct.nii.gz") for c in ("ts-abdomen-3mm-small", "ts-abdomen-pelvis-3mm", "ts-thorax-aorta-1.5mm")]
files = [f for f in files if os.path.exists(f)] + [os.path.join(work, "synthetic_512x512x300_i16.nii.gz")]
report = {}
for f in files:
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        a = nib.load(f).get_fdata(dtype=np.float32)
        ts.append(time.perf_counter() - t)
    name = os.path.relpath(f, shared) if f.startswith(shared) else f
    report[f"load_s/{name}"] = sorted(ts)[1]
    print(f"nibabel load {name}: {sorted(ts)[1]:.3f} s")

from monai.data import CacheDataset, DataLoader, load_decathlon_datalist
from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd, RandCropByPosNegLabeld,
                              RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd, ScaleIntensityRanged, Spacingd)

keys = ["image", "label"]
tr = Compose([
    LoadImaged(keys=keys), EnsureChannelFirstd(keys=keys), Orientationd(keys=keys, axcodes="RAS"),
    Spacingd(keys=keys, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
    ScaleIntensityRanged(keys=["image"], a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
    CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
    RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(96, 96, 96), pos=1, neg=1, num_samples=4, image_key="image", image_threshold=0),
    RandFlipd(keys=keys, prob=0.2, spatial_axis=0), RandFlipd(keys=keys, prob=0.2, spatial_axis=1), RandFlipd(keys=keys, prob=0.2, spatial_axis=2),
    RandRotate90d(keys=keys, prob=0.2, max_k=3), RandScaleIntensityd(keys="image", factors=0.1, prob=0.1),
    RandShiftIntensityd(keys="image", offsets=0.1, prob=0.1),
])
dl = load_decathlon_datalist(os.path.join(work, "phantom-bench", "dataset.json"), True, "training")
t = time.perf_counter()
ds = CacheDataset(dl, tr, cache_rate=1.0, num_workers=2, progress=False)
loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=2)
n = sum(b["image"].shape[0] for b in loader)
report["btcv_first_epoch_s"] = time.perf_counter() - t
print(f"MONAI epoch 0 (cache + {n} patches): {report['btcv_first_epoch_s']:.2f} s")
t = time.perf_counter()
n = 0
for _ in range(5):
    n += sum(b["image"].shape[0] for b in loader)
report["btcv_patches_per_s"] = n / (time.perf_counter() - t)
print(f"MONAI augmented 96^3 patches/s (2 workers, cached): {report['btcv_patches_per_s']:.1f}")
if len(sys.argv) > 2:
    json.dump(report, open(sys.argv[2], "w"), indent=1)
