//! Mutation fuzzing of the NIfTI reader: corrupted headers, truncations and byte flips of real
//! files (and of their gzip streams) must give `Err`, never a panic or an abort.
//! `cargo xtask test --slow` (`MEDSEG_SLOW_TESTS=1`) runs 102,000 inputs instead of 600.
use std::collections::BTreeMap;

use medseg_data::{Error, Volume, read_volume};
use rand::{Rng, SeedableRng};

use crate::common::golden_dir;

/// Header fields worth hitting (offset, width): sizeof_hdr, dim, datatype, bitpix, pixdim,
/// vox_offset, scl_slope/inter, qform/sform codes, quaternion, srow, magic.
const FIELDS: [(usize, usize); 12] = [
    (0, 4),
    (40, 16),
    (70, 2),
    (72, 2),
    (76, 32),
    (108, 4),
    (112, 8),
    (252, 4),
    (256, 24),
    (280, 48),
    (344, 4),
    (348, 4),
];

#[test]
fn mutated_nifti_files_never_panic() {
    let slow = std::env::var("MEDSEG_SLOW_TESTS").is_ok_and(|v| v == "1");
    let per_seed = if slow { 34_000 } else { 200 };
    let dir = tempfile::tempdir().expect("tmp");
    let mut seeds = Vec::new();
    for name in ["i8.nii", "qform_only_f32.nii", "bigendian_i16.nii"] {
        seeds.push(std::fs::read(golden_dir().join("nifti").join(name)).expect("seed"));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    let (mut ran, mut ok) = (0usize, 0usize);
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in &seeds {
        for n in 0..per_seed {
            let mut b = seed.clone();
            match n % 4 {
                0 => {
                    // Random bytes in one header field.
                    let (off, w) = FIELDS[rng.random_range(0..FIELDS.len())];
                    for x in &mut b[off..off + w] {
                        *x = rng.random();
                    }
                }
                1 => {
                    // Interesting values in a field (0, -1, max, NaN patterns).
                    let (off, w) = FIELDS[rng.random_range(0..FIELDS.len())];
                    let v: [u8; 4] =
                        [[0, 0, 0, 0], [0xff; 4], [0xff, 0xff, 0xff, 0x7f], [0, 0, 0xc0, 0x7f]]
                            [rng.random_range(0..4)];
                    for (i, x) in b[off..off + w].iter_mut().enumerate() {
                        *x = v[i % 4];
                    }
                }
                2 => {
                    let cut = rng.random_range(0..b.len());
                    b.truncate(cut);
                }
                _ => {
                    for _ in 0..rng.random_range(1..8) {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            // Every third input is gzipped; every fifth gzip stream also gets a flipped byte
            // (header, deflate data or the CRC32/ISIZE trailer).
            let gz = n % 3 == 0;
            let p = dir.path().join(if gz { "f.nii.gz" } else { "f.nii" });
            let bytes = if gz {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut e, &b).expect("gz");
                let mut g = e.finish().expect("gz");
                if n % 5 == 0 {
                    let i = rng.random_range(0..g.len());
                    g[i] ^= 1 << rng.random_range(0..8);
                }
                g
            } else {
                b
            };
            std::fs::write(&p, bytes).expect("write");
            ran += 1;
            let kind = match read_volume::<f32>(&p) {
                Ok(_) => {
                    ok += 1;
                    "ok"
                }
                Err(Error::Nifti { .. }) => "nifti",
                Err(Error::TooLarge { .. }) => "too large",
                Err(Error::BadVoxels { .. }) => "bad voxels",
                Err(Error::OutOfMemory { .. }) => "out of memory",
                Err(_) => "other",
            };
            *kinds.entry(kind).or_default() += 1;
            let _ = read_volume::<u8>(&p).map(|v: Volume<u8>| v.len());
        }
    }
    println!("fuzz: {ran} mutated inputs, {ok} still readable, 0 panics; outcomes {kinds:?}");
    assert_eq!(ran, seeds.len() * per_seed);
}
