"""MONAI's whole-CT inference on the case of `cargo xtask bench wholect`.

~/.venvs/ref/bin/python tools/bench/wholect_monai.py --rust-json target/bench/wholect.json [--out PATH]

The Rust side (crates/medseg-cli/examples/bench_wholect.rs) ran `medseg predict` on a CT with
the BTCV preset (Gaussian blending) and seeded random Swin UNETR fs48 weights, and recorded the
input, the weights file, the settings, its wall times and peak RSS. Here each rep is one fresh
Python process running what a MONAI deployer writes: LoadImaged → EnsureChannelFirstd →
Orientationd(RAS) → Spacingd(pixdim, bilinear) → ScaleIntensityRanged(a_min, a_max → 0…1, clip)
→ `sliding_window_inference` (same roi, sw_batch_size, overlap, mode, sigma_scale; no_grad, eval)
→ argmax → Invertd (nearest) back to the input grid → SaveImage, with the same weights loaded
into MONAI's SwinUNETR (the patch-merging order of the config, via train_monai.build_model).
torch.set_num_threads(os.cpu_count()), as `medseg predict` uses every core.

Reported per tool: the median wall time of the job (MONAI: from loading the image to the saved
file, in-process, without the ~s of `import torch, monai`; also the process wall time) and the
peak RSS (ru_maxrss of the process). The label agreement of the two predictions is printed as a
sanity check (same weights; f32 reduction order differs, so near-ties may flip).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(rec: dict, out_path: str):
    import resource

    t_start = time.perf_counter()
    import torch
    from monai.data import decollate_batch  # noqa: F401  (import cost as a deployer pays it)
    from monai.inferers import sliding_window_inference
    from monai.transforms import (Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                                  SaveImage, ScaleIntensityRanged, Spacingd)
    from safetensors.torch import load_file

    sys.path.insert(0, HERE)
    from train_monai import build_model

    torch.set_num_threads(os.cpu_count() or 1)
    t_import = time.perf_counter() - t_start
    model, why = build_model(rec["model"])
    if model is None:
        print(json.dumps({"skipped": why}))
        return
    state = load_file(rec["weights"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    # relative_position_index buffers are recomputed by MONAI; every parameter must load.
    missing = [k for k in missing if not k.endswith("relative_position_index")]
    if missing or unexpected:
        raise SystemExit(f"weights do not match MONAI's SwinUNETR: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    inf = rec["inference"]
    t0 = time.perf_counter()
    pre = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=rec["pixdim"], mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=rec["a_min"], a_max=rec["a_max"], b_min=0.0, b_max=1.0,
                             clip=True),
    ])
    d = pre({"image": rec["input"]})
    t_pre = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad():
        logits = sliding_window_inference(d["image"][None], inf["roi"], inf["sw_batch_size"], model,
                                          overlap=inf["overlap"], mode=inf["mode"],
                                          sigma_scale=inf["sigma_scale"])
    t_sw = time.perf_counter() - t1
    d["pred"] = logits[0].argmax(0, keepdim=True).to(torch.uint8)
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)
    d = inv(d)
    SaveImage(output_dir=os.path.dirname(out_path), output_postfix="", separate_folder=False,
              output_dtype="uint8", resample=False, print_log=False)(d["pred"],
                                                                     meta_data=d["pred"].meta,
                                                                     filename=out_path.replace(".nii.gz", ""))
    t_job = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"job_s": t_job, "preprocess_s": t_pre, "sliding_window_s": t_sw, "import_s": t_import,
                      "network_grid": list(d["image"].shape[1:]), "peak_rss_mb": rss_mb,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


def agreement(a_path: str, b_path: str) -> float:
    import nibabel as nib
    import numpy as np

    a = np.asarray(nib.load(a_path).dataobj)
    b = np.asarray(nib.load(b_path).dataobj)
    if a.shape != b.shape:
        return float("nan")
    return float((a == b).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-json", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=None, help="default: as many as the Rust side ran")
    ap.add_argument("--child", default=None, help="internal")
    ap.add_argument("--pred", default=None, help="internal")
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child), a.pred)
        return
    if not os.path.exists(a.rust_json):
        print(f"no {a.rust_json}: the Rust side was skipped (no shared data?), nothing to compare")
        return
    rec = json.load(open(a.rust_json))
    pred = os.path.join(os.path.dirname(rec["prediction"]), "monai_pred.nii.gz")
    reps = a.reps or len(rec["times_s"])
    runs = []
    for r in range(reps):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--rust-json", a.rust_json, "--child", json.dumps(rec),
                            "--pred", pred], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"MONAI failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
        m = json.loads(p.stdout.strip().splitlines()[-1])
        if "skipped" in m:
            print(f"wholect: {m['skipped']}")
            return
        m["process_s"] = wall
        runs.append(m)
        print(f"  MONAI rep {r}: job {m['job_s']:.1f} s (sliding window {m['sliding_window_s']:.1f} s), "
              f"process {wall:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MiB", flush=True)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    monai = {"job_median_s": med([m["job_s"] for m in runs]),
             "process_median_s": med([m["process_s"] for m in runs]),
             "sliding_window_median_s": med([m["sliding_window_s"] for m in runs]),
             "peak_rss_mb": max(m["peak_rss_mb"] for m in runs), "runs": runs}
    agree = agreement(rec["prediction"], pred)
    speed = monai["job_median_s"] / rec["median_s"]
    mem = rec["peak_rss_mb"] / monai["peak_rss_mb"]
    print(f"wholect {rec['input_shape']} → grid {runs[0]['network_grid']} ({rec['precision']}): "
          f"medseg {rec['median_s']:.1f} s, peak {rec['peak_rss_mb']:.0f} MiB | MONAI job "
          f"{monai['job_median_s']:.1f} s (process {monai['process_median_s']:.1f} s), peak "
          f"{monai['peak_rss_mb']:.0f} MiB | speed x{speed:.2f}, memory x{mem:.2f} of MONAI's; "
          f"label agreement {agree:.4f}")
    out = a.out or a.rust_json.replace(".json", ".monai.json")
    json.dump({"medseg": rec, "monai": monai, "speed_ratio": speed, "memory_ratio": mem,
               "label_agreement": agree, "loadavg": open("/proc/loadavg").read().split()[:3]},
              open(out, "w"), indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
