"""Golden values for medseg-train from PyTorch / MONAI.

Writes crates/medseg-train/tests/golden/train.safetensors with, per case, the inputs and the
expected outputs; the case's arguments are stored as JSON in the file metadata (key = case name).

Cases:
  dicece_*   MONAI DiceCELoss / DiceLoss / CrossEntropy forward value and gradient w.r.t. the logits
  sw_*       monai.inferers.sliding_window_inference with a fixed conv3d predictor (+ window mean)
  sched_*    LinearWarmupCosineAnnealingLR of research-contributions `optimizers/lr_scheduler.py`
             (reimplemented below verbatim: the research repo is not a pip package), stepped per epoch
  adamw      torch.optim.AdamW with two parameter groups (decay / no decay), three steps
  clip       torch.nn.utils.clip_grad_norm_

Run (never in CI):  ~/.venvs/ref/bin/python tools/golden/train_golden.py
Pinned: see tools/golden/requirements.txt.
"""
import json
import math
import pathlib
import warnings

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from monai.losses import DiceCELoss, DiceLoss
from monai.inferers import sliding_window_inference
from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # compute in f64, store f32

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/medseg-train/tests/golden/train.safetensors"
tensors: dict[str, torch.Tensor] = {}
meta: dict[str, str] = {}


def put(name: str, t: torch.Tensor):
    tensors[name] = t.detach().to(torch.float32).contiguous()


# ------------------------------------------------------------------ losses
def loss_case(case, kind, shape, args):
    b, c = shape[0], shape[1]
    logits = torch.randn(*shape) * 2.0
    labels = torch.randint(0, c, (b, 1, *shape[2:])).to(torch.float64)
    x = logits.clone().requires_grad_(True)
    if kind == "dicece":
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, **args)
        loss = loss_fn(x, labels)
    elif kind == "dice":
        loss_fn = DiceLoss(to_onehot_y=True, softmax=True, **args)
        loss = loss_fn(x, labels)
    else:
        loss = F.cross_entropy(x, labels[:, 0].long())
    loss.backward()
    put(f"{case}.logits", logits)
    put(f"{case}.labels", labels)
    put(f"{case}.loss", loss.reshape(1))
    put(f"{case}.grad", x.grad)
    meta[case] = json.dumps({"kind": kind, **args})


loss_case("dicece_default", "dicece", (2, 4, 5, 6, 7), {})
loss_case("dicece_no_bg", "dicece", (2, 4, 5, 6, 7), {"include_background": False})
loss_case("dicece_lambdas", "dicece", (2, 3, 4, 5, 6), {"lambda_dice": 0.7, "lambda_ce": 1.3})
loss_case("dicece_batch", "dicece", (3, 4, 4, 4, 5), {"batch": True})
loss_case(
    "dicece_squared",
    "dicece",
    (2, 3, 4, 5, 6),
    {"squared_pred": True, "smooth_nr": 0.0, "smooth_dr": 1e-6},
)
loss_case("dice_only", "dice", (2, 4, 5, 6, 7), {})
loss_case("ce_only", "ce", (2, 4, 5, 6, 7), {})

