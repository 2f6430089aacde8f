//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`) with nibabel-identical geometry.
//!
//! The header is parsed with the `nifti` crate; voxel decoding, the Fortran → C reordering
//! (see [`crate::volume`] for the axis convention) and the writer are ours, so corrupt or truncated
//! files give an [`Error::Nifti`] naming the file instead of a panic.
//!
//! Affine precedence is nibabel's `get_best_affine`: sform when `sform_code > 0`, else qform when
//! `qform_code > 0`, else the centred pixdim ("base") affine with x flipped. Unlike nibabel, a qform
//! with negative pixdim does not fail: the absolute values are used (the sign is an encoding error).
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::affine::{Affine, qform_linear, qform_quaternion};
use crate::volume::{Dtype, Volume, Voxel};
use crate::{Error, Result};

/// Geometry and encoding facts of a NIfTI file, as found in its header.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiInfo {
    /// Spatial shape `(X, Y, Z)` (`dim[1..=3]`; 2-D files get `Z = 1`).
    pub shape: [usize; 3],
    /// The on-disk voxel type.
    pub dtype: Dtype,
    /// The best affine (see module docs).
    pub affine: Affine,
    /// `pixdim[1..=3]`.
    pub pixdim: [f64; 3],
    /// `sform_code`.
    pub sform_code: i16,
    /// `qform_code`.
    pub qform_code: i16,
    /// Effective scaling `(slope, inter)`; `(1, 0)` when the header's slope is 0 or not finite.
    pub scaling: (f64, f64),
}

/// Options for [`write_volume_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOptions {
    /// `sform_code` written (qform gets the same code); 2 = aligned anatomical, nibabel's default.
    pub xform_code: i16,
    /// gzip level 0–9 for `.gz` paths.
    pub compression: u32,
    /// Up to 79 bytes of `descrip`.
    pub description: String,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { xform_code: 2, compression: 6, description: "medseg".into() }
    }
}

const HEADER_SIZE: usize = 348;

/// Reads the whole file, decompressing `.gz`.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(3));
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::nifti(path, format!("corrupt or truncated gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<(nifti::NiftiHeader, NiftiInfo, usize)> {
    if bytes.len() < HEADER_SIZE {
        return Err(Error::nifti(
            path,
            format!("file has {} bytes, shorter than the 348-byte nifti-1 header", bytes.len()),
        ));
    }
    let first = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if first == 540 || first.swap_bytes() == 540 {
        return Err(Error::nifti(path, "nifti-2 files are not supported; convert to nifti-1"));
    }
    if first != 348 && first.swap_bytes() != 348 {
        return Err(Error::nifti(
            path,
            format!("sizeof_hdr is {first}, expected 348 (not a nifti file)"),
        ));
    }
    let h = nifti::NiftiHeader::from_reader(&bytes[..HEADER_SIZE])
        .map_err(|e| Error::nifti(path, format!("unreadable header: {e}")))?;
    match &h.magic {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(Error::nifti(
                path,
                "nifti pair (.hdr/.img) is not supported; use a single .nii",
            ));
        }
        m => return Err(Error::nifti(path, format!("bad magic {m:?}, expected \"n+1\\0\""))),
    }
    let ndim = h.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(Error::nifti(path, format!("dim[0] = {ndim} is not in 1..=7")));
    }
    let dims: Vec<usize> =
        h.dim[1..=ndim].iter().map(|&d| d as i16 as isize).map(|d| d.max(0) as usize).collect();
    if dims.contains(&0) {
        return Err(Error::nifti(
            path,
            format!("non-positive dimension in dim = {:?}", &h.dim[..=ndim]),
        ));
    }
    if dims.iter().skip(3).any(|&d| d != 1) {
        return Err(Error::nifti(
            path,
            format!("only 3-D scalar volumes are supported, got dim = {:?}", &h.dim[1..=ndim]),
        ));
    }
    let mut shape = [1usize; 3];
    for (s, &d) in shape.iter_mut().zip(&dims) {
        *s = d;
    }
    let dtype = Dtype::from_code(h.datatype)
        .ok_or_else(|| Error::nifti(path, format!("unsupported datatype code {}", h.datatype)))?;
    let off = h.vox_offset;
    if !off.is_finite() || off < 0.0 {
        return Err(Error::nifti(path, format!("invalid vox_offset {off}")));
    }
    let off = (off as usize).max(HEADER_SIZE);
    let pixdim = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
    let affine = best_affine(&h, shape, pixdim);
    if !affine.is_valid() {
        return Err(Error::nifti(path, format!("singular or non-finite affine {:?}", affine.0)));
    }
    let slope = h.scl_slope as f64;
    let inter = h.scl_inter as f64;
    let scaling = if slope == 0.0 || !slope.is_finite() {
        (1.0, 0.0)
    } else {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    };
    let info = NiftiInfo {
        shape,
        dtype,
        affine,
        pixdim,
        sform_code: h.sform_code,
        qform_code: h.qform_code,
        scaling,
    };
    Ok((h, info, off))
}

