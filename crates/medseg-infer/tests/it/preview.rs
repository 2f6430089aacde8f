//! The `--preview` picture: the radiological convention from the affine (any stored
//! orientation draws the same anatomy at the same place), and the real CT of `../shared/data`
//! with its ground truth as a stand-in prediction (written to the target's tmp folder to look at).
use medseg_data::spatial::permute_flip;
use medseg_data::{Affine, Volume, read_nifti};
use medseg_infer::preview::{foreground_centre, write_preview};
use medseg_run::picture::{View, world_panel};

/// World point of the pixel of `view` that shows voxel `v`.
fn pixel_of(view: View, dims: [usize; 3], affine: &Affine, v: [usize; 3]) -> (usize, usize) {
    let centre = affine.apply(v.map(|t| t as f64));
    let (w, _, idx) = world_panel(view, dims, affine, centre, 1.0).expect("panel");
    let flat = (v[0] * dims[1] + v[1]) * dims[2] + v[2];
    let p = idx.iter().position(|&i| i == Some(flat)).expect("voxel shown");
    (p % w, p / w)
}

#[test]
fn panels_follow_world_directions_for_any_storage_order() {
    let dims = [6, 7, 8];
    let ras = Affine::from_parts([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [0.0; 3]);
    // The same space stored LPI with the slice axis first: index (a, b, c) -> world
    // (-(c), -(b), -(a)) shifted to stay on the same box.
    let lpi =
        Affine::from_parts([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]], [5.0, 6.0, 7.0]);
    // The patient's rightmost, most anterior, most superior voxel.
    let ras_v = [5, 6, 7];
    let lpi_v = [0, 0, 0];
    assert_eq!(ras.apply(ras_v.map(|t| t as f64)), lpi.apply(lpi_v.map(|t| t as f64)));
    let lpi_dims = [8, 7, 6];
    for view in View::ALL {
        let a = pixel_of(view, dims, &ras, ras_v);
        let b = pixel_of(view, lpi_dims, &lpi, lpi_v);
        assert_eq!(a, b, "{view:?}");
        // Right on the image's left (axial, coronal), anterior on the left (sagittal); the top
        // row is anterior (axial) or superior (coronal, sagittal).
        assert_eq!(a, (0, 0), "{view:?}");
    }
}

#[test]
fn the_real_ct_preview_is_centred_on_the_labels() {
    let Some(data) = medseg_testkit::shared_data_dir(env!("CARGO_MANIFEST_DIR")) else { return };
    let dir = data.join("ts-abdomen-3mm-small");
    let (ct, _): (Volume<f32>, _) = read_nifti(dir.join("ct.nii.gz")).expect("ct");
    let (seg, _): (Volume<u8>, _) = read_nifti(dir.join("seg.nii.gz")).expect("seg");
    let labels: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("labels.json")).expect("labels"))
            .expect("json");
    let names: Vec<String> =
        (0..118).map(|c| labels[c.to_string()].as_str().unwrap_or("?").to_string()).collect();
    let centre = foreground_centre(&seg).expect("foreground");
    assert!(centre.iter().zip(seg.shape()).all(|(&c, n)| c >= 0.0 && c < n as f64));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("preview_ts_abdomen.png");
    write_preview(&out, &ct, &seg, &names, "ts-abdomen-3mm-small").expect("preview");
    let bytes = std::fs::read(&out).expect("png");
    assert_eq!(&bytes[1..4], b"PNG");
    eprintln!("preview written to {}", out.display());
    // The same scan stored in another axis order (slice axis first, two axes reversed) draws
    // the same picture.
    let (perm, flip) = ([2, 0, 1], [true, false, true]);
    let (ct2, seg2) = (permute_flip(&ct, perm, flip), permute_flip(&seg, perm, flip));
    assert_ne!(ct2.axcodes(), ct.axcodes());
    let out2 = out.with_file_name("preview_ts_abdomen_reoriented.png");
    write_preview(&out2, &ct2, &seg2, &names, "ts-abdomen-3mm-small").expect("preview");
    let (a, b) = (decode(&out), decode(&out2));
    assert_eq!(a.0, b.0, "same size");
    let differ = a.1.iter().zip(&b.1).filter(|(x, y)| x != y).count();
    assert!(differ * 1000 <= a.1.len(), "{differ} of {} bytes differ", a.1.len());
}

/// `((width, height), RGB bytes)` of a PNG.
fn decode(path: &std::path::Path) -> ((u32, u32), Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("png")));
    let mut reader = dec.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    ((info.width, info.height), buf)
}

#[test]
fn an_oblique_dicom_series_is_drawn_along_world_directions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../medseg-dicom/tests/fixtures/oblique");
    let d = medseg_dicom::read_dicom(&dir, None, medseg_dicom::Limits::default()).expect("series");
    let bright = d.volume.map(|v| u8::from(v > 1000.0));
    assert!(bright.data().contains(&1));
    let names = vec!["background".to_string(), "bright".to_string()];
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("preview_oblique.png");
    write_preview(&out, &d.volume, &bright, &names, "oblique fixture").expect("preview");
    let ((w, h), px) = decode(&out);
    assert!(w > 300 && h > 100);
    // Outside the oblique slab the panels are black (no voxel), inside grey or coloured.
    let black = px.chunks(3).filter(|p| p == &[0, 0, 0]).count();
    assert!(black > 0, "an oblique slab leaves parts of the world-aligned panels empty");
}
