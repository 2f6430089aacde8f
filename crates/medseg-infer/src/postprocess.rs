//! Post-processing of class scores on the network grid: softmax over channels and the argmax to
//! `u8` labels (medseg-metrics' `argmax_channels`, the workspace's one argmax).
use rayon::prelude::*;

use crate::{Error, Result};

/// In-place softmax over the channels of a channel-major `[K·N]` buffer (max-subtracted).
pub fn softmax_channels(p: &mut [f32], k: usize) {
    if k == 0 {
        return;
    }
    let n = p.len() / k;
    let mut max = vec![f32::NEG_INFINITY; n];
    for row in p.chunks(n) {
        max.par_iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
    }
    let mut sum = vec![0f32; n];
    for row in p.chunks_mut(n) {
        row.par_iter_mut().zip(&max).zip(sum.par_iter_mut()).for_each(|((v, m), s)| {
            *v = (*v - m).exp();
            *s += *v;
        });
    }
    for row in p.chunks_mut(n) {
        row.par_iter_mut().zip(&sum).for_each(|(v, s)| *v /= s);
    }
}

/// Per-voxel index of the largest channel of a channel-major `[K·N]` buffer as `u8` labels (first
/// channel wins ties, as `torch.argmax`). More than 256 channels is an error.
pub fn argmax_labels(p: &[f32], k: usize) -> Result<Vec<u8>> {
    if k > 256 {
        return Err(Error::Shape {
            what: "argmax to u8 labels".into(),
            expected: "at most 256 channels".into(),
            got: vec![k],
        });
    }
    Ok(medseg_metrics::argmax_channels(p, k).into_iter().map(|c| c as u8).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_argmax_on_channel_major_buffers() {
        // 2 channels × 3 voxels.
        let mut p = vec![1.0f32, 0.0, 5.0, 1.0, 2.0, -5.0];
        assert_eq!(argmax_labels(&p, 2).expect("argmax"), vec![0, 1, 0]);
        softmax_channels(&mut p, 2);
        assert!((p[0] - 0.5).abs() < 1e-7 && (p[3] - 0.5).abs() < 1e-7);
        let e2 = 1.0 / (1.0 + 2f32.exp());
        assert!((p[1] - e2).abs() < 1e-7 && (p[4] - (1.0 - e2)).abs() < 1e-7);
        for v in 0..3 {
            assert!((p[v] + p[3 + v] - 1.0).abs() < 1e-6);
        }
        // Ties keep the first channel, like torch.argmax.
        assert_eq!(argmax_labels(&[0.5, 0.5], 2).expect("argmax"), vec![0]);
        assert!(argmax_labels(&vec![0.0; 257], 257).is_err());
    }

    #[test]
    fn argmax_blocks_cover_every_voxel() {
        // More voxels than one parallel block, the maximum moving between channels.
        let (k, n) = (3, 40_000);
        let p: Vec<f32> = (0..k * n).map(|i| ((i % n) % k == i / n) as u8 as f32).collect();
        let want: Vec<u8> = (0..n).map(|v| (v % k) as u8).collect();
        assert_eq!(argmax_labels(&p, k).expect("argmax"), want);
    }
}
