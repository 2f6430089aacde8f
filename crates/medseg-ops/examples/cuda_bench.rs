//! CUDA micro-benchmarks (feature `cuda`): fused vs composed window attention at the Swin UNETR
//! stage shapes, Soft MoE dispatch + combine, conv3d, f32 and bf16, forward and forward+backward.
//! One JSON object per line on stdout. Built without `cuda` it says so and exits.
//!
//! `cargo run --release --features cuda -p medseg-ops --example cuda_bench` (or the GPU bundle).
#[cfg(feature = "cuda")]
fn main() -> candle::Result<()> {
    bench::run()
}

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("cuda_bench: built without the `cuda` feature; nothing to measure");
}

#[cfg(feature = "cuda")]
mod bench {
    use std::time::Instant;

    use candle::{DType, Device, Result, Tensor, Var};

    /// Median seconds of `reps` runs of `f` after one warm-up, synchronising the device.
    fn time(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?;
        dev.synchronize()?;
        let mut t = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            f()?;
            dev.synchronize()?;
            t.push(start.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    }

    fn report(name: &str, shape: &str, dtype: DType, fwd: f64, fwd_bwd: f64) {
        println!(
            "{{\"bench\":\"{name}\",\"shape\":\"{shape}\",\"dtype\":\"{dtype:?}\",\
             \"fwd_ms\":{:.3},\"fwd_bwd_ms\":{:.3}}}",
            fwd * 1e3,
            fwd_bwd * 1e3
        );
    }

    pub fn run() -> Result<()> {
        let dev = match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                println!("cuda_bench: skipped, no CUDA device ({e})");
                return Ok(());
            }
        };
        // Swin UNETR at 96³ input, feature 48: stage 0 has 8³/… windows of 7³ = 343 tokens.
        for &(bw, heads, hd) in &[(64usize, 3usize, 16usize), (8, 6, 16), (8, 12, 16)] {
            for dtype in [DType::F32, DType::BF16] {
                window_attention(&dev, bw, heads, 343, hd, dtype)?;
            }
        }
        for dtype in [DType::F32, DType::BF16] {
            soft_moe(&dev, 1, 4096, 4096, 192, dtype)?;
            conv(&dev, dtype)?;
        }
        Ok(())
    }

    fn window_attention(
        dev: &Device,
        bw: usize,
        heads: usize,
        n: usize,
        hd: usize,
        dtype: DType,
    ) -> Result<()> {
        let shape = (bw, heads, n, hd);
        let var = |s| Var::from_tensor(&Tensor::randn(0f32, 1.0, s, dev)?.to_dtype(dtype)?);
        let (q, k, v) = (var(shape)?, var(shape)?, var(shape)?);
        let bias =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (heads, n, n), dev)?.to_dtype(dtype)?)?;
        let mask = Tensor::zeros((bw.min(8), n, n), dtype, dev)?;
        let scale = (hd as f64).powf(-0.5);
        let label = format!("[{bw}, {heads}, {n}, {hd}]");
        type F =
            fn(&Tensor, &Tensor, &Tensor, f64, Option<&Tensor>, Option<&Tensor>) -> Result<Tensor>;
        let paths: [(&str, F); 2] = [
            ("window_attention_fused", |q, k, v, scale, bias, mask| {
                medseg_ops::fused_attention(q, k, v, scale, bias, mask, None)
            }),
            ("window_attention_composed", medseg_ops::window_attention),
        ];
        for (name, f) in paths {
            let fwd = time(dev, 10, || {
                f(&q, &k, &v, scale, Some(bias.as_tensor()), Some(&mask)).map(|_| ())
            })?;
            let fb = time(dev, 5, || {
                let y = f(&q, &k, &v, scale, Some(bias.as_tensor()), Some(&mask))?;
                y.to_dtype(DType::F32)?.sum_all()?.backward().map(|_| ())
            })?;
            report(name, &label, dtype, fwd, fb);
        }
        Ok(())
    }

    fn soft_moe(dev: &Device, b: usize, n: usize, m: usize, d: usize, dtype: DType) -> Result<()> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, n, d), dev)?.to_dtype(dtype)?)?;
        let slots = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, m, d), dev)?.to_dtype(dtype)?)?;
        let y = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, m, d), dev)?.to_dtype(dtype)?)?;
        let f = || -> Result<Tensor> {
            let si = medseg_ops::soft_moe_dispatch(&x, &slots, n)?;
            let out = medseg_ops::soft_moe_combine(&x, &slots, &y)?;
            si.to_dtype(DType::F32)?.sum_all()? + out.to_dtype(DType::F32)?.sum_all()?
        };
        let fwd = time(dev, 5, || f().map(|_| ()))?;
        let fb = time(dev, 3, || f()?.backward().map(|_| ()))?;
        report(
            "soft_moe_dispatch_combine",
            &format!("[{b}, {n}, {d}] x {m} slots"),
            dtype,
            fwd,
            fb,
        );
        Ok(())
    }

    fn conv(dev: &Device, dtype: DType) -> Result<()> {
        let x = Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (1, 48, 48, 48, 48), dev)?.to_dtype(dtype)?,
        )?;
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 0.1, (48, 48, 3, 3, 3), dev)?.to_dtype(dtype)?)?;
        let cfg = medseg_ops::Conv3dConfig { padding: [1; 3], ..Default::default() };
        let fwd = time(dev, 5, || medseg_ops::conv3d(&x, &w, None, &cfg).map(|_| ()))?;
        let fb = time(dev, 3, || {
            medseg_ops::conv3d(&x, &w, None, &cfg)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .backward()
                .map(|_| ())
        })?;
        report("conv3d_3x3x3_48to48", "[1, 48, 48³]", dtype, fwd, fb);
        Ok(())
    }
}
