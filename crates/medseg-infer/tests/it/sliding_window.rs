//! The streaming sliding window against a naive full-buffer blend, its argmax, and how many
//! slices it keeps alive. (The MONAI goldens of the blended values are in `golden.rs`.)
use std::cell::Cell;

use candle::{Device, Tensor};
use medseg_infer::sliding_window::{importance_map, window_starts};
use medseg_infer::{
    BlendMode, Error, SlidingWindowConfig, sliding_window_argmax, sliding_window_inference,
    sliding_window_stream,
};
use medseg_ops::{Conv3dConfig, conv3d};
use medseg_testkit::random_tensor;

fn cfg(
    roi: [usize; 3],
    sw_batch_size: usize,
    overlap: f64,
    mode: BlendMode,
) -> SlidingWindowConfig {
    SlidingWindowConfig { roi, sw_batch_size, overlap, mode, sigma_scale: 0.125 }
}

/// A 3×3×3 convolution to `k` channels plus each window's mean: window-dependent scores.
fn predictor(k: usize) -> impl FnMut(&Tensor) -> medseg_infer::Result<Tensor> {
    let dev = Device::Cpu;
    let w = random_tensor(&[k, 1, 3, 3, 3], 11, &dev).expect("w");
    let b = random_tensor(&[k], 12, &dev).expect("b");
    move |t: &Tensor| {
        let conv = conv3d(t, &w, Some(&b), &Conv3dConfig::uniform(1, 1))?;
        let m = t.mean_keepdim(4)?.mean_keepdim(3)?.mean_keepdim(2)?;
        Ok(conv.broadcast_add(&m)?)
    }
}

