//! Swin window ops against index-loop references written from MONAI's formulas.
use candle::{DType, Device, Tensor};
use medseg_ops::{
    pad_to_windows, relative_position_index, relative_position_index_sliced, roll3d,
    shifted_window_mask, window_and_shift, window_partition, window_reverse,
};

use crate::{check_finite_differences, output_and_grads, rand};

/// `window_partition` by explicit loops: window `((b·nD + iD)·nH + iH)·nW + iW`,
/// token `(d·wh + h)·ww + w`.
fn partition_loops(x: &Tensor, win: [usize; 3]) -> Tensor {
    let (b, d, h, w, c) = x.dims5().unwrap();
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let [wd, wh, ww] = win;
    let (nd, nh, nw) = (d / wd, h / wh, w / ww);
    let n = wd * wh * ww;
    let mut out = vec![0f32; v.len()];
    for bi in 0..b {
        for z in 0..d {
            for y in 0..h {
                for xx in 0..w {
                    let win_id = ((bi * nd + z / wd) * nh + y / wh) * nw + xx / ww;
                    let tok = ((z % wd) * wh + y % wh) * ww + xx % ww;
                    for ci in 0..c {
                        out[(win_id * n + tok) * c + ci] =
                            v[(((bi * d + z) * h + y) * w + xx) * c + ci];
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (b * nd * nh * nw, n, c), &Device::Cpu).unwrap()
}

#[test]
fn partition_and_reverse_match_loops() {
    let x = rand(&[2, 6, 4, 9, 3], 1);
    let win = [3, 2, 3];
    let p = window_partition(&x, win).unwrap();
    let expected = partition_loops(&x, win);
    assert_eq!(p.to_vec3::<f32>().unwrap(), expected.to_vec3::<f32>().unwrap());
    let back = window_reverse(&p, win, [2, 6, 4, 9]).unwrap();
    assert_eq!(
        back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // Gradient of a permutation is the inverse permutation.
    let f = |t: &[Tensor]| window_partition(&t[0], win);
    check_finite_differences(
        "window_partition",
        &f,
        &[rand(&[1, 3, 2, 3, 2], 2)],
        DType::F32,
        0.5,
        1e-4,
    );
    let (_, g) = output_and_grads(&f, std::slice::from_ref(&x), 3);
    assert_eq!(g[0].dims(), x.dims());
}

#[test]
fn partition_rejects_non_multiples() {
    let e = window_partition(&rand(&[1, 5, 4, 4, 2], 1), [2, 2, 2]).unwrap_err().to_string();
    assert!(e.contains("multiple of the window"), "{e}");
    let e = window_reverse(&rand(&[3, 8, 2], 1), [2, 2, 2], [1, 4, 4, 4]).unwrap_err().to_string();
    assert!(e.contains("do not tile"), "{e}");
}

#[test]
fn roll_and_pad_follow_torch() {
    // torch.roll(x, shifts=(-1, 2, 0), dims=(1, 2, 3)) moves content by the shift with wrap-around.
    let x = rand(&[1, 3, 4, 2, 1], 4);
    let r = roll3d(&x, [-1, 2, 0]).unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let rv = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for d in 0..3 {
        for h in 0..4 {
            for w in 0..2 {
                let (sd, sh) = ((d + 1) % 3, (h + 4 - 2) % 4);
                assert_eq!(rv[(d * 4 + h) * 2 + w], xv[(sd * 4 + sh) * 2 + w]);
            }
        }
    }
    let back = roll3d(&r, [1, -2, 0]).unwrap();
    assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), xv);
    let (p, padded) = pad_to_windows(&rand(&[1, 5, 7, 3, 2], 5), [7, 7, 2]).unwrap();
    assert_eq!(padded, [7, 7, 4]);
    assert_eq!(p.dims(), [1, 7, 7, 4, 2]);
    let tail =
        p.narrow(1, 5, 2).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(tail, 0.0, "padding goes at the end and is zero");
}

#[test]
fn window_size_shrinks_per_axis() {
    // swin-reference §1.5: stage 4 of a 192×96×32 input runs on 12×6×2.
    assert_eq!(window_and_shift([12, 6, 2], [7; 3], [3; 3]), ([7, 6, 2], [3, 0, 0]));
    assert_eq!(window_and_shift([24, 12, 4], [7; 3], [3; 3]), ([7, 7, 4], [3, 3, 0]));
    assert_eq!(window_and_shift([6, 6, 6], [7; 3], [3; 3]), ([6; 3], [0; 3]));
}

#[test]
fn shift_mask_has_27_regions() {
    let m = shifted_window_mask([14, 14, 14], [7; 3], [3; 3], &Device::Cpu).unwrap();
    assert_eq!(m.dims(), [8, 343, 343]);
    let v = m.to_vec3::<f32>().unwrap();
    // Window 0 lies entirely in region 0: no masking.
    assert!(v[0].iter().flatten().all(|&x| x == 0.0));
    // The last window holds all 8 corner regions of the 27 (4³ split of 7 = 4 + 3 per axis):
    // tokens i and j are masked iff any of their (d, h, w) fall on different sides of 4.
    let last = &v[7];
    for i in (0..343).step_by(17) {
        for j in (0..343).step_by(13) {
            let side = |t: usize| [t / 49 >= 4, (t / 7) % 7 >= 4, t % 7 >= 4];
            let expected = if side(i) == side(j) { 0.0 } else { -100.0 };
            assert_eq!(last[i][j], expected, "tokens {i}, {j}");
        }
    }
    assert!(v.iter().flatten().flatten().all(|&x| x == 0.0 || x == -100.0));
}

#[test]
fn relative_position_index_matches_formula_and_slices() {
    let idx = relative_position_index([7; 3]);
    assert_eq!(idx.len(), 343 * 343);
    assert_eq!(idx[0], (6 * 169 + 6 * 13 + 6) as u32, "zero offset sits in the table centre");
    assert_eq!(*idx.iter().max().unwrap(), 2196);
    // Token 342 = (6,6,6) against token 0 = (0,0,0): offset (+6,+6,+6) -> 12·169 + 12·13 + 12.
    assert_eq!(idx[342 * 343], 2196);
    let s = relative_position_index_sliced([7; 3], 216).unwrap();
    assert_eq!(s.len(), 216 * 216);
    assert_eq!(s[215], idx[215]);
    assert_eq!(s[216], idx[343], "row 1 of the slice is row 1 of the 7³ index");
    assert!(relative_position_index_sliced([2; 3], 9).is_err());
}
