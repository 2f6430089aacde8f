"""Times MONAI 1.6.1's training step and sliding-window inference on the cases of the Rust bench.

~/.venvs/ref/bin/python tools/bench/train_monai.py --rust-json target/bench/train.json [--out PATH]
    [--device cpu|cuda|cuda:N] [--amp]
~/.venvs/ref/bin/python tools/bench/train_monai.py --table OUT.monai.json...   (Markdown summary)

For every case of `cargo xtask bench train` (crates/medseg-train/examples/bench_train.rs) it builds
MONAI's SwinUNETR with the same arguments (the Rust JSON carries the model config), the same batch
of random patches and block labels, `DiceCELoss(to_onehot_y=True, softmax=True)` with the same
lambdas, `torch.optim.AdamW` (same lr, betas, eps, weight decay), and times forward + loss +
backward + step after one warm-up step; then `sliding_window_inference` with the same roi,
sw_batch_size, overlap, mode and sigma_scale under torch.no_grad() in eval mode. Each case runs in
a fresh child process (peak RSS = ru_maxrss) with torch.set_num_threads(2).
Ratios > 1 mean medseg is faster / smaller.

Swin SMT (`use_moe`, the `smt` case) is MONAI's SwinUNETR with lucidrains' DynamicSlotsSoftMoE
(soft-moe-pytorch 0.1.9, the file Swin SMT vendors) in the last `num_layers_with_moe` stages and
the legacy patch-merging order: `build_structure` of tools/golden/models_golden.py (the golden
generator's twin, imported from this folder or from ../golden), with PyTorch's default init.

On CUDA (`--device cuda`): torch.cuda.synchronize() before every clock reading; peak device memory
= torch.cuda.max_memory_allocated (and max_memory_reserved) after the training steps, like the
Rust side's memory-pool high-water mark. Without `--amp` the step runs in f32 with TF32 disabled
for matmul and cuDNN (medseg's f32 GEMMs do not use TF32). With `--amp` it is PyTorch eager AMP:
the forward and the loss under torch.autocast(device_type="cuda", dtype=torch.bfloat16), f32
master weights, backward and optimiser outside autocast, and no GradScaler: bf16 has f32's exponent
range, so loss scaling (needed for fp16) is not used, exactly as medseg's `precision = "bf16"`
uses none. MONAI's `use_flash_attention` only acts under no_grad (inference), so the training
step uses MONAI's eager window attention on both precisions; cudnn.benchmark stays at its default
(False), i.e. out-of-the-box eager PyTorch.
"""

import argparse
import json
import os
import subprocess
import sys

MONAI_ARGS = ["in_channels", "out_channels", "patch_size", "depths", "num_heads", "window_size",
              "qkv_bias", "mlp_ratio", "feature_size", "norm_name", "drop_rate", "attn_drop_rate",
              "dropout_path_rate", "normalize", "patch_norm", "use_checkpoint", "spatial_dims",
              "downsample", "use_v2"]
SMT_ARGS = ["merge_order", "use_moe", "num_layers_with_moe", "num_experts"]
HERE = os.path.dirname(os.path.abspath(__file__))


def build_model(m: dict):
    """MONAI's SwinUNETR for a medseg `swin_unetr` model config, or None (and a reason)."""
    from monai.networks.nets import SwinUNETR

    kwargs = {k: m[k] for k in MONAI_ARGS if k in m}
    if isinstance(kwargs.get("window_size"), list) and len(set(kwargs["window_size"])) == 1:
        kwargs["window_size"] = kwargs["window_size"][0]
    if not m.get("use_moe") and m.get("merge_order") != "legacy":
        return SwinUNETR(**kwargs), None
    if m.get("use_moe") and m.get("moe_kind", "dynamic_slots") != "dynamic_slots":
        return None, f"moe_kind {m.get('moe_kind')} has no Python twin"
    # Swin SMT / legacy merge order: the golden generator's twin (bundled next to this file).
    for d in (HERE, os.path.join(HERE, "..", "golden")):
        if os.path.exists(os.path.join(d, "models_golden.py")):
            sys.path.insert(0, d)
            break
    from models_golden import build_structure

    cfg = dict(kwargs, **{k: m[k] for k in SMT_ARGS if k in m})
    return build_structure(cfg), None


def child(case: dict, device: str, amp: bool):
    import resource
    import time
    from contextlib import nullcontext

    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    m = case["model"]
    if m.get("kind") != "swin_unetr":
        print(json.dumps({"skipped": f"model kind {m.get('kind')} has no MONAI twin"}))
        return
    model, why = build_model(m)
    if model is None:
        print(json.dumps({"skipped": why}))
        return
    dev = torch.device(device)
    model = model.to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if amp else nullcontext
    b, (d, h, w) = case["batch"], case["patch"]
    x = torch.randn(b, m["in_channels"], d, h, w, device=dev)
    n, nc = d * h * w, m["out_channels"]
    y = (torch.arange(n) * nc // n).float().reshape(1, 1, d, h, w).repeat(b, 1, 1, 1, 1).to(dev)
    o = case["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weight_decay"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    model.train()
    steps = len(case["step_times_s"])
    times = []
    for s in range(steps + 1):
        sync()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sync()
        if s > 0:
            times.append(time.perf_counter() - t)
    mem = {}
    if cuda:
        mem = {"peak_device_mb": torch.cuda.max_memory_allocated(dev) / 2**20,
               "peak_reserved_mb": torch.cuda.max_memory_reserved(dev) / 2**20,
               "gpu": torch.cuda.get_device_name(dev)}
    del opt
    inf = case["inference"]
    vol = torch.randn(1, m["in_channels"], *case["sw_volume"], device=dev)
    model.eval()
    sw = []
    for _ in range(len(case["sw_times_s"])):
        sync()
        t = time.perf_counter()
        with torch.no_grad(), autocast():
            sliding_window_inference(vol, inf["roi"], inf["sw_batch_size"], model,
                                     overlap=inf["overlap"], mode=inf["mode"],
                                     sigma_scale=inf["sigma_scale"])
        sync()
        sw.append(time.perf_counter() - t)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"case": case["case"], "step_median_s": med(times), "step_times_s": times,
                      "sw_median_s": med(sw), "sw_times_s": sw, "peak_rss_mb": rss_mb,
                      "device": device, "precision": "amp_bf16" if amp else "f32",
                      "torch": torch.__version__, **mem}))


