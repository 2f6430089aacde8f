"""Times MONAI 1.6.1 SwinUNETR on the configurations of the Rust bench and prints the ratios.

~/.venvs/ref/bin/python tools/bench/models_monai.py --rust-json target/bench/models.json [--out PATH]

Each configuration runs in a fresh child process (peak RSS = ru_maxrss of that child), with
torch.set_num_threads(2), batch 1, f32, random weights; "fwd" runs under torch.no_grad() in eval
mode, "train" runs forward + backward of mean(out**2), "bf16" runs "fwd" under
torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's own CPU bf16 path, oneDNN). Ratios > 1 mean medseg is faster/smaller.
"""

import argparse
import json
import subprocess
import sys


def child(fs: int, size: int, mode: str, reps: int):
    import resource
    import time

    import torch
    from monai.networks.nets import SwinUNETR

    torch.set_num_threads(2)
    model = SwinUNETR(in_channels=1, out_channels=14, feature_size=fs)
    x = torch.randn(1, 1, size, size, size)
    times, cpu = [], []
    for _ in range(reps):
        t = time.perf_counter()
        c = time.process_time()
        if mode == "fwd":
            model.eval()
            with torch.no_grad():
                model(x)
        elif mode == "bf16":
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(x)
        else:
            model.train()
            out = model(x)
            (out ** 2).mean().backward()
            model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    times_sorted = sorted(times)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"fs": fs, "size": size, "mode": mode, "median_s": times_sorted[len(times) // 2],
                      "times_s": times, "median_cpu_s": sorted(cpu)[len(cpu) // 2], "cpu_s": cpu,
                      "peak_rss_mb": rss_mb}))


def cpu_ratio(r, m):
    """The CPU-time comparison, where both sides recorded it (process CPU seconds, all threads)."""
    if r.get("median_cpu_s") and m.get("median_cpu_s"):
        return (f" | cpu s medseg {r['median_cpu_s']:.2f} MONAI {m['median_cpu_s']:.2f} "
                f"cpu-time speed x{m['median_cpu_s'] / r['median_cpu_s']:.2f}")
    return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-json", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=4, metavar=("FS", "SIZE", "MODE", "REPS"))
    a = ap.parse_args()
    if a.child:
        fs, size, mode, reps = a.child
        child(int(fs), int(size), mode, int(reps))
        return
    rust = json.load(open(a.rust_json))
    rows = []
    for r in rust:
        reps = len(r["times_s"])
        p = subprocess.run([sys.executable, __file__, "--rust-json", a.rust_json, "--child",
                            str(r["fs"]), str(r["size"]), r["mode"], str(reps)],
                           capture_output=True, text=True, check=True)
        m = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append((r, m))
        print(f"fs{r['fs']}@{r['size']}^3 {r['mode']:5}: medseg {r['median_s']:8.2f} s {r['peak_rss_mb']:8.0f} MB | "
              f"MONAI {m['median_s']:8.2f} s {m['peak_rss_mb']:8.0f} MB | speed x{m['median_s'] / r['median_s']:.2f} "
              f"memory x{m['peak_rss_mb'] / r['peak_rss_mb']:.2f}{cpu_ratio(r, m)}", flush=True)
    if a.out:
        json.dump([{"medseg": r, "monai": m} for r, m in rows], open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
