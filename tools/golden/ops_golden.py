"""Golden values for medseg-ops from PyTorch / MONAI.

Writes crates/medseg-ops/tests/golden/ops.safetensors: for every case the inputs, the output and
the gradients of loss = sum(output * r) for a stored random r. The case's arguments are stored as
JSON in the file metadata (key = case name), so the Rust test reads them instead of repeating them.

Run (never in CI):  ~/.venvs/ref/bin/python tools/golden/ops_golden.py
Pinned: see tools/golden/requirements.txt.
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from monai.networks.nets.swin_unetr import compute_mask, window_partition, WindowAttention

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # compute in f64, store f32: goldens carry no f32 rounding

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/medseg-ops/tests/golden/ops.safetensors"
tensors: dict[str, torch.Tensor] = {}
meta: dict[str, str] = {}


def record(case: str, args: dict, fn, **inputs):
    """Run fn(**inputs), backprop sum(out * r), store inputs, output, r and input gradients."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves)
    r = torch.randn_like(out)
    (out * r).sum().backward()
    for k, v in leaves.items():
        tensors[f"{case}.{k}"] = v.detach().float().contiguous()
        tensors[f"{case}.grad_{k}"] = v.grad.float().contiguous()
    tensors[f"{case}.out"] = out.detach().float().contiguous()
    tensors[f"{case}.r"] = r.float().contiguous()
    meta[case] = json.dumps(args)


def rnd(*shape):
    return torch.randn(*shape)


conv_cases = {
    "conv3d_k3s1p1": dict(x=(1, 3, 6, 5, 7), w=(4, 3, 3, 3, 3), bias=True, stride=[1, 1, 1], padding=[1, 1, 1], dilation=[1, 1, 1], groups=1),
    "conv3d_k1": dict(x=(2, 5, 3, 4, 2), w=(6, 5, 1, 1, 1), bias=False, stride=[1, 1, 1], padding=[0, 0, 0], dilation=[1, 1, 1], groups=1),
    "conv3d_k2s2": dict(x=(1, 2, 8, 6, 4), w=(6, 2, 2, 2, 2), bias=True, stride=[2, 2, 2], padding=[0, 0, 0], dilation=[1, 1, 1], groups=1),
    "conv3d_mixed_groups": dict(x=(2, 4, 7, 6, 9), w=(6, 2, 3, 2, 3), bias=True, stride=[2, 1, 3], padding=[1, 0, 2], dilation=[1, 2, 2], groups=2),
}
for name, a in conv_cases.items():
    inputs = dict(x=rnd(*a["x"]), w=rnd(*a["w"]))
    if a["bias"]:
        inputs["b"] = rnd(a["w"][0])
    record(name, {"op": "conv3d", **a},
           lambda x, w, b=None, a=a: F.conv3d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]),
           **inputs)

convt_cases = {
    "convt_k2s2": dict(x=(1, 4, 3, 4, 2), w=(4, 3, 2, 2, 2), bias=False, stride=[2, 2, 2], padding=[0, 0, 0], output_padding=[0, 0, 0], dilation=[1, 1, 1], groups=1),
    "convt_k3s2p1op1": dict(x=(1, 3, 3, 2, 4), w=(3, 2, 3, 3, 3), bias=True, stride=[2, 2, 2], padding=[1, 1, 1], output_padding=[1, 0, 1], dilation=[1, 1, 1], groups=1),
    "convt_groups_dil": dict(x=(1, 4, 3, 3, 2), w=(4, 3, 2, 3, 2), bias=True, stride=[1, 2, 3], padding=[0, 1, 0], output_padding=[0, 1, 2], dilation=[2, 1, 2], groups=2),
}
for name, a in convt_cases.items():
    inputs = dict(x=rnd(*a["x"]), w=rnd(*a["w"]))
    if a["bias"]:
        inputs["b"] = rnd(a["w"][1] * a["groups"])
    record(name, {"op": "conv_transpose3d", **a},
           lambda x, w, b=None, a=a: F.conv_transpose3d(x, w, b, a["stride"], a["padding"], a["output_padding"], a["groups"], a["dilation"]),
           **inputs)

