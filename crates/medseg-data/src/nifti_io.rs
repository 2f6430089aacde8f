//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`) with nibabel-identical geometry.
//!
//! The header is parsed with the `nifti` crate; voxel decoding, the Fortran → C reordering
//! (see [`crate::volume`] for the axis convention) and the writer are ours, so corrupt or truncated
//! files give an [`Error::Nifti`] naming the file instead of a panic. Volumes above the size
//! [`Limits`] are an [`Error::TooLarge`]; buffers grow only with the data actually read, and every
//! `.nii.gz` is read to its end so each gzip member's CRC32 and length are verified (see
//! [`read_nifti_with`]).
//!
//! Affine precedence is nibabel's `get_best_affine`: sform when `sform_code > 0`, else qform when
//! `qform_code > 0`, else the centred pixdim ("base") affine with x flipped. Unlike nibabel, a qform
//! with negative pixdim does not fail: the absolute values are used (the sign is an encoding error).
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use rayon::prelude::*;

use crate::affine::{Affine, qform_linear, qform_quaternion};
use crate::limits::{Limits, try_filled};
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
    /// Header oddities that were repaired rather than refused (a zero or negative `pixdim`, a
    /// non-unit qform quaternion that the sform overrides), one sentence each naming the file.
    /// Libraries do not print: binaries print these as `warning: …` lines.
    pub warnings: Vec<String>,
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

/// An open NIfTI byte stream.
struct Stream {
    r: Box<dyn Read>,
    /// gzip (detected by its magic bytes): every member's CRC32 and ISIZE are checked when the
    /// stream is read to its end.
    gz: bool,
    /// Length of an uncompressed file (the bytes present are known before reading them).
    len: Option<u64>,
}

/// Opens a NIfTI file as a byte stream, decompressing gzip (detected by its magic bytes).
fn open_stream(path: &Path) -> Result<Stream> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let gz = {
        let buf = std::io::BufRead::fill_buf(&mut r).map_err(|e| Error::io(path, e))?;
        buf.len() >= 2 && buf[0] == 0x1f && buf[1] == 0x8b
    };
    Ok(if gz {
        Stream { r: Box::new(MultiGzDecoder::new(r)), gz, len: None }
    } else {
        Stream { r: Box::new(r), gz, len: Some(len) }
    })
}

/// Reads as many bytes as possible into `buf` (short only at end of stream).
fn read_full(path: &Path, r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::nifti(path, format!("corrupt or truncated stream: {e}"))),
        }
    }
    Ok(n)
}

