//! The accumulating API, channel input, report formats and grouped reports.
use medseg_metrics::{Binarize, GroupTable, Metric, MetricsConfig, SegmentationMetric};

/// Deterministic label map with a few boxes of classes `1..num_classes`.
fn boxes(dims: [usize; 3], num_classes: usize, shift: usize) -> Vec<u8> {
    let [n0, n1, n2] = dims;
    let mut v = vec![0u8; n0 * n1 * n2];
    for c in 1..num_classes {
        let o = [(c * 3 + shift) % (n0 - 6), (c * 5) % (n1 - 7), (c * 7 + shift) % (n2 - 5)];
        for i0 in o[0]..o[0] + 5 {
            for i1 in o[1]..o[1] + 6 {
                for i2 in o[2]..o[2] + 4 {
                    v[(i0 * n1 + i1) * n2 + i2] = c as u8;
                }
            }
        }
    }
    v
}

fn one_hot(labels: &[u8], c: usize) -> Vec<f32> {
    let n = labels.len();
    let mut out = vec![0.0; c * n];
    for (i, &l) in labels.iter().enumerate() {
        out[usize::from(l) * n + i] = 1.0;
    }
    out
}

#[test]
fn update_compute_reset() {
    let dims = [20, 24, 18];
    let mut m = SegmentationMetric::new(MetricsConfig::new(4, 1.0)).expect("config");
    m.update(&boxes(dims, 4, 1), &boxes(dims, 4, 0), dims, [1.0, 1.0, 2.0]).expect("case 0");
    m.update(&boxes(dims, 4, 0), &boxes(dims, 4, 0), dims, [1.0, 1.0, 2.0]).expect("case 1");
    let r = m.compute();
    assert_eq!(r.cases.len(), 2);
    assert_eq!(r.classes, vec![1, 2, 3]);
    // The identical case scores perfectly.
    for c in &r.cases[1].classes {
        let s = c.surface.expect("distances on");
        assert_eq!((c.dice, s.hd, s.hd95, s.assd, s.nsd), (1.0, 0.0, 0.0, 0.0, 1.0));
    }
    m.reset();
    assert!(m.compute().cases.is_empty());
    assert_eq!(m.compute().mean[0].not_nans, 0);
}

#[test]
fn u16_labels_and_channel_input_agree_with_u8() {
    let dims = [16, 20, 22];
    let (p, g) = (boxes(dims, 5, 2), boxes(dims, 5, 0));
    let spacing = [0.8, 1.7, 1.1];
    let mut cfg = MetricsConfig::new(5, 1.5);
    cfg.include_background = true;
    let mut m = SegmentationMetric::new(cfg).expect("config");
    let a = m.update(&p, &g, dims, spacing).expect("u8").classes.clone();
    let (p16, g16): (Vec<u16>, Vec<u16>) =
        (p.iter().map(|&x| u16::from(x)).collect(), g.iter().map(|&x| u16::from(x)).collect());
    let b = m.update(&p16, &g16, dims, spacing).expect("u16").classes.clone();
    let (ph, gh) = (one_hot(&p, 5), one_hot(&g, 5));
    let c = m
        .update_channels("t", &ph, &gh, dims, spacing, Binarize::Threshold(0.5))
        .expect("thr")
        .classes
        .clone();
    let d = m
        .update_channels("a", &ph, &gh, dims, spacing, Binarize::Argmax)
        .expect("argmax")
        .classes
        .clone();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
    assert_eq!(a[0].class, 0, "background included");
}

#[test]
fn axis_permutation_with_spacing_is_invariant() {
    let dims = [14, 18, 22];
    let (p, g) = (boxes(dims, 3, 1), boxes(dims, 3, 0));
    let spacing = [0.6, 1.3, 2.9];
    let m = SegmentationMetric::new(MetricsConfig::new(3, 2.0)).expect("config");
    let a = m.score_labels("a", &p, &g, dims, spacing).expect("a");
    // Transpose [n0, n1, n2] -> [n2, n1, n0] together with the spacing.
    let t = |v: &[u8]| -> Vec<u8> {
        let mut out = vec![0u8; v.len()];
        for i0 in 0..dims[0] {
            for i1 in 0..dims[1] {
                for i2 in 0..dims[2] {
                    out[(i2 * dims[1] + i1) * dims[0] + i0] = v[(i0 * dims[1] + i1) * dims[2] + i2];
                }
            }
        }
        out
    };
    let b = m
        .score_labels(
            "b",
            &t(&p),
            &t(&g),
            [dims[2], dims[1], dims[0]],
            [spacing[2], spacing[1], spacing[0]],
        )
        .expect("b");
    for (x, y) in a.classes.iter().zip(&b.classes) {
        let (sx, sy) = (x.surface.expect("on"), y.surface.expect("on"));
        assert_eq!(x.dice, y.dice);
        assert!((sx.hd - sy.hd).abs() < 1e-5 && (sx.hd95 - sy.hd95).abs() < 1e-5);
        assert!((sx.assd - sy.assd).abs() < 1e-5 && sx.nsd == sy.nsd);
    }
}

