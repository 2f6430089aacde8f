//! 3-D window bookkeeping of the Swin transformer, exactly as MONAI `swin_unetr.py` does it.
//!
//! Layout is channels-last `[B, D, H, W, C]`. Windows are numbered
//! `((b·nD + iD)·nH + iH)·nW + iW` and tokens inside a window `(d·wh + h)·ww + w` (raster, D
//! slowest). Everything here is composed from differentiable candle ops or is a constant.
use candle::{Device, Result, Tensor};

/// MONAI `get_window_size`: along each axis whose size is ≤ the window, the window shrinks to the
/// size and the shift becomes 0.
pub fn window_and_shift(
    size: [usize; 3],
    window: [usize; 3],
    shift: [usize; 3],
) -> ([usize; 3], [usize; 3]) {
    let mut w = window;
    let mut s = shift;
    for a in 0..3 {
        if size[a] <= window[a] {
            w[a] = size[a];
            s[a] = 0;
        }
    }
    (w, s)
}

/// Zero padding at the end of D, H, W of `x` `[B, D, H, W, C]` up to multiples of `window`.
/// Returns the padded tensor and the padded spatial size.
pub fn pad_to_windows(x: &Tensor, window: [usize; 3]) -> Result<(Tensor, [usize; 3])> {
    let (_, d, h, w, _) = x.dims5()?;
    if window.contains(&0) {
        candle::bail!("pad_to_windows: window {window:?} must be ≥ 1 on every axis")
    }
    let mut out = x.clone();
    let mut padded = [d, h, w];
    for a in 0..3 {
        let pad = (window[a] - padded[a] % window[a]) % window[a];
        if pad > 0 {
            out = out.pad_with_zeros(a + 1, 0, pad)?;
            padded[a] += pad;
        }
    }
    Ok((out, padded))
}

/// `[B, D, H, W, C]` → `[B·nW, wd·wh·ww, C]` (MONAI `window_partition`, 3-D branch).
pub fn window_partition(x: &Tensor, window: [usize; 3]) -> Result<Tensor> {
    let (b, d, h, w, c) = x.dims5()?;
    let [wd, wh, ww] = window;
    if window.contains(&0) || d % wd != 0 || h % wh != 0 || w % ww != 0 {
        candle::bail!(
            "window_partition: spatial size {:?} must be a multiple of the window {window:?}",
            [d, h, w]
        )
    }
    let n_win = b * (d / wd) * (h / wh) * (w / ww);
    // [B, D, H, W, C] -> [B, D/wd, wd, H/wh, wh, W/ww, ww, C]
    x.reshape(vec![b, d / wd, wd, h / wh, wh, w / ww, ww, c])?
        // -> [B, D/wd, H/wh, W/ww, wd, wh, ww, C]
        .permute(vec![0, 1, 3, 5, 2, 4, 6, 7])?
        .contiguous()?
        // -> [B·nW, N, C]
        .reshape((n_win, wd * wh * ww, c))
}

/// Inverse of [`window_partition`]: `[B·nW, N, C]` → `[B, D, H, W, C]` for `dims = [B, D, H, W]`.
pub fn window_reverse(windows: &Tensor, window: [usize; 3], dims: [usize; 4]) -> Result<Tensor> {
    let (nw, n, c) = windows.dims3()?;
    let [b, d, h, w] = dims;
    let [wd, wh, ww] = window;
    if window.contains(&0)
        || d % wd != 0
        || h % wh != 0
        || w % ww != 0
        || n != wd * wh * ww
        || nw != b * (d / wd) * (h / wh) * (w / ww)
    {
        candle::bail!(
            "window_reverse: windows {:?} do not tile [B, D, H, W] = {dims:?} with window {window:?}",
            windows.dims()
        )
    }
    // [B·nW, N, C] -> [B, D/wd, H/wh, W/ww, wd, wh, ww, C]
    windows
        .reshape(vec![b, d / wd, h / wh, w / ww, wd, wh, ww, c])?
        // -> [B, D/wd, wd, H/wh, wh, W/ww, ww, C]
        .permute(vec![0, 1, 4, 2, 5, 3, 6, 7])?
        .contiguous()?
        .reshape((b, d, h, w, c))
}

