"""PyTorch reference run of the label-scarce pretraining (docs/pretraining.md): the research
SSLHead recipe (swin-reference section 3; the pretext ops and losses of tools/golden/ssl_golden.py)
on MONAI's SwinTransformer, with the hyper-parameters of
crates/medseg-pretrain/experiments/label_scarce/pretrain.toml. It answers one question: does
PyTorch trained the same way give the same encoder features as medseg-pretrain? Compare the
feature statistics of both checkpoints with tools/reference/encoder_features.py.

Data: the images of a datalist's `training` entries (the label_scarce example's pretrain.json),
Orientation RAS (nibabel as_closest_canonical), ScaleIntensityRange(a_min, a_max -> 0, 1, clip),
then a roi^3 crop at a random position inside the volume (the phantom volumes are 64^3, so with
roi 64 the crop is the whole volume; medseg-pretrain also crops the foreground first).

Run: ~/.venvs/ref/bin/python tools/reference/ssl_pretrain_ref.py DATALIST OUT.safetensors
       [--steps 250] [--lr 1e-3] [--seed 0] [--threads 2]
Writes the SSLHead weights (medseg key names, swinViT.* legacy merge order) to OUT.safetensors
and prints the loss means over blocks of 50 steps.
"""

import argparse
import json
import math
import os
import sys
import time

import nibabel as nib
import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "golden"))
from models_golden import SslHead  # noqa: E402
from ssl_golden import aug_rand, rot_rand, ssl_loss  # noqa: E402


class Rng:
    """The draw interface the research ops use (np.random + Tensor.normal_), seeded."""

    def __init__(self, seed):
        self.np = np.random.RandomState(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def uniform(self, lo, hi):
        return float(self.np.uniform(lo, hi))

    def randint(self, lo, hi):
        return int(self.np.randint(lo, hi))

    def normal(self, shape, dtype):
        return torch.empty(shape, dtype=dtype).normal_(generator=self.gen)


def load(path, a_min, a_max):
    img = nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32)
    return np.clip((img - a_min) / (a_max - a_min), 0.0, 1.0)


def crop(rng, vol, roi):
    pads = [(0, max(0, roi - s)) for s in vol.shape]
    vol = np.pad(vol, pads)
    starts = [rng.randint(0, s - roi + 1) for s in vol.shape]
    sl = tuple(slice(s, s + roi) for s in starts)
    return torch.from_numpy(np.ascontiguousarray(vol[sl]))[None]


def warmup_cosine(step, warmup, total):
    """research WarmupCosineSchedule factor (cycles 0.5)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("datalist")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--roi", type=int, default=64)
    ap.add_argument("--feature-size", type=int, default=12)
    ap.add_argument("--a-min", type=float, default=-175.0)
    ap.add_argument("--a-max", type=float, default=250.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = os.path.dirname(os.path.abspath(args.datalist))
    with open(args.datalist) as f:
        entries = json.load(f)["training"]
    vols = [load(os.path.join(base, e["image"]), args.a_min, args.a_max) for e in entries]
    print(f"{len(vols)} training volumes from {args.datalist}", flush=True)
    rng = Rng(args.seed)
    model = SslHead(args.feature_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, args.warmup, args.steps))
    block = []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        idx = rng.np.permutation(len(vols))[: args.batch]
        x = torch.stack([crop(rng, vols[i], args.roi) for i in idx])
        x1, rot1 = rot_rand(rng, x)
        x2, rot2 = rot_rand(rng, x)
        x1_aug = aug_rand(rng, x1)
        x2_aug = aug_rand(rng, x2)
        r1, c1, rec1 = model(x1_aug)
        r2, c2, rec2 = model(x2_aug)
        loss, (lr_, lc, lrec) = ssl_loss(torch.cat([r1, r2]), torch.cat([rot1, rot2]), c1, c2,
                                         torch.cat([rec1, rec2]), torch.cat([x1, x2]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        block.append([loss.item(), lr_.item(), lc.item(), lrec.item()])
        if step % 50 == 0 or step == args.steps:
            m = np.mean(block, axis=0)
            print(f"steps {step - len(block) + 1}-{step}: total {m[0]:.3f} rotation {m[1]:.3f} "
                  f"contrastive {m[2]:.4f} reconstruction {m[3]:.4f} "
                  f"({(time.time() - t0) / step:.1f} s/step)", flush=True)
            block = []
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()
          if not k.endswith("relative_position_index")}
    tmp = args.out + ".tmp"
    save_file(sd, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