#[test]
fn dice_only_mode_skips_distances() {
    let dims = [10, 10, 10];
    let mut cfg = MetricsConfig::new(4, 1.0);
    cfg.distances = false;
    let mut m = SegmentationMetric::new(cfg).expect("config");
    let c = m.update(&boxes(dims, 4, 1), &boxes(dims, 4, 0), dims, [1.0; 3]).expect("case");
    assert!(c.classes.iter().all(|c| c.surface.is_none()));
    assert_eq!(m.compute().metrics, vec![Metric::Dice, Metric::Iou]);
}

#[test]
fn report_formats() {
    let dims = [20, 24, 18];
    let mut m = SegmentationMetric::new(MetricsConfig::new(4, 1.0)).expect("config");
    let mut gt = boxes(dims, 4, 0);
    gt.iter_mut().filter(|x| **x == 2).for_each(|x| *x = 0); // class 2 absent: NaN Dice, inf HD
    m.update_named("a,b", &boxes(dims, 4, 1), &gt, dims, [1.0; 3]).expect("case");
    let names: Vec<String> = ["bg", "liver", "spleen", "aorta"].map(String::from).to_vec();
    let r = m.compute().with_class_names(&names);
    let md = r.to_markdown();
    assert!(md.starts_with("| class | name | dice | iou | hd | hd95 | assd | nsd |"), "{md}");
    assert!(md.contains("| 2 | spleen | n/a |"), "{md}");
    assert!(md.contains("**mean**"));
    let csv = r.to_csv();
    assert_eq!(csv.lines().count(), 1 + 3);
    assert!(csv.lines().nth(2).expect("row").starts_with("\"a,b\",2,spleen,0,"), "{csv}");
    assert!(csv.contains(",nan,") && csv.contains(",inf,"), "{csv}");
    let json = r.to_json();
    let text = serde_json::to_string(&json).expect("serialises");
    let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(back["cases"][0]["classes"][1]["hd"], "inf");
    assert_eq!(back["per_class"][0]["name"], "liver");
    assert_eq!(back["config"]["num_classes"], 4);
}

#[test]
fn grouped_report_uses_monai_mean_per_group() {
    let dims = [24, 24, 24];
    let mut m = SegmentationMetric::new(MetricsConfig::new(118, 3.0)).expect("config");
    // Classes 1 (organs), 26 (vertebrae), 52 (vessels) and 93 (ribs), each a box; muscles absent.
    let mut gt = vec![0u8; 24 * 24 * 24];
    let mut pred = gt.clone();
    for (k, c) in [1u8, 26, 52, 93].into_iter().enumerate() {
        for i0 in 2..8 {
            for i1 in 5 * k..5 * k + 4 {
                for i2 in 3..9 {
                    gt[(i0 * 24 + i1) * 24 + i2] = c;
                    pred[((i0 + usize::from(c == 1)) * 24 + i1) * 24 + i2] = c;
                }
            }
        }
    }
    m.update(&pred, &gt, dims, [1.0; 3]).expect("case");
    let table = GroupTable::totalsegmentator_v2();
    let report = m.compute().with_class_names(&table.labels);
    let g = table.group(&report);
    let names: Vec<&str> = g.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["organs", "vertebrae", "muscles", "ribs", "vessels"]);
    let dice = |r: &medseg_metrics::GroupRow| r.values[0];
    let organ = report.cases[0].classes[0].dice;
    assert!((dice(&g.rows[0]).value - organ).abs() < 1e-12);
    assert_eq!(dice(&g.rows[1]).value, 1.0);
    assert_eq!(dice(&g.rows[2]).not_nans, 0, "no muscle in the GT");
    assert!((dice(&g.overall).value - (organ + 3.0) / 4.0).abs() < 1e-12);
    let md = g.to_markdown();
    assert!(md.contains("| muscles | 23 | n/a |"), "{md}");
    assert!(md.contains("| vertebrae | 26 | 100.00 |"), "{md}");
    assert_eq!(g.to_csv().lines().count(), 7);
    assert_eq!(g.to_json()["groups"][3]["name"], "ribs");
    assert_eq!(report.per_class[0].name, "spleen");
}

#[test]
fn btcv_grouping() {
    let dims = [12, 12, 12];
    let mut m = SegmentationMetric::new(MetricsConfig::new(14, 1.0)).expect("config");
    let gt = boxes(dims, 14, 0);
    m.update(&gt, &gt, dims, [1.0; 3]).expect("case");
    let g = GroupTable::btcv().group(&m.compute());
    assert_eq!(g.rows.len(), 1);
    assert_eq!(g.rows[0].classes, 13);
    assert_eq!(g.rows[0].values[0].value, 1.0);
}
