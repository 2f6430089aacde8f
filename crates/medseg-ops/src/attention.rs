//! Window attention composed from candle matmuls and this crate's differentiable softmax.
//!
//! The fused CUDA kernel (issue 8) will be tested against [`window_attention`]; on CPU this
//! composed path is the implementation.
use candle::{Result, Tensor};

use crate::activation::softmax_last_dim;

/// `softmax(q·kᵀ·scale + bias + mask)·v` for windows of `N` tokens.
///
/// # Shapes
/// - `q`, `k`, `v`: `[B·nW, heads, N, hd]`
/// - `bias`: `[heads, N, N]` (relative-position bias), broadcast over windows
/// - `mask`: `[nW, N, N]` (shifted-window mask), broadcast over the batch and heads
/// - returns `[B·nW, heads, N, hd]`
///
/// Mirrors MONAI `WindowAttention.forward`: `q` is scaled before the product.
pub fn window_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (bw, heads, n, _hd) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle::bail!(
            "window_attention: q {:?}, k {:?}, v {:?} must have equal shapes",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    // [Bw, h, N, hd] x [Bw, h, hd, N] -> [Bw, h, N, N]
    let mut attn = (q * scale)?.matmul(&k.t()?)?;
    if let Some(bias) = bias {
        if bias.dims() != [heads, n, n] {
            candle::bail!("window_attention: bias {:?} must be [{heads}, {n}, {n}]", bias.dims())
        }
        attn = attn.broadcast_add(&bias.unsqueeze(0)?)?;
    }
    if let Some(mask) = mask {
        let nw = mask.dim(0)?;
        if mask.dims() != [nw, n, n] || nw == 0 || bw % nw != 0 {
            candle::bail!(
                "window_attention: mask {:?} must be [nW, {n}, {n}] with nW dividing {bw}",
                mask.dims()
            )
        }
        // [Bw, h, N, N] -> [B, nW, h, N, N] + [1, nW, 1, N, N]
        attn = attn
            .reshape((bw / nw, nw, heads, n, n))?
            .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
            .reshape((bw, heads, n, n))?;
    }
    let attn = softmax_last_dim(&attn)?;
    attn.matmul(&v.contiguous()?)
}
