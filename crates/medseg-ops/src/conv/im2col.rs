//! 3-D convolution and transposed convolution as im2col / col2im plus one GEMM per group
//! (candle's `matmul`: cuBLAS on CUDA): the path of `conv3d` / `conv_transpose3d` on devices other
//! than the CPU.
//!
//! `Im2col` and `Col2im` are candle custom ops whose backward is the other one (they are
//! adjoint), so gradients of `x` flow through the kernels and gradients of `w` through the GEMM.
//! Each op has its CPU kernel (`cpu.rs`, whole volumes) and its CUDA kernel (`kernels/im2col.cu`,
//! launched by `cuda.rs`) side by side, so the whole path is tested on CPU against the tiled CPU
//! convolution and the composed reference.
use candle::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use medseg_kernels::Im2colGeom;

use super::cpu;
use super::op::{Conv3dConfig, ConvTranspose3dConfig};

/// The dtype the kernels run in: bf16 stays bf16 on CUDA, everything else is f32.
fn compute_dtype(x: &Tensor) -> DType {
    if x.device().is_cuda() && x.dtype() == DType::BF16 { DType::BF16 } else { DType::F32 }
}

fn out_size(axis: usize, i: usize, k: usize, s: usize, p: usize, l: usize) -> Result<usize> {
    let span = l * (k - 1) + 1;
    if i + 2 * p < span || s == 0 {
        candle::bail!(
            "conv3d: axis {axis}: input {i} + 2·{p} padding is smaller than the dilated kernel {span}"
        )
    }
    Ok((i + 2 * p - span) / s + 1)
}

/// `conv3d` through im2col + GEMM. Same contract as [`crate::conv3d`], which runs it on every
/// device but the CPU.
pub fn conv3d_im2col(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv3dConfig,
) -> Result<Tensor> {
    let (n, ci, d, h, wd) = x.dims5()?;
    let (co, ci_g, kd, kh, kw) = w.dims5()?;
    let groups = cfg.groups;
    let degenerate =
        [kd, kh, kw].contains(&0) || cfg.stride.contains(&0) || cfg.dilation.contains(&0);
    if groups == 0 || ci_g * groups != ci || co % groups != 0 || degenerate {
        candle::bail!("conv3d: x {:?} and w {:?} do not fit {groups} groups", x.dims(), w.dims())
    }
    let (kernel, input) = ([kd, kh, kw], [d, h, wd]);
    let mut output = [0; 3];
    for a in 0..3 {
        output[a] =
            out_size(a, input[a], kernel[a], cfg.stride[a], cfg.padding[a], cfg.dilation[a])?;
    }
    let g = Im2colGeom {
        volumes: n * ci,
        input,
        output,
        kernel,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
    };
    let (taps, positions, co_g) = (g.taps(), g.positions(), co / groups);
    let dtype = x.dtype();
    let c = compute_dtype(x);
    // [N, Ci, D, H, W] -> cols [N, g, Ci/g·K, P]
    let cols = x.to_dtype(c)?.contiguous()?.apply_op1(Im2col { g })?;
    let cols = cols.reshape((n, groups, ci_g * taps, positions))?;
    // [Co, Ci/g, K…] -> [1, g, Co/g, Ci/g·K]
    let wm = w.to_dtype(c)?.reshape((1, groups, co_g, ci_g * taps))?;
    // [1, g, Co/g, Ci/g·K] x [N, g, Ci/g·K, P] -> [N, g, Co/g, P] -> [N, Co, Do, Ho, Wo]
    let y = wm.broadcast_matmul(&cols)?.reshape((n, co, output[0], output[1], output[2]))?;
    add_bias(y, bias)?.to_dtype(dtype)
}