fn best_affine(h: &nifti::NiftiHeader, shape: [usize; 3], pixdim: [f64; 3]) -> Affine {
    if h.sform_code > 0 {
        let r = |row: [f32; 4]| row.map(f64::from);
        let (x, y, z) = (r(h.srow_x), r(h.srow_y), r(h.srow_z));
        Affine([x, y, z, [0.0, 0.0, 0.0, 1.0]])
    } else if h.qform_code > 0 {
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let zooms = pixdim.map(|p| if p.is_finite() && p != 0.0 { p.abs() } else { 1.0 });
        let bcd = [h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64];
        let lin = qform_linear(bcd, zooms, qfac);
        Affine::from_parts(lin, [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64])
    } else {
        // nibabel `shape_zoom_affine(shape, zooms, x_flip=True)`.
        let z = pixdim.map(|p| if p.is_finite() && p != 0.0 { p.abs() } else { 1.0 });
        let zooms = [-z[0], z[1], z[2]];
        let t: [f64; 3] = std::array::from_fn(|i| -((shape[i] as f64 - 1.0) / 2.0) * zooms[i]);
        Affine::from_parts([[zooms[0], 0.0, 0.0], [0.0, zooms[1], 0.0], [0.0, 0.0, zooms[2]]], t)
    }
}

/// Reads only the header of a NIfTI file (decompresses `.gz` fully).
pub fn read_info(path: impl AsRef<Path>) -> Result<NiftiInfo> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    Ok(parse_header(path, &bytes)?.1)
}

/// Reads a volume, converting voxels exactly into `T` (after `scl_slope`/`scl_inter`).
///
/// Integer targets reject NaN, fractional and out-of-range values with [`Error::BadVoxels`];
/// float targets accept every value.
pub fn read_volume<T: Voxel>(path: impl AsRef<Path>) -> Result<Volume<T>> {
    Ok(read_nifti(path)?.0)
}

/// Like [`read_volume`], also returning the header facts.
pub fn read_nifti<T: Voxel>(path: impl AsRef<Path>) -> Result<(Volume<T>, NiftiInfo)> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let (h, info, off) = parse_header(path, &bytes)?;
    let n: usize = info.shape.iter().product();
    let need = n.checked_mul(info.dtype.size()).and_then(|b| b.checked_add(off));
    let need =
        need.ok_or_else(|| Error::nifti(path, format!("dimensions {:?} overflow", info.shape)))?;
    if bytes.len() < need {
        return Err(Error::nifti(
            path,
            format!(
                "truncated: header promises {} voxels of {:?} at offset {off} ({need} bytes), file has {}",
                n,
                info.dtype,
                bytes.len()
            ),
        ));
    }
    let big = h.endianness == nifti::Endianness::Big;
    let raw = &bytes[off..need];
    let fortran = decode::<T>(path, raw, info.dtype, big, info.scaling, info.shape)?;
    let data = fortran_to_c(&fortran, info.shape);
    let vol = Volume::new(data, info.shape, info.affine)
        .ok_or_else(|| Error::nifti(path, "internal: decoded length mismatch"))?;
    Ok((vol, info))
}

macro_rules! decode_as {
    ($raw:expr, $t:ty, $big:expr, $f:expr) => {{
        const S: usize = std::mem::size_of::<$t>();
        let f = $f;
        $raw.chunks_exact(S)
            .enumerate()
            .map(|(idx, c)| {
                let mut b = [0u8; S];
                b.copy_from_slice(c);
                let v = if $big { <$t>::from_be_bytes(b) } else { <$t>::from_le_bytes(b) };
                f(idx, v as f64)
            })
            .collect::<std::result::Result<Vec<_>, usize>>()
    }};
}

