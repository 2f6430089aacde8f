"""One-off parity check of `medseg predict` against MONAI 1.6.1 with a MONAI `.pt` checkpoint.

Writes a random MONAI SwinUNETR (feature_size 12, 3 classes) as a research-style checkpoint
(`{"state_dict": ...}`), a 96x64x80 RAS CT at 2 mm whose voxels are all foreground (so the
BTCV validation transforms are Orientation/Spacing identities, intensity scaling and no crop),
runs MONAI `sliding_window_inference` (roi 64, overlap 0.5, gaussian) + softmax + argmax and
compares with `medseg predict --probabilities --merge-order fixed` (MONAI 1.6.1's default
"merging") on the same file.

    ~/.venvs/ref/bin/python crates/medseg-cli/tools/predict_monai_check.py target/release/medseg
"""
import pathlib
import re
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SwinUNETR

ROOT = pathlib.Path(__file__).resolve().parents[3]


def main(medseg: str) -> None:
    torch.manual_seed(0)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="medseg-monai-"))
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12).eval()
    torch.save({"state_dict": net.state_dict()}, tmp / "swin.pt")

    rng = np.random.default_rng(0)
    shape = (96, 64, 80)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    hu = 40 + 120 * np.sin(grid[0] / 7.0) * np.cos(grid[1] / 5.0) + 30 * np.sin(grid[2] / 3.0)
    hu = np.clip(hu + rng.normal(0, 10, shape), -150, 400).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90.0, -60.0, -70.0]
    nib.save(nib.Nifti1Image(hu, affine), tmp / "ct.nii.gz")

    cfg = (ROOT / "crates/medseg-train/configs/phantom.toml").read_text()
    cfg = re.sub(r"out_channels = 6", "out_channels = 3", cfg)
    cfg = re.sub(r"overlap = [0-9.]+", "overlap = 0.5", cfg)
    (tmp / "swin.toml").write_text(cfg)

    subprocess.run(
        [medseg, "predict", "-i", tmp / "ct.nii.gz", "-o", tmp / "seg.nii.gz",
         "--model", tmp / "swin.pt", "--config", tmp / "swin.toml",
         "--probabilities", tmp / "probs", "--merge-order", "fixed"],
        check=True,
    )
    ours = nib.load(tmp / "seg.nii.gz")
    assert ours.shape == shape and np.allclose(ours.affine, affine)
    ours_p = np.stack([nib.load(tmp / f"probs/prob_{c:03d}.nii.gz").get_fdata() for c in range(3)])

    x = torch.from_numpy(np.clip((hu + 175.0) / 425.0, 0.0, 1.0))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, (64, 64, 64), 1, net, overlap=0.5, mode="gaussian")
    p = torch.softmax(logits, 1)[0].numpy()
    labels = p.argmax(0)
    diff = np.abs(ours_p - p).max()
    agree = (np.asarray(ours.dataobj) == labels).mean()
    print(f"max |p_medseg - p_monai| = {diff:.2e}; label agreement {100 * agree:.4f} %")
    assert diff < 1e-4, diff


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/release/medseg"))
