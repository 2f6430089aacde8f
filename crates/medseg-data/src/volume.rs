//! `Volume<T>`: a single-channel 3-D grid of voxels plus its voxel-to-world affine.
//!
//! **Axis convention.** Voxels are stored contiguously in C order over the NIfTI index axes
//! `(i, j, k)`: the linear index of voxel `(i, j, k)` is `(i * ny + j) * nz + k`, so `k` is the
//! fastest axis. A volume of NIfTI shape `(X, Y, Z)` therefore becomes the tensor `[C, X, Y, Z]` =
//! `[C, D, H, W]` exactly as MONAI's `LoadImage` + `EnsureChannelFirst` produce it.
use crate::affine::Affine;

/// NIfTI-1 voxel data types this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    /// `NIFTI_TYPE_UINT8` (2).
    U8,
    /// `NIFTI_TYPE_INT8` (256).
    I8,
    /// `NIFTI_TYPE_UINT16` (512).
    U16,
    /// `NIFTI_TYPE_INT16` (4).
    I16,
    /// `NIFTI_TYPE_UINT32` (768).
    U32,
    /// `NIFTI_TYPE_INT32` (8).
    I32,
    /// `NIFTI_TYPE_INT64` (1024), read only.
    I64,
    /// `NIFTI_TYPE_UINT64` (1280), read only.
    U64,
    /// `NIFTI_TYPE_FLOAT32` (16).
    F32,
    /// `NIFTI_TYPE_FLOAT64` (64).
    F64,
}

impl Dtype {
    /// The NIfTI `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            Dtype::U8 => 2,
            Dtype::I16 => 4,
            Dtype::I32 => 8,
            Dtype::F32 => 16,
            Dtype::F64 => 64,
            Dtype::I8 => 256,
            Dtype::U16 => 512,
            Dtype::U32 => 768,
            Dtype::I64 => 1024,
            Dtype::U64 => 1280,
        }
    }
    /// The type for a NIfTI `datatype` code.
    pub fn from_code(code: i16) -> Option<Dtype> {
        Some(match code {
            2 => Dtype::U8,
            4 => Dtype::I16,
            8 => Dtype::I32,
            16 => Dtype::F32,
            64 => Dtype::F64,
            256 => Dtype::I8,
            512 => Dtype::U16,
            768 => Dtype::U32,
            1024 => Dtype::I64,
            1280 => Dtype::U64,
            _ => return None,
        })
    }
    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }
}

/// A voxel type: converts to and from f64 and to little-endian bytes.
pub trait Voxel:
    Copy + Default + PartialEq + PartialOrd + Send + Sync + std::fmt::Debug + 'static
{
    /// The NIfTI type written for this Rust type.
    const DTYPE: Dtype;
    /// Lossless widening for integers, plain cast for floats.
    fn to_f64(self) -> f64;
    /// Exact conversion: `None` for NaN/inf into integers, out-of-range or fractional values.
    /// Float targets accept every value (NaN included).
    fn from_f64_exact(v: f64) -> Option<Self>;
    /// Appends the little-endian bytes.
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! int_voxel {
    ($t:ty, $d:expr) => {
        impl Voxel for $t {
            const DTYPE: Dtype = $d;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64_exact(v: f64) -> Option<Self> {
                if v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64 {
                    Some(v as $t)
                } else {
                    None
                }
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
int_voxel!(u8, Dtype::U8);
int_voxel!(i8, Dtype::I8);
int_voxel!(u16, Dtype::U16);
int_voxel!(i16, Dtype::I16);
int_voxel!(u32, Dtype::U32);
int_voxel!(i32, Dtype::I32);

impl Voxel for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64_exact(v: f64) -> Option<Self> {
        Some(v as f32)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Voxel for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64_exact(v: f64) -> Option<Self> {
        Some(v)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// A single-channel 3-D volume with its voxel-to-world affine. See the module docs for the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    data: Vec<T>,
    shape: [usize; 3],
    /// Voxel index `(i, j, k)` → world millimetres (RAS+), as nibabel's `img.affine`.
    pub affine: Affine,
}

impl<T: Copy> Volume<T> {
    /// Wraps `data` (C order over `(i, j, k)`); `None` when `data.len()` is not the product of `shape`.
    pub fn new(data: Vec<T>, shape: [usize; 3], affine: Affine) -> Option<Self> {
        (data.len() == shape.iter().product::<usize>()).then_some(Volume { data, shape, affine })
    }

    /// A volume filled with `value`.
    pub fn filled(shape: [usize; 3], value: T, affine: Affine) -> Self {
        Volume { data: vec![value; shape.iter().product()], shape, affine }
    }

    /// A volume whose voxel `(i, j, k)` is `f(i, j, k)`.
    pub fn from_fn(
        shape: [usize; 3],
        affine: Affine,
        mut f: impl FnMut(usize, usize, usize) -> T,
    ) -> Self {
        let mut data = Vec::with_capacity(shape.iter().product());
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                for k in 0..shape[2] {
                    data.push(f(i, j, k));
                }
            }
        }
        Volume { data, shape, affine }
    }

    /// Shape `(X, Y, Z)` in NIfTI index order.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The voxels, C order over `(i, j, k)`.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// Mutable voxels.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// Consumes the volume, returning its voxels.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    /// Linear index of `(i, j, k)`.
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        (i * self.shape[1] + j) * self.shape[2] + k
    }
    /// Voxel `(i, j, k)`; panics when out of bounds (an internal invariant, not user data).
    #[inline]
    pub fn at(&self, i: usize, j: usize, k: usize) -> T {
        self.data[self.index(i, j, k)]
    }
    /// Voxel spacing in mm (column norms of the affine).
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }
    /// nibabel axis codes of the affine, e.g. `"RAS"`.
    pub fn axcodes(&self) -> String {
        self.affine.axcodes()
    }
    /// World coordinates (mm) of voxel index `p` (may be fractional).
    pub fn world(&self, p: [f64; 3]) -> [f64; 3] {
        self.affine.apply(p)
    }
    /// Element-wise map keeping geometry.
    pub fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> Volume<U> {
        Volume {
            data: self.data.iter().map(|&v| f(v)).collect(),
            shape: self.shape,
            affine: self.affine,
        }
    }
    /// A volume with the same geometry and new data; `None` on a length mismatch.
    pub fn with_data<U: Copy>(&self, data: Vec<U>) -> Option<Volume<U>> {
        Volume::new(data, self.shape, self.affine)
    }
    /// Same shape and affines within `tol` (mm) element-wise.
    pub fn same_grid<U>(&self, other: &Volume<U>, tol: f64) -> bool {
        self.shape == other.shape && self.affine.max_abs_diff(&other.affine) <= tol
    }
}

impl<T: Voxel> Volume<T> {
    /// Converts every voxel to f32 (for images).
    pub fn to_f32(&self) -> Volume<f32> {
        self.map(|v| v.to_f64() as f32)
    }
}