/// `conv_transpose3d` through GEMM + col2im. Same contract as [`crate::conv_transpose3d`], which
/// runs it on every device but the CPU.
pub fn conv_transpose3d_col2im(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: &ConvTranspose3dConfig,
) -> Result<Tensor> {
    let (n, ci, d, h, wd) = x.dims5()?;
    let (wci, co_g, kd, kh, kw) = w.dims5()?;
    let groups = cfg.groups;
    let degenerate =
        [kd, kh, kw].contains(&0) || cfg.stride.contains(&0) || cfg.dilation.contains(&0);
    if groups == 0 || wci != ci || ci % groups != 0 || degenerate {
        candle::bail!(
            "conv_transpose3d: x {:?} and w {:?} do not fit {groups} groups",
            x.dims(),
            w.dims()
        )
    }
    let (kernel, input) = ([kd, kh, kw], [d, h, wd]);
    let mut out = [0; 3];
    for a in 0..3 {
        if cfg.output_padding[a] >= cfg.stride[a].max(cfg.dilation[a]) || input[a] == 0 {
            candle::bail!(
                "conv_transpose3d: output_padding {:?} must be < stride {:?}",
                cfg.output_padding,
                cfg.stride
            )
        }
        let full = (input[a] - 1) * cfg.stride[a]
            + cfg.dilation[a] * (kernel[a] - 1)
            + cfg.output_padding[a]
            + 1;
        if full <= 2 * cfg.padding[a] {
            candle::bail!("conv_transpose3d: padding {:?} leaves no output", cfg.padding)
        }
        out[a] = full - 2 * cfg.padding[a];
    }
    let co = co_g * groups;
    let ci_g = ci / groups;
    // The forward convolution that maps the output grid back onto x's grid.
    let g = Im2colGeom {
        volumes: n * co,
        input: out,
        output: input,
        kernel,
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
    };
    let (taps, positions) = (g.taps(), g.positions());
    let dtype = x.dtype();
    let c = compute_dtype(x);
    // [Ci, Co/g, K…] -> [g, Ci/g, Co/g·K] -> [1, g, Co/g·K, Ci/g]
    let wt = w.to_dtype(c)?.reshape((groups, ci_g, co_g * taps))?.transpose(1, 2)?.unsqueeze(0)?;
    // [N, Ci, D, H, W] -> [N, g, Ci/g, P]
    let xg = x.to_dtype(c)?.reshape((n, groups, ci_g, positions))?;
    // [1, g, Co/g·K, Ci/g] x [N, g, Ci/g, P] -> cols [N, g, Co/g·K, P]
    let cols = wt.broadcast_matmul(&xg)?.contiguous()?.flatten_all()?;
    let y = cols.apply_op1(Col2im { g })?.reshape((n, co, out[0], out[1], out[2]))?;
    add_bias(y, bias)?.to_dtype(dtype)
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => {
            let co = y.dim(1)?;
            y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, co, 1, 1, 1))?)
        }
        None => Ok(y),
    }
}

/// `x` `[N·C volumes]` → `cols` flat `[N·C·K·P]`.
struct Im2col {
    g: Im2colGeom,
}

/// `cols` flat → `x` flat (adjoint of [`Im2col`]).
struct Col2im {
    g: Im2colGeom,
}

fn kernel_err(name: &str, e: medseg_kernels::KernelError) -> candle::Error {
    candle::Error::Msg(format!("{name}: {e}"))
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::storage::f32_slice(self.name(), s, l)?;
        self.g.check(true, x.len()).map_err(|e| kernel_err(self.name(), e))?;
        Ok((CpuStorage::F32(cpu::im2col(&self.g, x)), Shape::from(self.g.cols_len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle::CudaStorage,
        l: &Layout,
    ) -> Result<(candle::CudaStorage, Shape)> {
        let st = super::cuda::im2col(&self.g, s, l, true)?;
        Ok((st, Shape::from(self.g.cols_len())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let gx = grad.contiguous()?.flatten_all()?.apply_op1(Col2im { g: self.g })?;
        Ok(Some(gx.reshape(x.shape())?))
    }
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = crate::storage::f32_slice(self.name(), s, l)?;
        self.g.check(false, cols.len()).map_err(|e| kernel_err(self.name(), e))?;
        Ok((CpuStorage::F32(cpu::col2im(&self.g, cols)), Shape::from(self.g.x_len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle::CudaStorage,
        l: &Layout,
    ) -> Result<(candle::CudaStorage, Shape)> {
        let st = super::cuda::im2col(&self.g, s, l, false)?;
        Ok((st, Shape::from(self.g.x_len())))
    }

    fn bwd(&self, cols: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let gc = grad.contiguous()?.flatten_all()?.apply_op1(Im2col { g: self.g })?;
        Ok(Some(gc.reshape(cols.shape())?))
    }
}
