"""How much spatial information does a Swin encoder checkpoint keep? For each checkpoint (any file
with medseg / MONAI `swinViT.*` keys; legacy merge order), runs MONAI's SwinTransformer on one
volume and prints, per stage, the participation ratio of the normalised hidden state's channel
covariance over voxels (PR = (sum ev)^2 / sum ev^2: 1 when every voxel's feature lies on one
line, up to the channel count when variation spreads over all channels) and the mean spatial
standard deviation per channel; then the PR over the tokens whose input block lies wholly inside
the body (input > 0.01, so air-vs-body contrast does not dominate; stages 0–3). `random` is the seeded PyTorch initialisation for comparison.
docs/pretraining.md uses it to show the feature collapse of the label-scarce pretraining.

Run: ~/.venvs/ref/bin/python tools/reference/encoder_features.py IMAGE.nii.gz CKPT.safetensors...
       [--a-min -175] [--a-max 250] [--feature-size 12]
"""

import argparse
import os
import sys

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
from models_golden import build_structure  # noqa: E402


def encoder(feature_size, path):
    torch.manual_seed(0)
    cfg = dict(in_channels=1, out_channels=2, feature_size=feature_size, use_v2=False, merge_order="legacy")
    model = build_structure(cfg)
    if path is not None:
        sd = {k: v for k, v in load_file(path).items() if k.startswith("swinViT.")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k.startswith("swinViT.") and "relative_position_index" not in k]
        if missing or unexpected:
            sys.exit(f"{path}: missing {missing[:3]} unexpected {unexpected[:3]}")
    return model.eval()


def participation_ratio(h, keep=None):
    c = h.shape[1]
    z = h[0].reshape(c, -1)
    if keep is not None:
        z = z[:, keep]
    z = z - z.mean(1, keepdim=True)
    ev = torch.linalg.eigvalsh(z @ z.T / z.shape[1]).clamp(min=0)
    return float(ev.sum() ** 2 / (ev**2).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--a-min", type=float, default=-175.0)
    ap.add_argument("--a-max", type=float, default=250.0)
    ap.add_argument("--feature-size", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)
    img = nib.as_closest_canonical(nib.load(args.image)).get_fdata(dtype=np.float32)
    x = torch.from_numpy(np.clip((img - args.a_min) / (args.a_max - args.a_min), 0, 1))[None, None]
    print("| encoder | PR stage 0–4 (of 1, 2, 4, 8, 16 × fs channels) | spatial std stage 0–4 "
          "| PR inside the body, stage 0–3 |")
    print("|---|---|---|---|")
    for path in [None] + args.checkpoints:
        model = encoder(args.feature_size, path)
        with torch.no_grad():
            hs = model.swinViT(x, True)
        pr = " / ".join(f"{participation_ratio(h):.1f}" for h in hs)
        sd = " / ".join(f"{float(h[0].reshape(h.shape[1], -1).std(1).mean()):.3f}" for h in hs)
        inside = []
        for h in hs[:4]:
            k = x.shape[2] // h.shape[2]
            body = (F.avg_pool3d((x > 0.01).float(), k) > 0.99).flatten()
            inside.append(f"{participation_ratio(h, body):.1f}")
        print(f"| {path or 'random'} | {pr} | {sd} | {' / '.join(inside)} |")


if __name__ == "__main__":
    main()
