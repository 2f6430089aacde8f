//! CPU twin of `kernels/im2col.cu`: 3-D im2col and its adjoint col2im.
//!
//! `x` `[N, C, D, H, W]`, `cols` `[N, C·Kd·Kh·Kw, Do·Ho·Wo]` with
//! `cols[n, (c, kd, kh, kw), (od, oh, ow)] = x[n, c, od·s − p + kd·l, …]` (0 outside the volume).
//! Convolution is im2col followed by one GEMM per group; the transposed convolution is a GEMM
//! followed by col2im; the backward of each is the other.
use super::KernelError;

/// Sizes of one im2col / col2im call (`channels` = `N·C` rows of volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Im2colGeom {
    /// Batch × channels: the number of independent volumes.
    pub volumes: usize,
    /// Input volume `[D, H, W]`.
    pub input: [usize; 3],
    /// Output grid `[Do, Ho, Wo]`.
    pub output: [usize; 3],
    /// Kernel `[Kd, Kh, Kw]`.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Zero padding per axis (both ends).
    pub padding: [usize; 3],
    /// Dilation per axis.
    pub dilation: [usize; 3],
}

impl Im2colGeom {
    /// Elements of `x`.
    pub fn x_len(&self) -> usize {
        self.volumes * self.input.iter().product::<usize>()
    }
    /// Kernel taps `Kd·Kh·Kw`.
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }
    /// Output positions `Do·Ho·Wo`.
    pub fn positions(&self) -> usize {
        self.output.iter().product()
    }
    /// Elements of `cols`.
    pub fn cols_len(&self) -> usize {
        self.volumes * self.taps() * self.positions()
    }

    /// The input coordinate along `axis` read by output `o` and tap `k`, if inside the volume.
    fn source(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let i =
            (o * self.stride[axis] + k * self.dilation[axis]).checked_sub(self.padding[axis])?;
        (i < self.input[axis]).then_some(i)
    }

    fn check(&self) -> Result<(), KernelError> {
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.kernel.contains(&0) {
            return Err(KernelError::Geometry(format!("zero stride/dilation/kernel in {self:?}")));
        }
        Ok(())
    }
}

/// `cols` from `x`.
pub fn im2col(g: &Im2colGeom, x: &[f32]) -> Result<Vec<f32>, KernelError> {
    g.check()?;
    if x.len() != g.x_len() {
        return Err(KernelError::Length { name: "x", got: x.len(), want: g.x_len() });
    }
    let [d, h, w] = g.input;
    let [od, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let (taps, positions) = (g.taps(), g.positions());
    let mut cols = vec![0f32; g.cols_len()];
    for v in 0..g.volumes {
        let xv = &x[v * d * h * w..][..d * h * w];
        for (k, (a, b, c)) in (0..kd)
            .flat_map(|a| (0..kh).flat_map(move |b| (0..kw).map(move |c| (a, b, c))))
            .enumerate()
        {
            let row = &mut cols[(v * taps + k) * positions..][..positions];
            for z in 0..od {
                let Some(sz) = g.source(0, z, a) else { continue };
                for y in 0..oh {
                    let Some(sy) = g.source(1, y, b) else { continue };
                    for xx in 0..ow {
                        if let Some(sx) = g.source(2, xx, c) {
                            row[(z * oh + y) * ow + xx] = xv[(sz * h + sy) * w + sx];
                        }
                    }
                }
            }
        }
    }
    Ok(cols)
}

/// The adjoint of [`im2col`]: `x[i] = Σ cols[j]` over every entry `j` that reads `x[i]`.
pub fn col2im(g: &Im2colGeom, cols: &[f32]) -> Result<Vec<f32>, KernelError> {
    g.check()?;
    if cols.len() != g.cols_len() {
        return Err(KernelError::Length { name: "cols", got: cols.len(), want: g.cols_len() });
    }
    let [d, h, w] = g.input;
    let [od, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let (taps, positions) = (g.taps(), g.positions());
    let mut x = vec![0f32; g.x_len()];
    for v in 0..g.volumes {
        let xv = &mut x[v * d * h * w..][..d * h * w];
        for (k, (a, b, c)) in (0..kd)
            .flat_map(|a| (0..kh).flat_map(move |b| (0..kw).map(move |c| (a, b, c))))
            .enumerate()
        {
            let row = &cols[(v * taps + k) * positions..][..positions];
            for z in 0..od {
                let Some(sz) = g.source(0, z, a) else { continue };
                for y in 0..oh {
                    let Some(sy) = g.source(1, y, b) else { continue };
                    for xx in 0..ow {
                        if let Some(sx) = g.source(2, xx, c) {
                            xv[(sz * h + sy) * w + sx] += row[(z * oh + y) * ow + xx];
                        }
                    }
                }
            }
        }
    }
    Ok(x)
}
