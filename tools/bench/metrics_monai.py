"""Time MONAI's HausdorffDistanceMetric(percentile=95) + SurfaceDiceMetric on the pair of the Rust
metrics benchmark and print the ratio to the Rust time.

    cargo run --release -p medseg-metrics --example bench_metrics -- --out target/bench/metrics.json
    ~/.venvs/ref/bin/python tools/bench/metrics_monai.py --rust-json target/bench/metrics.json

The Rust example writes the pair as uint8 .npy files (C order, [nz, ny, nx]) next to its JSON and
records their paths, the spacing, the NSD tolerance and its own per-class values there; this
script loads exactly those arrays, so both sides score the same data.

MONAI scores a one-hot [B, C, ...] input one class at a time internally; a 118-channel float
one-hot of 512x512x300 would need 37 GB, so the script feeds MONAI one class at a time as
[1, 1, ...] boolean masks with include_background=True, which runs the same per-class code path.
Building the masks (pred == c) is timed separately and not counted.
If the classes do not all fit into --budget-s seconds, the script stops after the classes measured
so far (visited in a fixed shuffled order) and extrapolates linearly to all classes; the output
says so. The Rust side is one end-to-end run over all classes (Dice, IoU, HD, HD95, ASSD, NSD).
"""

import argparse
import json
import math
import pathlib
import random
import time
import warnings

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust-json", required=True, help="JSON written by the bench_metrics example")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop measuring classes after this long")
    ap.add_argument("--out", help="write the MONAI timings as JSON here (default: <rust-json dir>/metrics_monai.json)")
    args = ap.parse_args()

    rust = json.loads(pathlib.Path(args.rust_json).read_text())
    if not rust.get("pair"):
        raise SystemExit(f"{args.rust_json} has no 'pair' (was bench_metrics run with --no-npy?)")
    gt = np.load(rust["pair"]["gt"], mmap_mode="r")
    pred = np.load(rust["pair"]["pred"], mmap_mode="r")
    gt, pred = np.ascontiguousarray(gt), np.ascontiguousarray(pred)
    spacing = [float(s) for s in rust["spacing"]]
    tol = float(rust["nsd_tolerance"])
    classes = list(range(1, int(rust["classes"]) + 1))
    order = classes[:]
    random.Random(0).shuffle(order)
    rust_pc = {int(c["class"]): c for c in rust.get("per_class", [])}

    torch.set_num_threads(max(1, torch.get_num_threads()))
    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    nsd_metric = SurfaceDiceMetric(class_thresholds=[tol], include_background=True, reduction="none")

    measured, metric_s, mask_s = [], 0.0, 0.0
    max_dhd, max_dnsd = 0.0, 0.0
    t_start = time.perf_counter()
    for c in order:
        t0 = time.perf_counter()
        yp = torch.from_numpy(pred == c)[None, None]
        yt = torch.from_numpy(gt == c)[None, None]
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = float(hd_metric(yp, yt, spacing=spacing)[0, 0])
            nsd = float(nsd_metric(yp, yt, spacing=spacing)[0, 0])
        hd_metric.reset()
        nsd_metric.reset()
        t2 = time.perf_counter()
        mask_s += t1 - t0
        metric_s += t2 - t1
        measured.append(c)
        if c in rust_pc:
            rh, rn = float(rust_pc[c]["hd95"]), float(rust_pc[c]["nsd"])  # "inf"/"nan" parse too
            if math.isfinite(hd) and math.isfinite(rh):
                max_dhd = max(max_dhd, abs(hd - rh))
            if math.isfinite(nsd) and math.isfinite(rn):
                max_dnsd = max(max_dnsd, abs(nsd - rn))
        if time.perf_counter() - t_start > args.budget_s:
            break

    n_all, n = len(classes), len(measured)
    est = metric_s * n_all / n
    rust_s = float(rust["rust"]["median_s"])
    ratio = est / rust_s
    scaled = n < n_all
    print(f"MONAI {__import__('monai').__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"pair {tuple(gt.shape)}, spacing {spacing}, NSD tolerance {tol}")
    print("| implementation | what | seconds |")
    print("|---|---|---|")
    print(
        f"| MONAI | HausdorffDistanceMetric(p95) + SurfaceDiceMetric, {n}/{n_all} classes measured | {metric_s:.1f} |"
    )
    if scaled:
        print(f"| MONAI | same, extrapolated to {n_all} classes | {est:.1f} |")
    print(f"| medseg-metrics | Dice+IoU+HD+HD95+ASSD+NSD, {n_all} classes (median of {rust['runs']}) | {rust_s:.2f} |")
    print(f"speed-up: {ratio:.1f}x{' (MONAI extrapolated)' if scaled else ''}")
    print(f"(mask building pred==c, not counted: {mask_s:.1f} s)")
    print(f"parity on measured classes: max |HD95 diff| {max_dhd:.2e}, max |NSD diff| {max_dnsd:.2e}")
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.rust_json).with_name("metrics_monai.json")
    out.write_text(
        json.dumps(
            {
                "monai_measured_s": metric_s,
                "monai_classes_measured": n,
                "monai_classes_total": n_all,
                "monai_estimated_s": est,
                "extrapolated": scaled,
                "rust_median_s": rust_s,
                "speedup": ratio,
                "max_abs_diff_hd95": max_dhd,
                "max_abs_diff_nsd": max_dnsd,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
