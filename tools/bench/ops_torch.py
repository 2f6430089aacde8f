"""Time the medseg-ops benchmark cases in PyTorch on this machine and print the ratio table.

Usage (after `cargo xtask bench ops`, which calls it when the reference venv exists):
    ~/.venvs/ref/bin/python tools/bench/ops_torch.py --rust-json target/bench/ops.json

Uses the same shapes, the same number of threads as the Rust run and the same statistic
(median of the repetitions after one warm-up). Writes <rust-json>.torch.json next to it and
prints a Markdown table (ratio > 1 means medseg is faster). The "cpu" columns compare process CPU
time per thread (time.process_time here, /proc/self/stat on the Rust side), which tracks kernel
efficiency on a machine shared with other jobs. Cases the Rust run timed with --fwd-only are timed
forward only here too.
"""
import argparse
import json
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F


def qkv_attention(qkv, bias):
    """MONAI WindowAttention between self.qkv and self.proj (3 heads, scale 0.25)."""
    b, n, c3 = qkv.shape
    qkv = qkv.reshape(b, n, 3, 3, c3 // 9).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * 0.25, qkv[1], qkv[2]
    attn = torch.softmax(q @ k.transpose(-2, -1) + bias.unsqueeze(0), -1)
    return (attn @ v).transpose(1, 2).reshape(b, n, c3 // 3)


def autocast_bf16(fn):
    """fn under PyTorch's CPU autocast to bf16 (oneDNN bf16 kernels), output back in f32."""
    def run(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args).float()
    return run


def case_fn(op):
    return {
        "conv3d k3 s1 p1": lambda x, w: F.conv3d(x, w, None, 1, 1),
        "conv3d k3 s1 p1 (bf16)": autocast_bf16(lambda x, w: F.conv3d(x, w, None, 1, 1)),
        "conv3d k2 s2 (patch embed)": lambda x, w, b: F.conv3d(x, w, b, 2, 0),
        "conv_transpose3d k2 s2": lambda x, w: F.conv_transpose3d(x, w, None, 2),
        "instance_norm3d": lambda x: F.instance_norm(x, eps=1e-5),
        "layer_norm (affine)": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
        "gelu": lambda x: F.gelu(x),
        "softmax_last_dim": lambda x: F.softmax(x, -1),
        "window_attention (composed)": lambda q, k, v, bias: torch.softmax((q * 0.25) @ k.transpose(-2, -1) + bias.unsqueeze(0), -1) @ v,
        "window_attention_qkv (fused)": qkv_attention,
        "interpolate3d trilinear x2": lambda x: F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False),
    }[op]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-json", required=True)
    args = ap.parse_args()
    rust = json.loads(pathlib.Path(args.rust_json).read_text())
    torch.set_num_threads(rust["threads"])
    reps = rust["reps"]
    rows = []
    for c in rust["cases"]:
        fn = case_fn(c["op"])
        inputs = [torch.rand(*s) * 2 - 1 for s in c["inputs"]]
        with torch.no_grad():
            fn(*inputs)
            fwd = []
            cpu0 = time.process_time()
            for _ in range(reps):
                t = time.perf_counter()
                fn(*inputs)
                fwd.append(time.perf_counter() - t)
            cpu = (time.process_time() - cpu0) / (reps * torch.get_num_threads())
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        fb = []
        for _ in range(reps if c.get("fwd_bwd_ms") is not None else 0):
            t = time.perf_counter()
            fn(*leaves).sum().backward()
            fb.append(time.perf_counter() - t)
            for x in leaves:
                x.grad = None
        f = statistics.median(fwd) * 1e3
        b = statistics.median(fb) * 1e3 if fb else None
        rows.append({**c, "torch_fwd_ms": f, "torch_fwd_bwd_ms": b, "torch_fwd_cpu_s_per_thread": cpu})
    print(f"\nPyTorch {torch.__version__}, {torch.get_num_threads()} threads, median of {reps}")
    print("| op | shape | medseg fwd ms | torch fwd ms | fwd speed-up | fwd cpu-time speed-up | medseg fwd+bwd ms | torch fwd+bwd ms | fwd+bwd speed-up | medseg rate |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = f'{r["gflops"]:.1f} GFLOP/s' if r.get("gflops") else f'{r["gbps"]:.2f} GB/s'
        mc, tc = r.get("fwd_cpu_s_per_thread"), r["torch_fwd_cpu_s_per_thread"]
        cpu_ratio = f"{tc / mc:.2f}x" if mc else "-"
        if r["fwd_bwd_ms"] is None or r["torch_fwd_bwd_ms"] is None:
            fb = "- | - | -"
        else:
            fb = (f'{r["fwd_bwd_ms"]:.1f} | {r["torch_fwd_bwd_ms"]:.1f} | '
                  f'{r["torch_fwd_bwd_ms"] / r["fwd_bwd_ms"]:.2f}x')
        print(f'| {r["op"]} | {r["shape"]} | {r["fwd_ms"]:.1f} | {r["torch_fwd_ms"]:.1f} | '
              f'{r["torch_fwd_ms"] / r["fwd_ms"]:.2f}x | {cpu_ratio} | {fb} | {rate} |')
    out = pathlib.Path(args.rust_json).with_suffix(".torch.json")
    out.write_text(json.dumps({"torch": torch.__version__, "cases": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
