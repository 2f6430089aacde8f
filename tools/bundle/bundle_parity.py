"""MONAI bundle parity: MONAI's own bundle inference vs `medseg predict --model BUNDLE`.

Subcommands (run in the reference venv, ~/.venvs/ref; MONAI 1.6.1 needs pytorch-ignite for
`SupervisedEvaluator` and itk for the zoo's `ITKReader`, e.g. on PYTHONPATH):

  make    --zoo tools/bundle/zoo/0.3.7 --out DIR [--seed 0]
          A bundle folder: the zoo's configs (text copies, see README.md) and seeded random
          SwinUNETR weights as models/model.pt (the plain state dict the zoo ships).
  monai   --bundle DIR --image CT.nii.gz --out DIR
          MONAI's bundle inference (`monai.bundle.run`) on one CT. Patched for MONAI 1.6.1: the
          pre-1.5 `img_size` argument is removed, and a bundle whose metadata says
          monai_version < 1.5 gets the pre-1.5 `PatchMerging` order back (1.6.1 only has the
          fixed one; the weights of such a bundle were trained with the old one). One
          `SaveImaged` is added after `Invertd` to keep the inverted probabilities.
          Writes labels (`*_trans.nii.gz`), probabilities (`*_prob.nii.gz`), `time.json`.
  compare --monai DIR --labels medseg.nii.gz [--probabilities medseg_probs_dir]
          Label agreement and the largest probability difference, as JSON.
  tiny    --out crates/medseg-infer/tests/golden/bundle_tiny
          The Rust test's tiny bundle: configs, a synthetic CT, and MONAI's labels and
          probabilities (`expected.safetensors`) with formula weights (tools/golden's
          `formula`, which the Rust test rebuilds), no weights file committed.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))


def monai_version_below_1_5(meta: dict) -> bool:
    parts = str(meta.get("monai_version", "1.6")).split(".")
    return (int(parts[0]), int(parts[1])) < (1, 5)


def network_args(cfg: dict) -> dict:
    args = {k: v for k, v in cfg["network_def"].items() if not k.startswith("_")}
    args.pop("img_size", None)
    return args


def cmd_make(a):
    from monai.networks.nets import SwinUNETR

    out = Path(a.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    for name in ("inference.json", "metadata.json"):
        shutil.copyfile(Path(a.zoo) / "configs" / name, out / "configs" / name)
    cfg = json.loads((out / "configs/inference.json").read_text())
    torch.manual_seed(a.seed)
    net = SwinUNETR(**network_args(cfg))
    # PyTorch's default initialisation gives almost flat softmax maps; sharpen the output layer so
    # the labels carry structure (a fixed, seeded change of the weights, nothing else).
    with torch.no_grad():
        net.out.conv.conv.weight.mul_(a.out_scale)
    torch.save(net.state_dict(), out / "models/model.pt")
    print(f"bundle {out}: {sum(p.numel() for p in net.parameters()):,} parameters, seed {a.seed}")


def monai_config(bundle: Path, work: Path, nearest_interp: bool | None = None) -> Path:
    """The bundle's inference.json with the MONAI 1.6.1 patch and the probability output
    (and, for the labels-mode golden, `Invertd(nearest_interp)` overridden)."""
    cfg = json.loads((bundle / "configs/inference.json").read_text())
    cfg["network_def"].pop("img_size", None)
    post = cfg["postprocessing"]["transforms"]
    inv = next(i for i, t in enumerate(post) if t["_target_"].endswith("Invertd"))
    if nearest_interp is not None:
        post[inv]["nearest_interp"] = nearest_interp
    post.insert(
        inv + 1,
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "prob",
            "output_dtype": "$numpy.float32",
            "separate_folder": False,
            "resample": False,
        },
    )
    for t in post:
        if t["_target_"].endswith("SaveImaged") and t.get("output_postfix") != "prob":
            t["separate_folder"] = False
            t["output_postfix"] = "trans"
            t["output_dtype"] = "$numpy.uint8"
            t["resample"] = False
    imports = cfg.setdefault("imports", [])
    if "$import numpy" not in imports:
        imports.append("$import numpy")
    cfg["dataloader"]["num_workers"] = 0
    path = work / "inference_monai161.json"
    path.write_text(json.dumps(cfg, indent=4))
    return path


def cmd_monai(a):
    import monai
    from monai.bundle import run
    from monai.networks.nets import swin_unetr

    bundle, out = Path(a.bundle).resolve(), Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    if monai_version_below_1_5(meta):
        from models_golden import legacy_patch_merging_forward

        swin_unetr.PatchMerging.forward = legacy_patch_merging_forward
    torch.set_num_threads(a.threads)
    cfg = monai_config(bundle, out, getattr(a, "nearest_interp", None))
    t0 = time.time()
    run(
        config_file=str(cfg),
        meta_file=str(bundle / "configs/metadata.json"),
        bundle_root=str(bundle),
        datalist=[str(Path(a.image).resolve())],
        output_dir=str(out),
    )
    dt = time.time() - t0
    (out / "time.json").write_text(json.dumps({"monai_bundle_run_s": dt, "monai": monai.__version__,
                                               "torch_threads": torch.get_num_threads()}))
    print(f"MONAI {monai.__version__} bundle run: {dt:.1f} s -> {out}")


def monai_outputs(d: Path):
    labels = next(d.glob("*_trans.nii*"))
    probs = next(d.glob("*_prob.nii*"))
    return labels, probs


def cmd_compare(a):
    lab_path, prob_path = monai_outputs(Path(a.monai))
    ml = nib.load(lab_path)
    mine = nib.load(a.labels)
    ref = np.asarray(ml.dataobj).squeeze().astype(np.int64)
    got = np.asarray(mine.dataobj).astype(np.int64)
    res = {
        "shape": list(got.shape),
        "monai_shape": list(ref.shape),
        "affine_max_diff": float(np.abs(ml.affine - mine.affine).max()),
    }
    if ref.shape == got.shape:
        res["labels_identical_pct"] = float((ref == got).mean() * 100)
        res["voxels_differing"] = int((ref != got).sum())
        res["classes_monai"] = int(len(np.unique(ref)))
        res["classes_medseg"] = int(len(np.unique(got)))
    if a.probabilities:
        p = np.asarray(nib.load(prob_path).dataobj, dtype=np.float32)
        # SaveImage writes channel-last [X, Y, Z, 1, C] (or [X, Y, Z, C]).
        p = p.reshape(*got.shape, -1)
        worst = 0.0
        for c in range(p.shape[-1]):
            q = np.asarray(nib.load(Path(a.probabilities) / f"prob_{c:03}.nii.gz").dataobj, dtype=np.float32)
            worst = max(worst, float(np.abs(q - p[..., c]).max()))
        res["max_prob_diff"] = worst
        top2 = np.sort(p, axis=-1)[..., -2:]
        res["voxels_top2_margin_below_1e-4"] = int(((top2[..., 1] - top2[..., 0]) < 1e-4).sum())
    print(json.dumps(res, indent=2))


# ---------------------------------------------------------------- tiny golden

TINY_NET = {
    "_target_": "monai.networks.nets.SwinUNETR",
    "in_channels": 1,
    "out_channels": 3,
    "feature_size": 12,
    "spatial_dims": 3,
    "use_checkpoint": False,
}


def tiny_inference() -> dict:
    """A user-exported bundle: the zoo's layout with CropForegroundd, NormalizeIntensityd and a
    Gaussian sliding window."""
    base = json.loads((HERE / "zoo/0.5.6/configs/inference.json").read_text())
    cfg = copy.deepcopy(base)
    cfg["network_def"] = dict(TINY_NET)
    cfg["checkpoint"] = "$@bundle_root + '/models/model.pt'"
    tr = cfg["preprocessing"]["transforms"]
    tr[0]["reader"] = "NibabelReader"
    tr[3]["pixdim"] = [1.5, 1.5, 2.0]
    tr.insert(5, {"_target_": "CropForegroundd", "keys": "@image_key", "source_key": "@image_key", "margin": 2})
    tr.insert(6, {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True})
    cfg["inferer"] = {
        "_target_": "SlidingWindowInferer",
        "roi_size": [32, 64, 64],
        "sw_batch_size": 2,
        "overlap": 0.25,
        "mode": "gaussian",
        "sigma_scale": 0.125,
    }
    return cfg


def tiny_metadata() -> dict:
    return {
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "network_data_format": {
            "outputs": {"pred": {"num_channels": 3,
                                 "channel_def": {"0": "background", "1": "soft tissue", "2": "bone"}}}
        },
    }


def tiny_image() -> nib.Nifti1Image:
    """30x26x20 voxels of 2.0x2.4x2.4 mm in LPS order with permuted axes: a body of soft tissue
    and a bone rod in air, off-centre so the foreground crop matters. Every input/network spacing
    ratio (2.4/1.5, 2.0/1.5, 2.4/2.0) has an odd denominator, so no input voxel falls exactly
    half-way between network voxels: nearest-neighbour inverses have no float-decided ties."""
    shape = (30, 26, 20)
    i, j, k = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    body = ((i - 13) / 10) ** 2 + ((j - 12) / 8) ** 2 + ((k - 9) / 7) ** 2 < 1
    img = np.full(shape, -1000.0)
    img[body] = 40 + 30 * np.sin(i[body] / 3) * np.cos(j[body] / 4) + 8 * k[body]
    rod = ((i - 15) / 2.5) ** 2 + ((j - 10) / 2.5) ** 2 < 1
    img[rod & body] = 700
    # Axis 0 runs posterior->anterior... given as the second world axis, flipped (LPS-like).
    aff = np.array([
        [0.0, -2.4, 0.0, 40.0],
        [-2.0, 0.0, 0.0, 30.0],
        [0.0, 0.0, 2.4, -20.0],
        [0, 0, 0, 1],
    ])
    im = nib.Nifti1Image(img.astype(np.int16), aff)
    im.set_sform(aff, code=1)
    im.set_qform(aff, code=1)
    return im


def cmd_tiny(a):
    from models_golden import formula
    from monai.networks.nets import SwinUNETR
    from safetensors.torch import save_file

    out = Path(a.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "configs/inference.json").write_text(json.dumps(tiny_inference(), indent=4) + "\n")
    (out / "configs/metadata.json").write_text(json.dumps(tiny_metadata(), indent=4) + "\n")
    nib.save(tiny_image(), out / "image.nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = tmp / "bundle"
        shutil.copytree(out / "configs", bundle / "configs")
        (bundle / "models").mkdir()
        net = SwinUNETR(**network_args(tiny_inference()))
        # Formula values for every parameter; the integer relative_position_index buffers stay.
        sd = {k: v if "relative_position_index" in k else formula(k, tuple(v.shape))
              for k, v in net.state_dict().items()}
        torch.save(sd, bundle / "models/model.pt")
        res = tmp / "monai"
        a2 = argparse.Namespace(bundle=bundle, image=out / "image.nii.gz", out=res, threads=2)
        cmd_monai(a2)
        # The same with Invertd(nearest_interp=True): the reference of `--resample labels`.
        a3 = argparse.Namespace(bundle=bundle, image=out / "image.nii.gz", out=tmp / "near",
                                threads=2, nearest_interp=True)
        cmd_monai(a3)
        near = np.asarray(nib.load(monai_outputs(tmp / "near")[0]).dataobj).squeeze()
        near = np.ascontiguousarray(near.astype(np.uint8))
        lab_path, prob_path = monai_outputs(res)
        labels = np.ascontiguousarray(np.asarray(nib.load(lab_path).dataobj).squeeze().astype(np.uint8))
        probs = np.asarray(nib.load(prob_path).dataobj, dtype=np.float32).reshape(*labels.shape, -1)
        probs = np.ascontiguousarray(np.moveaxis(probs, -1, 0))
        assert np.allclose(nib.load(lab_path).affine, tiny_image().affine, atol=1e-4)
    save_file(
        {"labels": torch.from_numpy(labels), "probabilities": torch.from_numpy(probs),
         "labels_nearest_interp": torch.from_numpy(near)},
        str(out / "expected.safetensors"),
        metadata={"source": "tools/bundle/bundle_parity.py tiny (MONAI 1.6.1 bundle run)"},
    )
    counts = np.bincount(labels.ravel(), minlength=3)
    print(f"tiny bundle {out}: labels {labels.shape} counts {counts.tolist()}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--zoo", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out-scale", type=float, default=8.0)
    r = sub.add_parser("monai")
    r.add_argument("--bundle", required=True)
    r.add_argument("--image", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("--monai", required=True)
    c.add_argument("--labels", required=True)
    c.add_argument("--probabilities")
    t = sub.add_parser("tiny")
    t.add_argument("--out", required=True)
    a = p.parse_args()
    {"make": cmd_make, "monai": cmd_monai, "compare": cmd_compare, "tiny": cmd_tiny}[a.cmd](a)


if __name__ == "__main__":
    main()
