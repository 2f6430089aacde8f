"""Goldens for medseg-pretrain: the SSL pretext transforms and losses of the Swin UNETR
pretraining code (Project-MONAI/research-contributions SwinUNETR/Pretrain, utils/ops.py and
losses/loss.py; swin-reference section 3), re-written here with injectable randomness.

Every random number the reference functions consume is drawn through `Recorder`, which records
it; the Rust tests replay the recorded numbers (medseg_pretrain::Replay), so the comparison is
exact rather than statistical. The reference functions follow the research code statement by
statement (draw order, clipping, in-place partner semantics, F.normalize + F.cosine_similarity).

Writes crates/medseg-pretrain/tests/golden/ssl.safetensors (< 1 MiB).
Run: ~/.venvs/ref/bin/python tools/golden/ssl_golden.py  (torch 2.x, numpy, safetensors)
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "crates",
    "medseg-pretrain",
    "tests",
    "golden",
    "ssl.safetensors",
)


class Recorder:
    """np.random.uniform / np.random.randint / Tensor.normal_ with a record of every draw."""

    def __init__(self, seed):
        self.np = np.random.RandomState(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.uniforms, self.ints, self.normals = [], [], []

    def uniform(self, lo, hi):
        v = float(self.np.uniform(lo, hi))
        self.uniforms.append(v)
        return v

    def randint(self, lo, hi):
        v = int(self.np.randint(lo, hi))
        self.ints.append(v)
        return v

    def normal(self, shape, dtype):
        t = torch.empty(shape, dtype=dtype).normal_(generator=self.gen)
        self.normals.append(t.flatten().clone())
        return t

    def tensors(self, prefix):
        out = {
            f"{prefix}.uniforms": torch.tensor(self.uniforms, dtype=torch.float64),
            f"{prefix}.ints": torch.tensor(self.ints, dtype=torch.int64),
        }
        normals = torch.cat(self.normals) if self.normals else torch.zeros(0)
        out[f"{prefix}.normals"] = normals.to(torch.float32)
        return out


def patch_rand_drop(rng, x, x_rep=None, max_drop=0.3, max_block_sz=0.25, tolr=0.05):
    """utils/ops.py patch_rand_drop, randomness from `rng`; modifies and returns `x` (C, H, W, Z)."""
    c, h, w, z = x.size()
    n_drop_pix = rng.uniform(0, max_drop) * h * w * z
    mx_blk_height = int(h * max_block_sz)
    mx_blk_width = int(w * max_block_sz)
    mx_blk_slices = int(z * max_block_sz)
    tolr = (int(tolr * h), int(tolr * w), int(tolr * z))
    total_pix = 0
    while total_pix < n_drop_pix:
        rnd_r = rng.randint(0, h - tolr[0])
        rnd_c = rng.randint(0, w - tolr[1])
        rnd_s = rng.randint(0, z - tolr[2])
        rnd_h = min(rng.randint(tolr[0], mx_blk_height) + rnd_r, h)
        rnd_w = min(rng.randint(tolr[1], mx_blk_width) + rnd_c, w)
        rnd_z = min(rng.randint(tolr[2], mx_blk_slices) + rnd_s, z)
        if x_rep is None:
            noise = rng.normal((c, rnd_h - rnd_r, rnd_w - rnd_c, rnd_z - rnd_s), x.dtype)
            noise = (noise - torch.min(noise)) / (torch.max(noise) - torch.min(noise))
            x[:, rnd_r:rnd_h, rnd_c:rnd_w, rnd_s:rnd_z] = noise
        else:
            x[:, rnd_r:rnd_h, rnd_c:rnd_w, rnd_s:rnd_z] = x_rep[:, rnd_r:rnd_h, rnd_c:rnd_w, rnd_s:rnd_z]
        total_pix = total_pix + (rnd_h - rnd_r) * (rnd_w - rnd_c) * (rnd_z - rnd_s)
    return x


def rot_rand(rng, x_s):
    """utils/ops.py rot_rand: per sample k = randint(0, 4), rot90 over dims (2, 3) of (C, X, Y, Z)."""
    img_n = x_s.size()[0]
    x_aug = x_s.detach().clone()
    x_rot = torch.zeros(img_n).long()
    for i in range(img_n):
        orientation = rng.randint(0, 4)
        x_aug[i] = x_s[i].rot90(orientation, (2, 3))
        x_rot[i] = orientation
    return x_aug, x_rot


def aug_rand(rng, samples):
    """utils/ops.py aug_rand: noise cutout, then inpainting from a random partner (when not itself)."""
    img_n = samples.size()[0]
    x_aug = samples.detach().clone()
    for i in range(img_n):
        x_aug[i] = patch_rand_drop(rng, x_aug[i])
        idx_rnd = rng.randint(0, img_n)
        if idx_rnd != i:
            x_aug[i] = patch_rand_drop(rng, x_aug[i], x_aug[idx_rnd])
    return x_aug


def contrast(x_i, x_j, temperature=0.5):
    """losses/loss.py Contrast (batch size from the inputs, no device pinning)."""
    batch_size = x_i.shape[0]
    neg_mask = (~torch.eye(batch_size * 2, batch_size * 2, dtype=bool)).to(x_i.dtype)
    z_i = F.normalize(x_i, dim=1)
    z_j = F.normalize(x_j, dim=1)
    z = torch.cat([z_i, z_j], dim=0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    sim_ij = torch.diag(sim, batch_size)
    sim_ji = torch.diag(sim, -batch_size)
    pos = torch.cat([sim_ij, sim_ji], dim=0)
    nom = torch.exp(pos / temperature)
    denom = neg_mask * torch.exp(sim / temperature)
    return torch.sum(-torch.log(nom / torch.sum(denom, dim=1))) / (2 * batch_size)


def ssl_loss(rot_p, rots, c1, c2, rec, target, temperature=0.5, w=(1.0, 1.0, 1.0)):
    """losses/loss.py Loss: alpha1·CE + alpha2·Contrast + alpha3·L1."""
    rot = w[0] * torch.nn.CrossEntropyLoss()(rot_p, rots)
    con = w[1] * contrast(c1, c2, temperature)
    recon = w[2] * torch.nn.L1Loss()(rec, target)
    return rot + con + recon, (rot, con, recon)


def main():
    torch.manual_seed(0)
    out = {}

    # rot_rand on a [B, C, X, Y, Z] batch with C = 2 and X != Y so axis mix-ups show.
    rng = Recorder(1)
    x = torch.randn(5, 2, 3, 6, 6)
    xr, labels = rot_rand(rng, x)
    out["rot.input"] = x
    out["rot.output"] = xr.contiguous()
    out["rot.labels"] = labels
    out.update(rng.tensors("rot"))

    # aug_rand on [3, 1, 24, 20, 28] (block sides in [1, 6), [1, 5), [1, 7)).
    rng = Recorder(2)
    x = torch.rand(3, 1, 24, 20, 28)
    xa = aug_rand(rng, x)
    out["aug.input"] = x
    out["aug.output"] = xa
    out.update(rng.tensors("aug"))

    # patch_rand_drop with a partner on one sample [2, 24, 20, 28].
    rng = Recorder(3)
    x = torch.rand(2, 24, 20, 28)
    partner = torch.rand(2, 24, 20, 28)
    xd = patch_rand_drop(rng, x.clone(), partner)
    out["drop.input"] = x
    out["drop.partner"] = partner
    out["drop.output"] = xd
    out.update(rng.tensors("drop"))

    # losses with gradients: 2N = 8 rotation logits, N = 4 contrastive pairs of dim 16, 8 reconstructions.
    for tag, tau, w in [("loss", 0.5, (1.0, 1.0, 1.0)), ("loss_w", 0.2, (0.5, 2.0, 3.0))]:
        g = torch.Generator().manual_seed(11 if tag == "loss" else 12)
        rot_p = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
        rots = torch.randint(0, 4, (8,), generator=g)
        c1 = torch.randn(4, 16, generator=g, dtype=torch.float64, requires_grad=True)
        c2 = torch.randn(4, 16, generator=g, dtype=torch.float64, requires_grad=True)
        rec = torch.randn(8, 1, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
        target = torch.rand(8, 1, 4, 4, 4, generator=g, dtype=torch.float64)
        total, (rl, cl, ll) = ssl_loss(rot_p, rots, c1, c2, rec, target, tau, w)
        total.backward()
        out[f"{tag}.rot_p"] = rot_p.detach()
        out[f"{tag}.rots"] = rots
        out[f"{tag}.c1"] = c1.detach()
        out[f"{tag}.c2"] = c2.detach()
        out[f"{tag}.rec"] = rec.detach()
        out[f"{tag}.target"] = target
        out[f"{tag}.params"] = torch.tensor([tau, *w], dtype=torch.float64)
        out[f"{tag}.values"] = torch.stack([total, rl, cl, ll]).detach()
        out[f"{tag}.grad_rot_p"] = rot_p.grad
        out[f"{tag}.grad_c1"] = c1.grad
        out[f"{tag}.grad_c2"] = c2.grad
        out[f"{tag}.grad_rec"] = rec.grad

    out = {k: v.contiguous() for k, v in out.items()}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(out, OUT, metadata={"generator": "tools/golden/ssl_golden.py", "torch": torch.__version__})
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