/// Cyclic shift of the spatial dims (1, 2, 3) of `[B, D, H, W, C]`, `torch.roll` semantics:
/// a positive shift moves content toward higher indices.
pub fn roll3d(x: &Tensor, shifts: [isize; 3]) -> Result<Tensor> {
    if x.rank() != 5 {
        candle::bail!("roll3d: expected [B, D, H, W, C], got {:?}", x.dims())
    }
    let mut out = x.clone();
    for (a, &s) in shifts.iter().enumerate() {
        let len = x.dim(a + 1)? as isize;
        if len == 0 {
            continue;
        }
        let s = s.rem_euclid(len);
        if s != 0 {
            out = out.roll(s as i32, a + 1)?;
        }
    }
    Ok(out)
}

/// The shifted-window attention mask of MONAI `compute_mask`: `[nW, N, N]` f32 with 0 where the
/// two tokens of a window come from the same one of the 27 regions and −100 elsewhere.
///
/// `padded` is the padded spatial size (a multiple of `window`), `shift` the (already shrunk)
/// shift. Regions along each axis are `[0, P−ws)`, `[P−ws, P−s)`, `[P−s, P)`.
pub fn shifted_window_mask(
    padded: [usize; 3],
    window: [usize; 3],
    shift: [usize; 3],
    device: &Device,
) -> Result<Tensor> {
    for a in 0..3 {
        if window[a] == 0 || !padded[a].is_multiple_of(window[a]) || shift[a] > window[a] {
            candle::bail!(
                "shifted_window_mask: padded size {padded:?} must be a multiple of window {window:?} \
                 and shift {shift:?} at most the window"
            )
        }
    }
    let region = |a: usize, i: usize| -> usize {
        let (p, ws, s) = (padded[a], window[a], shift[a]);
        if i < p - ws {
            0
        } else if i < p - s {
            1
        } else {
            2
        }
    };
    let [pd, ph, pw] = padded;
    let [wd, wh, ww] = window;
    let n = wd * wh * ww;
    let n_win = (pd / wd) * (ph / wh) * (pw / ww);
    let mut labels = vec![0u8; n_win * n];
    for d in 0..pd {
        for h in 0..ph {
            for w in 0..pw {
                let id = (region(0, d) * 3 + region(1, h)) * 3 + region(2, w);
                let win = ((d / wd) * (ph / wh) + h / wh) * (pw / ww) + w / ww;
                let tok = ((d % wd) * wh + h % wh) * ww + w % ww;
                labels[win * n + tok] = id as u8;
            }
        }
    }
    let mut mask = vec![0f32; n_win * n * n];
    for win in 0..n_win {
        let l = &labels[win * n..(win + 1) * n];
        for i in 0..n {
            for j in 0..n {
                if l[i] != l[j] {
                    mask[(win * n + i) * n + j] = -100.0;
                }
            }
        }
    }
    Tensor::from_vec(mask, (n_win, n, n), device)
}

/// The relative-position index of MONAI `WindowAttention` for a `window` grid: `[N·N]` entries
/// `(Δd + wd − 1)·(2wh − 1)·(2ww − 1) + (Δh + wh − 1)·(2ww − 1) + (Δw + ww − 1)`, row = query.
///
/// MONAI builds it once on the configured window (7³) and slices `[:N, :N]` when a stage uses a
/// smaller window; callers must do the same (see `relative_position_index_sliced`).
pub fn relative_position_index(window: [usize; 3]) -> Vec<u32> {
    let [wd, wh, ww] = window;
    let coords: Vec<[usize; 3]> =
        (0..wd).flat_map(|d| (0..wh).flat_map(move |h| (0..ww).map(move |w| [d, h, w]))).collect();
    let mut idx = Vec::with_capacity(coords.len() * coords.len());
    for qi in &coords {
        for kj in &coords {
            let dd = qi[0] + wd - 1 - kj[0];
            let dh = qi[1] + wh - 1 - kj[1];
            let dw = qi[2] + ww - 1 - kj[2];
            idx.push((dd * (2 * wh - 1) * (2 * ww - 1) + dh * (2 * ww - 1) + dw) as u32);
        }
    }
    idx
}

/// MONAI's quirk: the index of the full `window` grid, top-left `[:n, :n]` block.
pub fn relative_position_index_sliced(window: [usize; 3], n: usize) -> Result<Vec<u32>> {
    let full: usize = window.iter().product();
    if n > full {
        candle::bail!("relative_position_index_sliced: {n} tokens exceed the window {window:?}")
    }
    let idx = relative_position_index(window);
    Ok((0..n).flat_map(|i| idx[i * full..i * full + n].iter().copied()).collect())
}