fn decode<T: Voxel>(
    path: &Path,
    raw: &[u8],
    dtype: Dtype,
    big: bool,
    (slope, inter): (f64, f64),
    shape: [usize; 3],
) -> Result<Vec<T>> {
    let scaled = !(slope == 1.0 && inter == 0.0);
    let conv = |idx: usize, v: f64| -> std::result::Result<T, usize> {
        let v = if scaled { v * slope + inter } else { v };
        T::from_f64_exact(v).ok_or(idx)
    };
    let res = match dtype {
        Dtype::U8 => decode_as!(raw, u8, big, conv),
        Dtype::I8 => decode_as!(raw, i8, big, conv),
        Dtype::U16 => decode_as!(raw, u16, big, conv),
        Dtype::I16 => decode_as!(raw, i16, big, conv),
        Dtype::U32 => decode_as!(raw, u32, big, conv),
        Dtype::I32 => decode_as!(raw, i32, big, conv),
        Dtype::U64 => decode_as!(raw, u64, big, conv),
        Dtype::I64 => decode_as!(raw, i64, big, conv),
        Dtype::F32 => decode_as!(raw, f32, big, conv),
        Dtype::F64 => decode_as!(raw, f64, big, conv),
    };
    res.map_err(|idx| {
        // Recompute the offending value for the message (Fortran order on disk).
        let s = dtype.size();
        let c = &raw[idx * s..idx * s + s];
        let v = raw_value(c, dtype, big) * slope + inter;
        let (nx, ny) = (shape[0], shape[1]);
        let (i, j, k) = (idx % nx, (idx / nx) % ny, idx / (nx * ny));
        Error::BadVoxels {
            path: path.into(),
            reason: format!(
                "voxel ({i}, {j}, {k}) has value {v} which is not representable as {:?}",
                T::DTYPE
            ),
        }
    })
}

fn raw_value(c: &[u8], dtype: Dtype, big: bool) -> f64 {
    let mut b = [0u8; 8];
    b[..c.len()].copy_from_slice(c);
    if big {
        b[..c.len()].reverse();
    }
    match dtype {
        Dtype::U8 => b[0] as f64,
        Dtype::I8 => b[0] as i8 as f64,
        Dtype::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
        Dtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
        Dtype::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        Dtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        Dtype::U64 => u64::from_le_bytes(b) as f64,
        Dtype::I64 => i64::from_le_bytes(b) as f64,
        Dtype::F64 => f64::from_le_bytes(b),
    }
}

const TILE: usize = 32;

/// Fortran order (i fastest) → C order (k fastest), tiled over the (i, k) planes.
pub(crate) fn fortran_to_c<T: Copy + Default>(src: &[T], [nx, ny, nz]: [usize; 3]) -> Vec<T> {
    let mut dst = vec![T::default(); src.len()];
    for j in 0..ny {
        for k0 in (0..nz).step_by(TILE) {
            for i0 in (0..nx).step_by(TILE) {
                for k in k0..(k0 + TILE).min(nz) {
                    let sbase = (k * ny + j) * nx;
                    for i in i0..(i0 + TILE).min(nx) {
                        dst[(i * ny + j) * nz + k] = src[sbase + i];
                    }
                }
            }
        }
    }
    dst
}

/// C order (k fastest) → Fortran order (i fastest).
pub(crate) fn c_to_fortran<T: Copy + Default>(src: &[T], [nx, ny, nz]: [usize; 3]) -> Vec<T> {
    let mut dst = vec![T::default(); src.len()];
    for j in 0..ny {
        for i0 in (0..nx).step_by(TILE) {
            for k0 in (0..nz).step_by(TILE) {
                for i in i0..(i0 + TILE).min(nx) {
                    let sbase = (i * ny + j) * nz;
                    for k in k0..(k0 + TILE).min(nz) {
                        dst[(k * ny + j) * nx + i] = src[sbase + k];
                    }
                }
            }
        }
    }
    dst
}

/// Writes `vol` as NIfTI-1 (gzip when the path ends in `.gz`) with default [`WriteOptions`].
pub fn write_volume<T: Voxel>(path: impl AsRef<Path>, vol: &Volume<T>) -> Result<()> {
    write_volume_with(path, vol, &WriteOptions::default())
}