# ------------------------------------------------------------------ sliding window
def sw_case(case, in_shape, roi, sw_batch, overlap, mode, out_c=3):
    x = torch.randn(*in_shape)
    w = torch.randn(out_c, in_shape[1], 3, 3, 3) * 0.2
    bias = torch.randn(out_c) * 0.1

    def predictor(t):
        # conv + the per-window mean of each channel: makes every window's output depend on its position
        return F.conv3d(t, w, bias, padding=1) + t.mean(dim=(2, 3, 4), keepdim=True).sum(1, keepdim=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = sliding_window_inference(
            x, roi, sw_batch, predictor, overlap=overlap, mode=mode, sigma_scale=0.125
        )
    put(f"{case}.x", x)
    put(f"{case}.w", w)
    put(f"{case}.b", bias)
    put(f"{case}.y", y)
    meta[case] = json.dumps(
        {"roi": list(roi), "sw_batch": sw_batch, "overlap": overlap, "mode": mode}
    )


sw_case("sw_gauss_025", (1, 2, 20, 23, 17), (8, 8, 8), 4, 0.25, "gaussian")
sw_case("sw_gauss_050", (1, 2, 20, 23, 17), (8, 10, 6), 3, 0.5, "gaussian")
sw_case("sw_const_050", (1, 1, 19, 16, 21), (8, 8, 8), 2, 0.5, "constant")
sw_case("sw_small_volume", (1, 1, 5, 12, 9), (8, 8, 8), 1, 0.25, "gaussian")
sw_case("sw_batch2", (2, 1, 12, 14, 10), (8, 8, 8), 3, 0.5, "gaussian")
sw_case("sw_overlap_07", (1, 1, 16, 16, 16), (10, 10, 10), 4, 0.7, "gaussian")


# ------------------------------------------------------------------ schedule
class LinearWarmupCosineAnnealingLR(_LRScheduler):
    """research-contributions SwinUNETR/BTCV/optimizers/lr_scheduler.py (verbatim logic)."""

    def __init__(self, optimizer, warmup_epochs, max_epochs, warmup_start_lr=0.0, eta_min=0.0, last_epoch=-1):
        self.warmup_epochs = warmup_epochs
        self.max_epochs = max_epochs
        self.warmup_start_lr = warmup_start_lr
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0:
            return [self.warmup_start_lr] * len(self.base_lrs)
        elif self.last_epoch < self.warmup_epochs:
            return [
                group["lr"] + (base_lr - self.warmup_start_lr) / (self.warmup_epochs - 1)
                for base_lr, group in zip(self.base_lrs, self.optimizer.param_groups)
            ]
        elif self.last_epoch == self.warmup_epochs:
            return self.base_lrs
        elif (self.last_epoch - 1 - self.max_epochs) % (2 * (self.max_epochs - self.warmup_epochs)) == 0:
            return [
                group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / (self.max_epochs - self.warmup_epochs))) / 2
                for base_lr, group in zip(self.base_lrs, self.optimizer.param_groups)
            ]
        return [
            (1 + math.cos(math.pi * (self.last_epoch - self.warmup_epochs) / (self.max_epochs - self.warmup_epochs)))
            / (1 + math.cos(math.pi * (self.last_epoch - self.warmup_epochs - 1) / (self.max_epochs - self.warmup_epochs)))
            * (group["lr"] - self.eta_min)
            + self.eta_min
            for group in self.optimizer.param_groups
        ]


def sched_case(case, base, warmup, max_epochs, start, eta_min, n):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = LinearWarmupCosineAnnealingLR(opt, warmup, max_epochs, start, eta_min)
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
    tensors[f"{case}.lr"] = torch.tensor(lrs, dtype=torch.float64)
    meta[case] = json.dumps(
        {"base": base, "warmup": warmup, "max": max_epochs, "start": start, "eta_min": eta_min}
    )


sched_case("sched_btcv_like", 1e-4, 5, 40, 0.0, 0.0, 40)
sched_case("sched_start_eta", 2e-3, 3, 12, 1e-5, 1e-6, 12)

# ------------------------------------------------------------------ AdamW
pa = torch.randn(3, 4)
pb = torch.randn(4)
grads = [(torch.randn(3, 4), torch.randn(4)) for _ in range(3)]
a = torch.nn.Parameter(pa.clone())
b = torch.nn.Parameter(pb.clone())
opt = torch.optim.AdamW(
    [{"params": [a], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}],
    lr=1e-2,
    betas=(0.9, 0.999),
    eps=1e-8,
)
put("adamw.a0", pa)
put("adamw.b0", pb)
for i, (ga, gb) in enumerate(grads):
    a.grad = ga.clone()
    b.grad = gb.clone()
    opt.step()
    put(f"adamw.ga{i}", ga)
    put(f"adamw.gb{i}", gb)
    put(f"adamw.a{i + 1}", a)
    put(f"adamw.b{i + 1}", b)
meta["adamw"] = json.dumps({"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "wd": 0.05})

# ------------------------------------------------------------------ gradient clipping
c1 = torch.nn.Parameter(torch.zeros(5, 3))
c2 = torch.nn.Parameter(torch.zeros(7))
c1.grad = torch.randn(5, 3)
c2.grad = torch.randn(7) * 2
put("clip.g1", c1.grad)
put("clip.g2", c2.grad)
norm = torch.nn.utils.clip_grad_norm_([c1, c2], max_norm=1.5)
put("clip.norm", norm.reshape(1))
put("clip.c1", c1.grad)
put("clip.c2", c2.grad)
meta["clip"] = json.dumps({"max_norm": 1.5})

OUT.parent.mkdir(parents=True, exist_ok=True)
save_file(tensors, str(OUT), metadata=meta)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(tensors)} tensors)")
