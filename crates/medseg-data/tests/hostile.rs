//! Hostile NIfTI files against the reader: each crafted header gives the expected error (or
//! warning), and the peak heap allocation while reading it stays small. A counting global
//! allocator measures the peak, so this binary holds a single test that runs the cases one after
//! another.
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use medseg_data::transforms::{RandCropByPosNegLabel, Transform};
use medseg_data::{
    Affine, Error, Limits, Sample, Volume, read_info, read_nifti, read_nifti_with, write_volume,
};
use rand::SeedableRng;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the peak heap growth (bytes) while it ran.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// A valid little-endian `.nii` of an 8×6×5 u8 ramp with an sform, as bytes.
fn base_file(dir: &Path) -> Vec<u8> {
    let p = dir.join("base.nii");
    let aff = Affine::from_diagonal([0.8, 0.8, 2.5]);
    write_volume(&p, &Volume::from_fn([8, 6, 5], aff, |i, j, k| (i + j + k) as u8)).expect("base");
    std::fs::read(&p).expect("read base")
}

fn put_i16(b: &mut [u8], off: usize, v: i16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_dims(b: &mut [u8], dims: [i16; 3]) {
    for (n, d) in dims.iter().enumerate() {
        put_i16(b, 42 + 2 * n, *d);
    }
}

fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(bytes).expect("gz");
    e.finish().expect("gz")
}

