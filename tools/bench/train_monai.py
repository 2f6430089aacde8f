"""Times MONAI 1.6.1's training step and sliding-window inference on the cases of the Rust bench.

~/.venvs/ref/bin/python tools/bench/train_monai.py --rust-json target/bench/train.json [--out PATH]

For every case of `cargo xtask bench train` (crates/medseg-train/examples/bench_train.rs) it builds
MONAI's SwinUNETR with the same arguments (the Rust JSON carries the model config), the same batch
of random patches and block labels, `DiceCELoss(to_onehot_y=True, softmax=True)` with the same
lambdas, `torch.optim.AdamW` (same lr, betas, eps, weight decay), and times forward + loss +
backward + step after one warm-up step; then `sliding_window_inference` with the same roi,
sw_batch_size, overlap, mode and sigma_scale under torch.no_grad() in eval mode. Each case runs in
a fresh child process (peak RSS = ru_maxrss) with torch.set_num_threads(2).
Ratios > 1 mean medseg is faster / smaller.
"""

import argparse
import json
import subprocess
import sys

MONAI_ARGS = ["in_channels", "out_channels", "patch_size", "depths", "num_heads", "window_size",
              "qkv_bias", "mlp_ratio", "feature_size", "norm_name", "drop_rate", "attn_drop_rate",
              "dropout_path_rate", "normalize", "patch_norm", "use_checkpoint", "spatial_dims",
              "downsample", "use_v2"]


def child(case: dict):
    import resource
    import time

    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import SwinUNETR

    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = case["model"]
    if m.get("kind") != "swin_unetr":
        print(json.dumps({"skipped": f"model kind {m.get('kind')} has no MONAI twin"}))
        return
    kwargs = {k: m[k] for k in MONAI_ARGS if k in m}
    if isinstance(kwargs.get("window_size"), list) and len(set(kwargs["window_size"])) == 1:
        kwargs["window_size"] = kwargs["window_size"][0]
    model = SwinUNETR(**kwargs)
    b, (d, h, w) = case["batch"], case["patch"]
    x = torch.randn(b, m["in_channels"], d, h, w)
    n, nc = d * h * w, m["out_channels"]
    y = (torch.arange(n) * nc // n).float().reshape(1, 1, d, h, w).repeat(b, 1, 1, 1, 1)
    o = case["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weight_decay"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    model.train()
    steps = len(case["step_times_s"])
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if s > 0:
            times.append(time.perf_counter() - t)
    inf = case["inference"]
    vol = torch.randn(1, m["in_channels"], *case["sw_volume"])
    model.eval()
    sw = []
    for _ in range(len(case["sw_times_s"])):
        t = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(vol, inf["roi"], inf["sw_batch_size"], model,
                                     overlap=inf["overlap"], mode=inf["mode"],
                                     sigma_scale=inf["sigma_scale"])
        sw.append(time.perf_counter() - t)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"case": case["case"], "step_median_s": med(times), "step_times_s": times,
                      "sw_median_s": med(sw), "sw_times_s": sw, "peak_rss_mb": rss_mb}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-json", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help="one case as JSON (internal)")
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    rust = json.load(open(a.rust_json))
    rows = []
    for r in rust:
        p = subprocess.run([sys.executable, __file__, "--rust-json", a.rust_json, "--child",
                            json.dumps(r)], capture_output=True, text=True, check=True)
        m = json.loads(p.stdout.strip().splitlines()[-1])
        if "skipped" in m:
            print(f"{r['case']}: {m['skipped']}")
            continue
        rows.append({"medseg": r, "monai": m})
        print(f"{r['case']:5} step: medseg {r['step_median_s']:7.3f} s | MONAI {m['step_median_s']:7.3f} s | "
              f"speed x{m['step_median_s'] / r['step_median_s']:.2f}; sliding window: medseg "
              f"{r['sw_median_s']:7.3f} s | MONAI {m['sw_median_s']:7.3f} s | speed "
              f"x{m['sw_median_s'] / r['sw_median_s']:.2f}; peak RSS medseg {r['peak_rss_mb']:.0f} MB | "
              f"MONAI {m['peak_rss_mb']:.0f} MB", flush=True)
    out = a.out or a.rust_json.replace(".json", ".monai.json")
    json.dump(rows, open(out, "w"), indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