/// Writes `vol` atomically (temporary file in the same directory, then rename).
///
/// Both sform (exact, f32) and qform (the closest rotation, shears stripped) are written with
/// `opts.xform_code`, `scl_slope = 1`, `scl_inter = 0`, `xyzt_units = mm`.
pub fn write_volume_with<T: Voxel>(
    path: impl AsRef<Path>,
    vol: &Volume<T>,
    opts: &WriteOptions,
) -> Result<()> {
    let path = path.as_ref();
    let shape = vol.shape();
    if shape.iter().any(|&d| d == 0 || d > i16::MAX as usize) {
        return Err(Error::nifti(
            path,
            format!("cannot write shape {shape:?}: dims must be in 1..=32767"),
        ));
    }
    if !vol.affine.is_valid() {
        return Err(Error::nifti(path, format!("cannot write singular affine {:?}", vol.affine.0)));
    }
    let mut buf = Vec::with_capacity(352 + vol.len() * T::DTYPE.size());
    buf.extend_from_slice(&header_bytes::<T>(vol, opts));
    buf.extend_from_slice(&[0u8; 4]); // no extensions
    for v in c_to_fortran(vol.data(), shape) {
        v.put_le(&mut buf);
    }
    let gz = path.extension().is_some_and(|e| e == "gz");
    atomic_write(path, |f| {
        if gz {
            let mut enc = GzEncoder::new(f, flate2::Compression::new(opts.compression.min(9)));
            enc.write_all(&buf)?;
            enc.finish()?.flush()
        } else {
            f.write_all(&buf)
        }
    })
}

/// Writes a file atomically: a temporary file in the same directory, then a rename.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".medseg-tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

fn header_bytes<T: Voxel>(vol: &Volume<T>, opts: &WriteOptions) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    let put =
        |h: &mut [u8; HEADER_SIZE], off: usize, b: &[u8]| h[off..off + b.len()].copy_from_slice(b);
    let shape = vol.shape();
    let a = &vol.affine;
    let lin = a.linear();
    let t = a.translation_part();
    let (bcd, qfac, zooms) = qform_quaternion(&lin).unwrap_or(([0.0; 3], 1.0, a.spacing()));
    put(&mut h, 0, &348i32.to_le_bytes());
    h[38] = b'r';
    let dim: [i16; 8] = [3, shape[0] as i16, shape[1] as i16, shape[2] as i16, 1, 1, 1, 1];
    for (n, d) in dim.iter().enumerate() {
        put(&mut h, 40 + 2 * n, &d.to_le_bytes());
    }
    put(&mut h, 70, &T::DTYPE.code().to_le_bytes());
    put(&mut h, 72, &((T::DTYPE.size() * 8) as i16).to_le_bytes());
    let pixdim: [f32; 8] =
        [qfac as f32, zooms[0] as f32, zooms[1] as f32, zooms[2] as f32, 1.0, 1.0, 1.0, 1.0];
    for (n, p) in pixdim.iter().enumerate() {
        put(&mut h, 76 + 4 * n, &p.to_le_bytes());
    }
    put(&mut h, 108, &352f32.to_le_bytes());
    put(&mut h, 112, &1f32.to_le_bytes());
    put(&mut h, 116, &0f32.to_le_bytes());
    h[123] = 2 | 8; // mm, seconds
    let d = opts.description.as_bytes();
    put(&mut h, 148, &d[..d.len().min(79)]);
    put(&mut h, 252, &opts.xform_code.to_le_bytes());
    put(&mut h, 254, &opts.xform_code.to_le_bytes());
    for (n, q) in bcd.iter().chain(t.iter()).enumerate() {
        put(&mut h, 256 + 4 * n, &(*q as f32).to_le_bytes());
    }
    for r in 0..3 {
        for c in 0..4 {
            put(&mut h, 280 + 16 * r + 4 * c, &(a.0[r][c] as f32).to_le_bytes());
        }
    }
    put(&mut h, 344, b"n+1\0");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_roundtrip() {
        let shape = [37, 5, 70];
        let src: Vec<u32> = (0..(37 * 5 * 70) as u32).collect();
        let c = fortran_to_c(&src, shape);
        // voxel (i, j, k) at Fortran index i + nx*(j + ny*k)
        assert_eq!(c[(3 * 5 + 2) * 70 + 9], 3 + 37 * (2 + 5 * 9));
        assert_eq!(c_to_fortran(&c, shape), src);
    }
}