/// What a case must give.
enum Want {
    /// `Error::TooLarge` with this shape.
    TooLarge([usize; 3]),
    /// `Error::Nifti` whose reason contains the text.
    Nifti(&'static str),
    /// Success with a warning containing the text.
    Warns(&'static str),
    /// Success, voxels equal to the base file's.
    Same,
}

/// Peak heap growth allowed while reading one hostile file (the files are ≤ 200 KB).
const PEAK_LIMIT: usize = 48 << 20;

#[test]
fn hostile_headers_fail_cleanly_with_small_peak_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = base_file(dir.path());
    let good: Volume<u8> = medseg_data::read_volume(dir.path().join("base.nii")).expect("base");
    let header_only = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base[..352].to_vec();
        f(&mut b);
        b
    };
    let whole = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    // 1 MiB of zero voxels after the header, for the "claims more than it holds" gzip cases.
    let zeros_after = |b: &mut Vec<u8>| b.resize(352 + (1 << 20), 0);
    let crc_flipped = {
        let mut g = gzip(&base, 6);
        let n = g.len();
        g[n - 6] ^= 0x01; // a CRC32 byte of the trailer
        g
    };
    let isize_flipped = {
        let mut g = gzip(&base, 6);
        let n = g.len();
        g[n - 2] ^= 0x01; // an ISIZE byte
        g
    };
    let data_flipped = {
        // Level 0 stores the bytes: flipping one voxel byte decodes "fine" and only the CRC
        // tells.
        let mut g = gzip(&base, 0);
        let n = g.len();
        g[n - 8 - 20] ^= 0x40;
        g
    };
    let multi_member = {
        let mut g = gzip(&base[..400], 6);
        g.extend(gzip(&base[400..], 1));
        g
    };
    let multi_member_bad = {
        let mut second = gzip(&base[400..], 6);
        let n = second.len();
        second[n - 5] ^= 0x10;
        let mut g = gzip(&base[..400], 6);
        g.extend(second);
        g
    };
    let trailing_garbage = {
        let mut g = gzip(&base, 6);
        g.extend_from_slice(b"garbage!");
        g
    };
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "huge_dims.nii",
            whole(&|b| set_dims(b, [32767, 32767, 32767])),
            Want::TooLarge([32767, 32767, 32767]),
        ),
        (
            "huge_dims.nii.gz",
            gzip(
                &header_only(&|b| {
                    set_dims(b, [2048, 2048, 2048]);
                    b.resize(352 + (8 << 20), 0);
                }),
                6,
            ),
            Want::TooLarge([2048, 2048, 2048]),
        ),
        // Within the limits but holding far less than it claims: refused before allocating.
        (
            "claims_1000_cubed.nii",
            header_only(&|b| set_dims(b, [1000, 1000, 1000])),
            Want::Nifti("truncated"),
        ),
        // The same in gzip: buffers grow only with the bytes that arrive.
        (
            "claims_1000_cubed.nii.gz",
            gzip(
                &header_only(&|b| {
                    set_dims(b, [1000, 1000, 1000]);
                    zeros_after(b);
                }),
                6,
            ),
            Want::Nifti("truncated"),
        ),
        ("negative_dim.nii", whole(&|b| put_i16(b, 44, -6)), Want::Nifti("non-positive dimension")),
        ("zero_dim.nii", whole(&|b| put_i16(b, 46, 0)), Want::Nifti("non-positive dimension")),
        ("dim0_9.nii", whole(&|b| put_i16(b, 40, 9)), Want::Nifti("dim[0] = 9")),
        ("dim0_neg.nii", whole(&|b| put_i16(b, 40, -1)), Want::Nifti("is not in 1..=7")),
        (
            "four_d.nii",
            whole(&|b| {
                put_i16(b, 40, 4);
                put_i16(b, 48, 2);
            }),
            Want::Nifti("only 3-D scalar volumes"),
        ),
        ("nan_pixdim.nii", whole(&|b| put_f32(b, 80, f32::NAN)), Want::Nifti("pixdim[1] = NaN")),
        ("inf_pixdim.nii", whole(&|b| put_f32(b, 88, f32::INFINITY)), Want::Nifti("pixdim[3]")),
        (
            "zero_pixdim_no_sform.nii",
            whole(&|b| {
                put_f32(b, 84, 0.0);
                put_i16(b, 254, 0); // sform_code 0: the qform (and pixdim) is used
            }),
            Want::Warns("pixdim[2] is 0; 1 mm is used"),
        ),
        (
            "bad_quaternion_qform.nii",
            whole(&|b| {
                put_i16(b, 254, 0);
                put_f32(b, 256, 0.9);
                put_f32(b, 260, 0.9);
            }),
            Want::Nifti("quaternion"),
        ),
        (
            "bad_quaternion_with_sform.nii",
            whole(&|b| {
                put_f32(b, 256, 0.9);
                put_f32(b, 260, 0.9);
            }),
            Want::Warns("the qform is ignored"),
        ),
        ("truncated_header.nii", base[..200].to_vec(), Want::Nifti("shorter than the 348-byte")),
        ("truncated_data.nii", base[..base.len() - 7].to_vec(), Want::Nifti("truncated")),
        ("truncated_data.nii.gz", gzip(&base[..base.len() - 7], 6), Want::Nifti("truncated")),
        ("truncated_gzip.nii.gz", gzip(&base, 6)[..60].to_vec(), Want::Nifti("")),
        ("crc_flipped.nii.gz", crc_flipped, Want::Nifti("corrupt gzip")),
        ("isize_flipped.nii.gz", isize_flipped, Want::Nifti("corrupt gzip")),
        ("voxel_byte_flipped.nii.gz", data_flipped, Want::Nifti("corrupt gzip")),
        ("multi_member.nii.gz", multi_member, Want::Same),
        ("multi_member_bad_crc.nii.gz", multi_member_bad, Want::Nifti("corrupt gzip")),
        ("trailing_garbage.nii.gz", trailing_garbage, Want::Nifti("corrupt gzip")),
        (
            "vox_offset_beyond.nii",
            whole(&|b| put_f32(b, 108, 1.0e6)),
            Want::Nifti("vox_offset 1000000 is beyond the end"),
        ),
        (
            "vox_offset_nan.nii",
            whole(&|b| put_f32(b, 108, f32::NAN)),
            Want::Nifti("invalid vox_offset"),
        ),
        ("bad_datatype.nii", whole(&|b| put_i16(b, 70, 999)), Want::Nifti("unsupported datatype")),
        ("rgb_datatype.nii", whole(&|b| put_i16(b, 70, 128)), Want::Nifti("unsupported datatype")),
        ("bad_magic.nii", whole(&|b| b[344..348].copy_from_slice(b"xyz\0")), Want::Nifti("magic")),
    ];
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        assert!(bytes.len() < 200_000, "{name}: crafted file is {} bytes", bytes.len());
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        let (res, peak) = peak_of(|| read_nifti::<u8>(&p));
        let ok = match (want, &res) {
            (Want::TooLarge(s), Err(Error::TooLarge { path, shape, .. })) => {
                shape == s
                    && path == &p
                    && res.as_ref().is_err_and(|e| e.to_string().contains(name))
            }
            (Want::Nifti(t), Err(Error::Nifti { path, reason })) => {
                path == &p && reason.contains(t)
            }
            (Want::Warns(t), Ok((_, info))) => {
                info.warnings.iter().any(|w| w.contains(t) && w.contains(name))
            }
            (Want::Same, Ok((v, info))) => v.data() == good.data() && info.warnings.is_empty(),
            _ => false,
        };
        let shown = match &res {
            Ok((_, info)) => format!("Ok (warnings {:?})", info.warnings),
            Err(e) => format!("Err({e})"),
        };
        println!("{name:<32} peak {:>9} B  {shown}", peak);
        if !ok {
            failures.push(format!("{name}: unexpected {shown}"));
        }
        if peak > PEAK_LIMIT {
            failures.push(format!("{name}: peak allocation {peak} B > {PEAK_LIMIT} B"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The header alone is still readable for a huge claim (no allocation from it).
    let huge = dir.path().join("huge_dims.nii");
    let (info, peak) = peak_of(|| read_info(&huge));
    assert_eq!(info.expect("header").shape, [32767; 3]);
    assert!(peak < 4 << 20, "read_info peak {peak}");

    // Explicit limits: the base file (240 voxels) is refused under 100 and read under 240.
    let basep = dir.path().join("base.nii");
    let tight = Limits { max_voxels: 100, max_bytes: 1 << 20 };
    let e = read_nifti_with::<u8>(&basep, &tight).expect_err("over the limit");
    assert!(matches!(e, Error::TooLarge { voxels: 240, .. }), "{e}");
    assert!(e.to_string().contains("MEDSEG_MAX_VOXELS"), "{e}");
    let fits = Limits { max_voxels: 240, max_bytes: 240 * 4 };
    assert!(read_nifti_with::<f32>(&basep, &fits).is_ok());
    let bytes = Limits { max_voxels: 240, max_bytes: 240 * 4 - 1 };
    assert!(matches!(read_nifti_with::<f32>(&basep, &bytes), Err(Error::TooLarge { .. })));

    // A training roi of 4096³ on a small sample: a clear error naming the file, no abort.
    let img = Volume::from_fn([16, 16, 16], Affine::identity(), |i, _, _| i as f32);
    let lbl = Volume::from_fn([16, 16, 16], Affine::identity(), |i, _, _| u8::from(i > 8));
    let mut s = Sample::new(img, Some(lbl)).expect("sample");
    s.meta.image_path = Some(PathBuf::from("case_07.nii.gz"));
    let crop = RandCropByPosNegLabel {
        size: [4096; 3],
        num_samples: 2,
        pos: 1.0,
        neg: 1.0,
        image_threshold: 0.0,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (res, peak) = peak_of(|| crop.apply_multi(s, &mut rng));
    match res {
        Err(e @ Error::TooLarge { .. }) => {
            let m = e.to_string();
            assert!(m.contains("case_07.nii.gz") && m.contains("[4096, 4096, 4096]"), "{m}");
        }
        other => panic!("4096³ crop: expected TooLarge, got {:?}", other.map(|v| v.len())),
    }
    assert!(peak < 4 << 20, "4096³ crop peak {peak}");
}