/// Reads the header and skips to the voxel data; returns the header, its facts and `vox_offset`.
fn read_header(path: &Path, r: &mut dyn Read) -> Result<(nifti::NiftiHeader, NiftiInfo, usize)> {
    let mut hdr = [0u8; HEADER_SIZE];
    let n = read_full(path, r, &mut hdr)?;
    let (h, info, off) = parse_header(path, &hdr[..n])?;
    let skip = (off - HEADER_SIZE) as u64;
    let skipped = std::io::copy(&mut r.take(skip), &mut std::io::sink())
        .map_err(|e| Error::nifti(path, format!("corrupt or truncated stream: {e}")))?;
    if skipped != skip {
        return Err(Error::nifti(
            path,
            format!(
                "vox_offset {off} is beyond the end of the data ({} bytes)",
                HEADER_SIZE as u64 + skipped
            ),
        ));
    }
    Ok((h, info, off))
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
    match &bytes[344..348] {
        b"n+1\0" => {}
        b"ni1\0" => {
            return Err(Error::nifti(
                path,
                "nifti pair (.hdr/.img) is not supported; use a single .nii",
            ));
        }
        m => return Err(Error::nifti(path, format!("bad magic {m:?}, expected \"n+1\\0\""))),
    }
    // dim[0] in the byte order of sizeof_hdr (the nifti crate guesses the order from dim[0]).
    let dim0 = if first == 348 {
        i16::from_le_bytes([bytes[40], bytes[41]])
    } else {
        i16::from_be_bytes([bytes[40], bytes[41]])
    };
    if !(1..=7).contains(&dim0) {
        return Err(Error::nifti(path, format!("dim[0] = {dim0} is not in 1..=7")));
    }
    let h = nifti::NiftiHeader::from_reader(&bytes[..HEADER_SIZE])
        .map_err(|e| Error::nifti(path, format!("unreadable header: {e}")))?;
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
    // Saturating cast; a huge offset fails as "beyond the end of the data".
    let off = (off as usize).max(HEADER_SIZE);
    let pixdim = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
    let mut warnings = Vec::new();
    let from_pixdim = h.sform_code <= 0;
    for (a, &p) in pixdim.iter().enumerate().take(ndim.min(3)) {
        if !p.is_finite() {
            return Err(Error::nifti(
                path,
                format!("pixdim[{}] = {p} is not a finite voxel size", a + 1),
            ));
        }
        if p == 0.0 {
            warnings.push(format!(
                "{}: pixdim[{}] is 0{}",
                path.display(),
                a + 1,
                if from_pixdim {
                    "; 1 mm is used (as nibabel does)"
                } else {
                    " (the sform is used)"
                }
            ));
        } else if p < 0.0 && from_pixdim {
            warnings.push(format!(
                "{}: pixdim[{}] = {p} is negative; its absolute value is used",
                path.display(),
                a + 1
            ));
        }
    }
    if h.qform_code > 0 {
        let [b, c, d] = [h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64];
        let norm2 = b * b + c * c + d * d;
        // nibabel's `quaternion_threshold`: 1 - (b² + c² + d²) may be below 0 by 3 f32 epsilons.
        if !norm2.is_finite() || 1.0 - norm2 < -3.0 * f64::from(f32::EPSILON) {
            let what = format!(
                "qform quaternion (b, c, d) = ({b}, {c}, {d}) has b² + c² + d² = {norm2} > 1"
            );
            if h.sform_code <= 0 {
                return Err(Error::nifti(
                    path,
                    format!("{what}: not a rotation (nibabel refuses it too)"),
                ));
            }
            warnings.push(format!(
                "{}: {what}; the qform is ignored (the sform is used)",
                path.display()
            ));
        }
    }
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
        warnings,
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

/// Reads only the header of a NIfTI file (no size limit applies and, for `.nii.gz`, only the
/// start of the stream is decompressed, so the gzip checksum is not verified).
pub fn read_info(path: impl AsRef<Path>) -> Result<NiftiInfo> {
    let path = path.as_ref();
    let mut s = open_stream(path)?;
    Ok(read_header(path, &mut s.r)?.1)
}

/// Reads a volume, converting voxels exactly into `T` (after `scl_slope`/`scl_inter`), under the
/// process's size [`Limits`] (defaults, or `MEDSEG_MAX_VOXELS` / `MEDSEG_MAX_BYTES`).
///
/// Integer targets reject NaN, fractional and out-of-range values with [`Error::BadVoxels`];
/// float targets accept every value.
pub fn read_volume<T: Voxel>(path: impl AsRef<Path>) -> Result<Volume<T>> {
    Ok(read_nifti(path)?.0)
}

/// Like [`read_volume`], also returning the header facts (including [`NiftiInfo::warnings`]).
pub fn read_nifti<T: Voxel>(path: impl AsRef<Path>) -> Result<(Volume<T>, NiftiInfo)> {
    read_nifti_with(path, &Limits::process()?)
}

/// [`read_nifti`] with explicit size limits.
///
/// Guarantees (each failure is an error naming the file, never an abort):
/// - a volume above `limits` is an [`Error::TooLarge`] before any voxel buffer is allocated;
/// - memory grows with the data actually present: an uncompressed file's length is checked
///   against the header before the output is allocated; a gzip stream is read block by block into
///   buffers that grow as bytes arrive, and the output is allocated only once all of the voxel data
///   has arrived (peak memory: the raw data plus the output);
/// - every allocation is reserved with `try_reserve_exact` ([`Error::OutOfMemory`] on failure);
/// - a `.nii.gz` is decompressed to its end, so the CRC32 and length of every gzip member are
///   verified (a mismatch is an [`Error::Nifti`]).
pub fn read_nifti_with<T: Voxel>(
    path: impl AsRef<Path>,
    limits: &Limits,
) -> Result<(Volume<T>, NiftiInfo)> {
    let path = path.as_ref();
    let mut s = open_stream(path)?;
    let (h, info, off) = read_header(path, &mut s.r)?;
    let size = info.dtype.size();
    let n = limits.check(path, "volume", info.shape, size.max(std::mem::size_of::<T>()))?;
    let [nx, ny, nz] = info.shape;
    let big = h.endianness == nifti::Endianness::Big;
    let slab = nx * ny * size; // bytes of one k-plane (≤ max_bytes, checked above)
    let total = n * size;
    let truncated = |have: u64| {
        Error::nifti(
            path,
            format!(
                "truncated: header promises {n} voxels of {:?} ({total} bytes) after vox_offset {off}, the data has {have} bytes",
                info.dtype
            ),
        )
    };
    // An uncompressed file proves its length up front: stream it through one block buffer into
    // the output. A gzip stream proves nothing until it has been read.
    let mut data: Option<Vec<T>> = match s.len {
        Some(len) => {
            let have = len.saturating_sub(off as u64);
            if have < total as u64 {
                return Err(truncated(have));
            }
            Some(try_filled(path, "volume", n, T::default())?)
        }
        None => None,
    };
    let mut pending: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut reuse: Vec<u8> = Vec::new();
    let mut k0 = 0;
    let mut have = 0u64;
    while k0 < nz {
        let kb = TILE.min(nz - k0);
        let want = slab * kb;
        let mut buf = std::mem::take(&mut reuse);
        read_growing(path, &mut s.r, &mut buf, want)?;
        have += buf.len() as u64;
        if buf.len() < want {
            return Err(truncated(have));
        }
        match &mut data {
            Some(out) => {
                decode_block(path, &buf, &info, big, k0, kb, out)?;
                reuse = buf;
            }
            None => pending.push((k0, buf)),
        }
        k0 += kb;
    }
    if s.gz {
        // Read to the end: flate2 checks each member's CRC32 and ISIZE only there.
        std::io::copy(&mut s.r, &mut std::io::sink()).map_err(|e| {
            Error::nifti(path, format!("corrupt gzip stream (checked after the voxel data): {e}"))
        })?;
    }
    let data = match data {
        Some(d) => d,
        None => {
            let mut out = try_filled(path, "volume", n, T::default())?;
            for (k0, buf) in pending {
                let kb = buf.len() / slab;
                decode_block(path, &buf, &info, big, k0, kb, &mut out)?;
            }
            out
        }
    };
    let vol = Volume::new(data, info.shape, info.affine)
        .ok_or_else(|| Error::nifti(path, "internal: decoded length mismatch"))?;
    Ok((vol, info))
}

/// Reads up to `want` bytes into `buf` (cleared first), growing it only as bytes arrive (doubling
/// from 1 MiB, never past `want`, each step reserved with `try_reserve_exact`). Short only at the
/// end of the stream.
fn read_growing(path: &Path, r: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> Result<()> {
    buf.clear();
    while buf.len() < want {
        if buf.len() == buf.capacity() {
            let extra = (want - buf.len()).min(buf.len().max(1 << 20));
            buf.try_reserve_exact(extra).map_err(|_| Error::OutOfMemory {
                path: path.into(),
                what: "voxel data",
                bytes: (buf.len() + extra) as u64,
            })?;
        }
        let start = buf.len();
        let end = buf.capacity().min(want);
        buf.resize(end, 0);
        let got = read_full(path, r, &mut buf[start..end])?;
        buf.truncate(start + got);
        if got < end - start {
            break;
        }
    }
    Ok(())
}

/// Converts `kb` k-planes (Fortran order, starting at plane `k0`) into `out` (C order), in parallel
/// over slabs of `TILE` i-planes.
fn decode_block<T: Voxel>(
    path: &Path,
    raw: &[u8],
    info: &NiftiInfo,
    big: bool,
    k0: usize,
    kb: usize,
    out: &mut [T],
) -> Result<()> {
    macro_rules! go {
        ($t:ty) => {{
            const S: usize = std::mem::size_of::<$t>();
            let get = |b: &[u8]| -> f64 {
                let mut a = [0u8; S];
                a.copy_from_slice(b);
                (if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
            };
            decode_block_with::<T, S>(raw, info, k0, kb, out, get)
        }};
    }
    let res = match info.dtype {
        Dtype::U8 => go!(u8),
        Dtype::I8 => go!(i8),
        Dtype::U16 => go!(u16),
        Dtype::I16 => go!(i16),
        Dtype::U32 => go!(u32),
        Dtype::I32 => go!(i32),
        Dtype::U64 => go!(u64),
        Dtype::I64 => go!(i64),
        Dtype::F32 => go!(f32),
        Dtype::F64 => go!(f64),
    };
    res.map_err(|(i, j, k, v)| Error::BadVoxels {
        path: path.into(),
        reason: format!(
            "voxel ({i}, {j}, {k}) has value {v} which is not representable as {:?}",
            T::DTYPE
        ),
    })
}

type BadVoxel = (usize, usize, usize, f64);

fn decode_block_with<T: Voxel, const S: usize>(
    raw: &[u8],
    info: &NiftiInfo,
    k0: usize,
    kb: usize,
    out: &mut [T],
    get: impl Fn(&[u8]) -> f64 + Sync,
) -> std::result::Result<(), BadVoxel> {
    let [nx, ny, nz] = info.shape;
    let plane = ny * nz;
    let (slope, inter) = info.scaling;
    let scaled = !(slope == 1.0 && inter == 0.0);
    out.par_chunks_mut(TILE * plane).enumerate().try_for_each(|(t, slab)| {
        let i0 = t * TILE;
        let w = slab.len() / plane;
        for kk in 0..kb {
            for j in 0..ny {
                let row = ((kk * ny + j) * nx + i0) * S;
                let src = &raw[row..row + w * S];
                for (ii, b) in src.chunks_exact(S).enumerate() {
                    let mut v = get(b);
                    if scaled {
                        v = v * slope + inter;
                    }
                    slab[ii * plane + j * nz + k0 + kk] =
                        T::from_f64_exact(v).ok_or((i0 + ii, j, k0 + kk, v))?;
                }
            }
        }
        Ok(())
    })
}

const TILE: usize = 32;

/// Fortran order (i fastest) → C order (k fastest) (test helper; reading uses `decode_block`).
#[cfg(test)]
pub(crate) fn fortran_to_c<T: Copy + Default>(src: &[T], [nx, ny, nz]: [usize; 3]) -> Vec<T> {
    let mut dst = vec![T::default(); src.len()];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                dst[(i * ny + j) * nz + k] = src[(k * ny + j) * nx + i];
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
    let mut buf = crate::limits::try_with_capacity(
        path,
        "encoded volume",
        352 + vol.len() * T::DTYPE.size(),
    )?;
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
    // tempfile creates 0600 files; outputs are ordinary data files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
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