TARGET = 1.3  # the target: medseg's bf16 training step >= 1.3x PyTorch eager AMP on the same GPU


def table(paths):
    """One Markdown row per (file, case): step times, speed-up, peak device memory, sliding window."""
    print("| case | medseg | PyTorch | medseg step s | PyTorch step s | speed-up | target | "
          "peak device MB medseg / PyTorch | sliding window s medseg / PyTorch |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|")
    for path in paths:
        for row in json.load(open(path)):
            r, m = row["medseg"], row["monai"]
            mine = f"{r.get('device', 'cpu')} {r.get('precision', 'f32')}"
            if "failed" in m:
                print(f"| {r['case']} | {mine} | failed | {r['step_median_s']:.3f} | — | — | — | — | — |")
                continue
            theirs = f"{m.get('device', 'cpu')} {m.get('precision', 'f32')}"
            speed = m["step_median_s"] / r["step_median_s"]
            target = "—"
            if m.get("precision") == "amp_bf16" and r.get("precision") == "bf16":
                target = f"≥ {TARGET}×: {'met' if speed >= TARGET else 'NOT met'}"
            mb = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
            mem = f"{mb(r.get('peak_device_mb'))} / {mb(m.get('peak_device_mb'))}"
            print(f"| {r['case']} | {mine} | {theirs} | {r['step_median_s']:.3f} | {m['step_median_s']:.3f} | "
                  f"{speed:.2f}× | {target} | {mem} | {r['sw_median_s']:.3f} / {m['sw_median_s']:.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-json")
    ap.add_argument("--table", nargs="+", metavar="MONAI_JSON",
                    help="print a Markdown table of earlier comparisons (files written by --out)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--amp", action="store_true",
                    help="bf16 autocast (PyTorch eager AMP; CUDA only), no GradScaler")
    ap.add_argument("--child", default=None, help="one case as JSON (internal)")
    a = ap.parse_args()
    if a.amp and not a.device.startswith("cuda"):
        ap.error("--amp needs --device cuda")
    if a.child:
        child(json.loads(a.child), a.device, a.amp)
        return
    if a.table:
        table(a.table)
        return
    if not a.rust_json:
        ap.error("--rust-json is required")
    rust = json.load(open(a.rust_json))
    rows = []
    label = f"{a.device}, {'AMP bf16' if a.amp else 'f32'}"
    for r in rust:
        if r.get("device", "cpu") != a.device or r.get("precision", "f32") != ("bf16" if a.amp else "f32"):
            print(f"{r['case']}: note: medseg ran on {r.get('device', 'cpu')} in {r.get('precision', 'f32')}, "
                  f"MONAI runs on {label}", flush=True)
        cmd = [sys.executable, __file__, "--rust-json", a.rust_json, "--device", a.device,
               "--child", json.dumps(r)] + (["--amp"] if a.amp else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{r['case']}: MONAI failed (exit {p.returncode}):\n{p.stderr[-4000:]}", flush=True)
            rows.append({"medseg": r, "monai": {"failed": p.stderr[-4000:]}})
            continue
        m = json.loads(p.stdout.strip().splitlines()[-1])
        if "skipped" in m:
            print(f"{r['case']}: {m['skipped']}")
            continue
        rows.append({"medseg": r, "monai": m})
        line = (f"{r['case']:5} step: medseg {r['step_median_s']:7.3f} s | MONAI {m['step_median_s']:7.3f} s | "
                f"speed x{m['step_median_s'] / r['step_median_s']:.2f}; sliding window: medseg "
                f"{r['sw_median_s']:7.3f} s | MONAI {m['sw_median_s']:7.3f} s | speed "
                f"x{m['sw_median_s'] / r['sw_median_s']:.2f}; peak RSS medseg {r['peak_rss_mb']:.0f} MB | "
                f"MONAI {m['peak_rss_mb']:.0f} MB")
        if "peak_device_mb" in m:
            line += (f"; peak device medseg {r.get('peak_device_mb', float('nan')):.0f} MB | "
                     f"MONAI {m['peak_device_mb']:.0f} MB")
        print(line, flush=True)
    out = a.out or a.rust_json.replace(".json", ".monai.json")
    json.dump(rows, open(out, "w"), indent=1)
    print(f"wrote {out}")
    if any("failed" in row["monai"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