/// The obviously correct blend: every window's weighted output and weight added into full
/// `[B, K, D, H, W]` buffers in window order, then divided; zero padding of small dims.
fn naive_blend(x: &Tensor, c: &SlidingWindowConfig, k: usize) -> Vec<f32> {
    let (b, _, d, h, w) = x.dims5().expect("dims");
    let orig = [d, h, w];
    let size: [usize; 3] = std::array::from_fn(|i| orig[i].max(c.roi[i]));
    let before: [usize; 3] = std::array::from_fn(|i| (size[i] - orig[i]) / 2);
    let mut xp = x.clone();
    for i in 0..3 {
        let diff = size[i] - orig[i];
        xp = xp.pad_with_zeros(2 + i, diff / 2, diff - diff / 2).expect("pad");
    }
    let starts = window_starts(size, c.roi, c.overlap);
    let wmap = importance_map(c.roi, c.mode, c.sigma_scale);
    let mut pred = predictor(k);
    let vox: usize = size.iter().product();
    let mut sum = vec![0f32; b * k * vox];
    let mut count = vec![0f32; vox];
    let r = c.roi;
    for bi in 0..b {
        for &s0 in &starts[0] {
            for &s1 in &starts[1] {
                for &s2 in &starts[2] {
                    let crop = xp
                        .narrow(0, bi, 1)
                        .and_then(|t| t.narrow(2, s0, r[0]))
                        .and_then(|t| t.narrow(3, s1, r[1]))
                        .and_then(|t| t.narrow(4, s2, r[2]))
                        .expect("crop");
                    let p: Vec<f32> = pred(&crop)
                        .expect("predict")
                        .flatten_all()
                        .and_then(|t| t.to_vec1())
                        .expect("vec");
                    let mut si = 0;
                    for a in 0..r[0] {
                        for bb in 0..r[1] {
                            for cc in 0..r[2] {
                                let di = ((s0 + a) * size[1] + s1 + bb) * size[2] + s2 + cc;
                                if bi == 0 {
                                    count[di] += wmap[si];
                                }
                                for ch in 0..k {
                                    sum[(bi * k + ch) * vox + di] +=
                                        p[ch * r.iter().product::<usize>() + si] * wmap[si];
                                }
                                si += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::with_capacity(b * k * d * h * w);
    for bk in 0..b * k {
        for i in 0..d {
            for j in 0..h {
                for l in 0..w {
                    let di = ((i + before[0]) * size[1] + j + before[1]) * size[2] + l + before[2];
                    out.push(sum[bk * vox + di] / count[di]);
                }
            }
        }
    }
    out
}

/// (input shape, roi, sw batch, overlap, mode, channels).
type Case = ([usize; 5], [usize; 3], usize, f64, BlendMode, usize);

/// Padding, a sw batch straddling two batch items, high overlap, constant blending and more than
/// 128 channels.
const CASES: [Case; 5] = [
    ([1, 1, 20, 12, 14], [8, 8, 8], 1, 0.5, BlendMode::Gaussian, 5),
    ([2, 1, 13, 9, 6], [8, 8, 8], 5, 0.25, BlendMode::Gaussian, 3),
    ([1, 1, 18, 10, 10], [6, 8, 8], 3, 0.7, BlendMode::Constant, 4),
    ([2, 1, 10, 5, 12], [8, 8, 8], 2, 0.5, BlendMode::Gaussian, 2),
    ([1, 1, 12, 8, 8], [8, 8, 8], 4, 0.5, BlendMode::Gaussian, 130),
];

#[test]
fn streaming_blend_equals_the_naive_full_buffer_blend_bit_for_bit() {
    for (i, (shape, roi, sw, overlap, mode, k)) in CASES.into_iter().enumerate() {
        let x = random_tensor(&shape, 100 + i as u64, &Device::Cpu).expect("x");
        let c = cfg(roi, sw, overlap, mode);
        let y = sliding_window_inference(&x, &c, predictor(k)).expect("inference");
        assert_eq!(y.dims(), [shape[0], k, shape[2], shape[3], shape[4]], "case {i}");
        let got: Vec<f32> = y.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
        let want = naive_blend(&x, &c, k);
        let bad = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(bad, None, "case {i}: first differing element");
    }
}

#[test]
fn argmax_equals_the_argmax_of_the_full_scores() {
    for (i, (shape, roi, sw, overlap, mode, k)) in CASES.into_iter().enumerate() {
        let x = random_tensor(&shape, 200 + i as u64, &Device::Cpu).expect("x");
        let c = cfg(roi, sw, overlap, mode);
        let labels = sliding_window_argmax(&x, &c, predictor(k)).expect("argmax");
        assert_eq!(labels.dims(), [shape[0], shape[2], shape[3], shape[4]], "case {i}");
        let want: Vec<u8> = sliding_window_inference(&x, &c, predictor(k))
            .and_then(|y| Ok(y.argmax(1)?.to_dtype(candle::DType::U8)?))
            .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
            .expect("reference");
        let got: Vec<u8> = labels.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
        assert_eq!(got, want, "case {i}");
        let distinct = got.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 1, "case {i}: a constant label map tests nothing");
    }
}

#[test]
fn only_about_one_roi_of_slices_is_alive() {
    // 40 slices deep, roi 8 along D, one window per call: call n predicts window n.
    let (d, roi) = (40, [8, 8, 8]);
    let x = random_tensor(&[1, 1, d, 8, 8], 7, &Device::Cpu).expect("x");
    let c = cfg(roi, 1, 0.5, BlendMode::Gaussian);
    let windows: Vec<usize> = window_starts([d, 8, 8], roi, 0.5)[0].clone();
    let calls = Cell::new(0usize);
    let mut pred = predictor(2);
    let mut emitted = Vec::new();
    let mut max_alive = 0;
    sliding_window_stream(
        &x,
        &c,
        |t| {
            calls.set(calls.get() + 1);
            pred(t)
        },
        |s| {
            // Slices predicted into so far (windows 0..calls) minus those already emitted.
            let covered = windows[..calls.get()].iter().map(|s0| s0 + roi[0]).max().unwrap_or(0);
            max_alive = max_alive.max(covered - s.d);
            // Every window that covers this slice has run.
            let covering = windows.iter().filter(|&&s0| s0 <= s.d && s.d < s0 + roi[0]).count();
            let done = windows[..calls.get()].iter().filter(|&&s0| s0 <= s.d && s.d < s0 + roi[0]);
            assert_eq!(done.count(), covering, "slice {} emitted early", s.d);
            emitted.push(s.d);
            Ok(())
        },
    )
    .expect("stream");
    assert_eq!(emitted, (0..d).collect::<Vec<_>>());
    assert!(max_alive <= roi[0], "{max_alive} slices alive, roi {}", roi[0]);
}

#[test]
fn a_non_finite_score_names_its_voxel_and_channel() {
    let x = random_tensor(&[1, 1, 16, 8, 8], 3, &Device::Cpu).expect("x");
    let c = cfg([8, 8, 8], 1, 0.0, BlendMode::Constant);
    let mut calls = 0;
    let err = sliding_window_argmax(&x, &c, |t| {
        calls += 1;
        let mut v = vec![0f32; 2 * 512];
        if calls == 2 {
            // second window (slices 8..16), channel 1, window voxel (3, 4, 5)
            v[512 + (3 * 8 + 4) * 8 + 5] = f32::NAN;
        }
        Ok(Tensor::from_vec(v, (t.dim(0)?, 2, 8, 8, 8), t.device())?)
    })
    .expect_err("NaN must fail");
    match err {
        Error::NonFiniteOutput { batch: 0, channel: 1, voxel: [11, 4, 5], value } => {
            assert!(value.is_nan())
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn more_than_256_classes_is_refused_by_the_argmax() {
    let x = random_tensor(&[1, 1, 8, 8, 8], 4, &Device::Cpu).expect("x");
    let c = cfg([8, 8, 8], 1, 0.0, BlendMode::Constant);
    let err = sliding_window_argmax(&x, &c, |t| {
        Ok(Tensor::zeros((1, 257, 8, 8, 8), t.dtype(), t.device())?)
    })
    .expect_err("257 channels");
    assert!(err.to_string().contains("at most 256 channels"), "{err}");
}