x = rnd(2, 3, 5, 4, 6) * 3 + 2
record("instance_norm_affine", {"op": "instance_norm3d", "eps": 1e-5},
       lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-5), x=x, w=rnd(3), b=rnd(3))
record("instance_norm", {"op": "instance_norm3d", "eps": 1e-5},
       lambda x: F.instance_norm(x, eps=1e-5), x=x)
record("layer_norm_affine", {"op": "layer_norm", "eps": 1e-5},
       lambda x, w, b: F.layer_norm(x, (48,), w, b, 1e-5), x=rnd(3, 7, 48), w=rnd(48), b=rnd(48))
record("layer_norm", {"op": "layer_norm", "eps": 1e-5},
       lambda x: F.layer_norm(x, (24,), None, None, 1e-5), x=rnd(5, 24))
record("softmax", {"op": "softmax_last_dim"}, lambda x: F.softmax(x, -1), x=rnd(6, 343) * 5)
record("gelu", {"op": "gelu"}, lambda x: F.gelu(x), x=rnd(4, 100) * 4)
record("leaky_relu", {"op": "leaky_relu", "negative_slope": 0.01},
       lambda x: F.leaky_relu(x, 0.01), x=rnd(4, 50))

interp_cases = {
    "trilinear_scale2": dict(mode="trilinear", scale=[2.0, 2.0, 2.0], size=None),
    "trilinear_size": dict(mode="trilinear", scale=None, size=[7, 3, 11]),
    "trilinear_scale_frac": dict(mode="trilinear", scale=[0.5, 1.7, 1.0], size=None),
    "nearest_size": dict(mode="nearest", scale=None, size=[7, 3, 11]),
    "nearest_scale_frac": dict(mode="nearest", scale=[1.5, 0.5, 2.0], size=None),
}
xi = rnd(1, 2, 5, 4, 6)
for name, a in interp_cases.items():
    kw = dict(mode=a["mode"])
    if a["mode"] != "nearest":
        kw["align_corners"] = False
    if a["size"] is not None:
        kw["size"] = tuple(a["size"])
    else:
        kw["scale_factor"] = tuple(a["scale"])
    record(name, {"op": "interpolate3d", **a}, lambda x, kw=kw: F.interpolate(x, **kw), x=xi)

# MONAI window bookkeeping (constants; no gradients).
for name, dims, ws, ss in [("mask_cubic", [6, 6, 6], [3, 3, 3], [1, 1, 1]),
                           ("mask_mixed", [14, 6, 4], [7, 6, 2], [3, 0, 1])]:
    m = compute_mask(dims, ws, ss, torch.device("cpu"))
    tensors[f"{name}.out"] = m.float().contiguous()
    meta[name] = json.dumps({"op": "shifted_window_mask", "dims": dims, "window": ws, "shift": ss})

xw = torch.randn(2, 6, 4, 9, 3)
tensors["partition.x"] = xw.float().contiguous()
tensors["partition.out"] = window_partition(xw, [3, 2, 3]).float().contiguous()
meta["partition"] = json.dumps({"op": "window_partition", "window": [3, 2, 3]})

# The full 7³ index is 343² int64 (0.9 MB): keep its first 12 rows, plus a whole small window.
attn = WindowAttention(dim=12, num_heads=3, window_size=[7, 7, 7], qkv_bias=True)
tensors["rel_index_7.out"] = attn.relative_position_index[:12].to(torch.int64).contiguous()
meta["rel_index_7"] = json.dumps({"op": "relative_position_index", "window": [7, 7, 7], "rows": 12})
attn = WindowAttention(dim=12, num_heads=3, window_size=[3, 4, 2], qkv_bias=True)
tensors["rel_index_342.out"] = attn.relative_position_index.to(torch.int64).contiguous()
meta["rel_index_342"] = json.dumps({"op": "relative_position_index", "window": [3, 4, 2], "rows": 24})

OUT.parent.mkdir(parents=True, exist_ok=True)
save_file(tensors, str(OUT), metadata=meta)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(meta)} cases)")
