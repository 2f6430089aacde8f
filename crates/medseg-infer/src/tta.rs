//! Test-time augmentation by flips: the 8 subsets of the three spatial axes, and adding a
//! streamed slice of a flipped volume's scores, un-flipped, into one accumulator.

/// The 8 subsets of the spatial dims `{2, 3, 4}` of a `[B, C, D, H, W]` tensor, `[]` first.
pub fn flip_sets() -> Vec<Vec<usize>> {
    (0..8u8).map(|m| (0..3).filter(|b| m >> b & 1 == 1).map(|b| b + 2).collect()).collect()
}

/// Where voxel `[d, h, w]` of a volume of `shape` flipped along `axes` (0, 1, 2) sits unflipped.
pub fn unflip(shape: [usize; 3], axes: &[usize], v: [usize; 3]) -> [usize; 3] {
    std::array::from_fn(|a| if axes.contains(&a) { shape[a] - 1 - v[a] } else { v[a] })
}

/// Adds the channel-major `[K, H, W]` slice `d` of a volume flipped along `axes` to the
/// unflipped channel-major `[K·D·H·W]` accumulator.
pub fn add_slice(
    acc: &mut [f32],
    slice: &[f32],
    k: usize,
    shape: [usize; 3],
    axes: &[usize],
    d: usize,
) {
    let [_, nh, nw] = shape;
    let (hw, vox) = (nh * nw, shape.iter().product::<usize>());
    let d0 = unflip(shape, axes, [d, 0, 0])[0];
    let (flip_h, flip_w) = (axes.contains(&1), axes.contains(&2));
    for c in 0..k {
        let dst = &mut acc[c * vox + d0 * hw..][..hw];
        for (i, src) in slice[c * hw..(c + 1) * hw].chunks(nw).enumerate() {
            let i0 = if flip_h { nh - 1 - i } else { i };
            let row = &mut dst[i0 * nw..(i0 + 1) * nw];
            if flip_w {
                row.iter_mut().rev().zip(src).for_each(|(a, v)| *a += v);
            } else {
                row.iter_mut().zip(src).for_each(|(a, v)| *a += v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: flips every channel of a channel-major `[K·X·Y·Z]` buffer along `axes` (0, 1, 2).
    fn flip_channels(p: &[f32], k: usize, shape: [usize; 3], axes: &[usize]) -> Vec<f32> {
        let [nx, ny, nz] = shape;
        let n = nx * ny * nz;
        let f = |a: usize, i: usize| if axes.contains(&a) { shape[a] - 1 - i } else { i };
        let mut out = vec![0f32; k * n];
        for (row, dst) in out.chunks_mut(nz).enumerate() {
            let (c, rest) = (row / (nx * ny), row % (nx * ny));
            let (i, j) = (rest / ny, rest % ny);
            let src = c * n + (f(0, i) * ny + f(1, j)) * nz;
            for (kk, d) in dst.iter_mut().enumerate() {
                *d = p[src + f(2, kk)];
            }
        }
        out
    }

    #[test]
    fn flip_reference_flips() {
        // 1 channel of shape 2×1×3, flipped along axes 0 and 2.
        let q: Vec<f32> = (0..6).map(|v| v as f32).collect();
        assert_eq!(flip_channels(&q, 1, [2, 1, 3], &[0, 2]), vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(flip_channels(&q, 1, [2, 1, 3], &[0]), vec![3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
        let two: Vec<f32> = (0..4).map(|v| v as f32).collect();
        assert_eq!(flip_channels(&two, 2, [2, 1, 1], &[0]), vec![1.0, 0.0, 3.0, 2.0]);
    }

    #[test]
    fn streamed_slices_accumulate_unflipped() {
        // 2 channels of 3×4×5: every flip set, slice by slice, equals the whole-volume flip.
        let (k, shape) = (2, [3usize, 4, 5]);
        let vol: Vec<f32> = (0..k * 60).map(|v| (v * 7 % 11) as f32 - 3.0).collect();
        for f in flip_sets() {
            let axes: Vec<usize> = f.iter().map(|d| d - 2).collect();
            // The flipped volume as the network sees it, handed out slice by slice.
            let flipped = flip_channels(&vol, k, shape, &axes);
            let mut acc = vec![0f32; vol.len()];
            for d in 0..shape[0] {
                let slice: Vec<f32> =
                    (0..k).flat_map(|c| flipped[c * 60 + d * 20..][..20].to_vec()).collect();
                add_slice(&mut acc, &slice, k, shape, &axes, d);
            }
            assert_eq!(acc, vol, "flip {f:?}");
            assert_eq!(unflip(shape, &axes, unflip(shape, &axes, [2, 1, 0])), [2, 1, 0]);
        }
        assert_eq!(unflip(shape, &[0, 2], [0, 1, 0]), [2, 1, 4]);
    }

    #[test]
    fn flip_sets_are_the_eight_subsets() {
        let s = flip_sets();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0], Vec::<usize>::new());
        assert_eq!(s[7], vec![2, 3, 4]);
        let mut sorted = s.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
    }
}
