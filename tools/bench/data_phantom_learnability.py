"""Sanity check that the default phantom (medseg-data::phantom) is learnable by a small net.

Run: cargo run --release -p medseg-data --example make_phantom -- <dir>
     ~/.venvs/ref/bin/python tools/bench/data_phantom_learnability.py <dir> [steps]
Trains a small MONAI 3-D UNet on CPU for a few hundred steps and prints the validation Dice per class.
"""
import sys
import time

import torch
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import (AsDiscrete, Compose, EnsureChannelFirstd, LoadImaged, Orientationd, RandCropByPosNegLabeld,
                              RandFlipd, ScaleIntensityRanged)

torch.manual_seed(0)
torch.set_num_threads(2)
root = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
keys = ["image", "label"]
base = [LoadImaged(keys=keys), EnsureChannelFirstd(keys=keys), Orientationd(keys=keys, axcodes="RAS"),
        ScaleIntensityRanged(keys=["image"], a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True)]
train_tr = Compose(base + [RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(48, 48, 48), pos=1, neg=1, num_samples=2),
                           RandFlipd(keys=keys, prob=0.2, spatial_axis=0)])
tr = Dataset(load_decathlon_datalist(f"{root}/dataset.json", True, "training"), train_tr)
va = Dataset(load_decathlon_datalist(f"{root}/dataset.json", True, "validation"), Compose(base))
net = UNet(spatial_dims=3, in_channels=1, out_channels=6, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
opt = torch.optim.Adam(net.parameters(), 3e-3)
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
step, t0 = 0, time.time()
while step < steps:
    for b in DataLoader(tr, batch_size=2, shuffle=True, num_workers=0):
        opt.zero_grad()
        loss = loss_fn(net(b["image"]), b["label"])
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        if step >= steps:
            break
net.eval()
metric = DiceMetric(include_background=False, reduction="mean_batch")
post_p, post_l = AsDiscrete(argmax=True, to_onehot=6), AsDiscrete(to_onehot=6)
with torch.no_grad():
    for b in DataLoader(va, batch_size=1):
        out = sliding_window_inference(b["image"], (64, 64, 64), 1, net)
        metric([post_p(out[0])], [post_l(b["label"][0])])
d = metric.aggregate()
print("val Dice per class (liver, spleen, kidney_l, kidney_r, spine):", [round(float(x), 3) for x in d], "mean", round(float(d.mean()), 3))
