//! Argument contract of `kernels/im2col.cu`: 3-D im2col and its adjoint col2im.
//!
//! `x` `[volumes, D, H, W]` (volumes = batch × channels), `cols` `[volumes, Kd·Kh·Kw, Do·Ho·Wo]`
//! with `cols[v, (kd, kh, kw), (od, oh, ow)] = x[v, od·s − p + kd·l, …]` (0 outside the volume).
//! Convolution is im2col followed by one GEMM per group; the transposed convolution is a GEMM
//! followed by col2im; the backward of each is the other.
use crate::{KernelError, check_len};

/// Sizes of one im2col / col2im call.
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

    /// Checks the hyper-parameters and the length of the input buffer (`x` for im2col, `cols`
    /// for col2im).
    pub fn check(&self, im2col: bool, input_len: usize) -> Result<(), KernelError> {
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.kernel.contains(&0) {
            return Err(KernelError::Geometry(format!("zero stride/dilation/kernel in {self:?}")));
        }
        for a in 0..3 {
            let span = self.dilation[a] * (self.kernel[a] - 1) + 1;
            let fits = self.input[a] + 2 * self.padding[a] >= span
                && (self.input[a] + 2 * self.padding[a] - span) / self.stride[a] + 1
                    >= self.output[a];
            if !fits {
                return Err(KernelError::Geometry(format!(
                    "axis {a}: output {} does not fit input {} in {self:?}",
                    self.output[a], self.input[a]
                )));
            }
        }
        if im2col {
            check_len("x", input_len, self.x_len())
        } else {
            check_len("cols", input_len, self.cols_len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_checks() {
        let g = Im2colGeom {
            volumes: 2,
            input: [4, 5, 6],
            output: [2, 5, 6],
            kernel: [3, 3, 1],
            stride: [2, 1, 1],
            padding: [1, 1, 0],
            dilation: [1; 3],
        };
        assert_eq!((g.x_len(), g.taps(), g.positions(), g.cols_len()), (240, 9, 60, 1080));
        assert_eq!(g.check(true, 240), Ok(()));
        assert_eq!(g.check(false, 1080), Ok(()));
        assert_eq!(g.check(true, 239), Err(KernelError::Length { name: "x", got: 239, want: 240 }));
        let bad = Im2colGeom { output: [3, 5, 6], ..g };
        assert!(matches!(bad.check(true, 240), Err(KernelError::Geometry(_))));
        let bad = Im2colGeom { stride: [0, 1, 1], ..g };
        assert!(matches!(bad.check(true, 240), Err(KernelError::Geometry(_))));
    }
}
