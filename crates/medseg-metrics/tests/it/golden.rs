//! Every per-class value and reduction of the MONAI 1.6.1 goldens: Dice/IoU to 1e-6, distances
//! to 1e-4, with NaN and inf reproduced exactly.
use medseg_metrics::{Metric, MetricsConfig, SegmentationMetric};
use serde_json::Value;

use crate::common::{assert_all_close, dims3, golden_json, golden_volumes, num, spacing3};

const DICE_TOL: f64 = 1e-6;
const DIST_TOL: f64 = 1e-4;

fn run(case: &Value, tweak: impl Fn(&mut MetricsConfig)) -> Vec<medseg_metrics::ClassScores> {
    let dims = dims3(&case["dims"]);
    let spacing = spacing3(&case["spacing"]);
    let n: usize = dims.iter().product();
    let name = case["name"].as_str().expect("name");
    let (pred, gt) = golden_volumes(name, n);
    let mut cfg =
        MetricsConfig::new(case["num_classes"].as_u64().expect("num_classes") as usize, 1.0);
    cfg.nsd_tolerance =
        case["nsd_tolerance"].as_array().expect("tolerances").iter().map(num).collect();
    tweak(&mut cfg);
    let mut m = SegmentationMetric::new(cfg).expect("valid config");
    m.update_named(name, &pred, &gt, dims, spacing).expect("scores").classes.clone()
}

fn expected(case: &Value, key: &str) -> Vec<f64> {
    case["expected"][key]
        .as_array()
        .unwrap_or_else(|| panic!("missing {key}"))
        .iter()
        .map(num)
        .collect()
}

fn check(case: &Value, key: &str, got: Vec<f64>, tol: f64) {
    let what = format!("{}/{key}", case["name"].as_str().unwrap_or("?"));
    assert_all_close(&what, &got, &expected(case, key), tol);
}

#[test]
fn per_class_values_match_monai() {
    let doc = golden_json();
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 7);
    for case in cases {
        let base = run(case, |_| {});
        let s = |f: fn(&medseg_metrics::SurfaceScores) -> f64| -> Vec<f64> {
            base.iter().map(|c| f(c.surface.as_ref().expect("distances on"))).collect()
        };
        check(case, "dice", base.iter().map(|c| c.dice).collect(), DICE_TOL);
        check(case, "iou", base.iter().map(|c| c.iou).collect(), DICE_TOL);
        check(case, "hd", s(|x| x.hd), DIST_TOL);
        check(case, "hd95", s(|x| x.hd95), DIST_TOL);
        check(case, "assd", s(|x| x.assd), DIST_TOL);
        check(case, "nsd", s(|x| x.nsd), DICE_TOL);

        let keep = run(case, |c| c.ignore_empty = false);
        check(case, "dice_keep_empty", keep.iter().map(|c| c.dice).collect(), DICE_TOL);
        check(case, "iou_keep_empty", keep.iter().map(|c| c.iou).collect(), DICE_TOL);

        let hd95 = |v: &[medseg_metrics::ClassScores]| -> Vec<f64> {
            v.iter().map(|c| c.surface.expect("distances on").hd95).collect()
        };
        check(case, "hd95_directed", hd95(&run(case, |c| c.directed = true)), DIST_TOL);
        check(case, "hd_p0", hd95(&run(case, |c| c.percentile = 0.0)), DIST_TOL);
        check(case, "hd_p50", hd95(&run(case, |c| c.percentile = 50.0)), DIST_TOL);
    }
}

#[test]
fn reductions_match_monai_mean_and_mean_batch() {
    let doc = golden_json();
    let b = &doc["batch"];
    let dims = dims3(&b["dims"]);
    let spacing = spacing3(&b["spacing"]);
    let n: usize = dims.iter().product();
    let mut cfg = MetricsConfig::new(b["num_classes"].as_u64().expect("num_classes") as usize, 1.0);
    cfg.nsd_tolerance =
        b["nsd_tolerance"].as_array().expect("tolerances").iter().map(num).collect();
    let mut m = SegmentationMetric::new(cfg).expect("valid config");
    for name in b["names"].as_array().expect("names") {
        let name = name.as_str().expect("name");
        let (pred, gt) = golden_volumes(name, n);
        m.update_named(name, &pred, &gt, dims, spacing).expect("scores");
    }
    let report = m.compute();
    let pos = |metric: Metric| report.metrics.iter().position(|&x| x == metric).expect("metric");
    for (key, metric) in [("dice", Metric::Dice), ("hd95", Metric::Hd95), ("nsd", Metric::Nsd)] {
        let tol = if metric == Metric::Hd95 { DIST_TOL } else { DICE_TOL };
        let red = &b["reductions"];
        let want_mean = num(&red["mean"][key][0]);
        let got = report.mean[pos(metric)];
        assert_all_close(&format!("mean/{key}"), &[got.value], &[want_mean], tol);
        assert_eq!(
            got.not_nans as u64,
            red["mean"][format!("{key}_not_nans")][0].as_u64().expect("n")
        );
        let want: Vec<f64> =
            red["mean_batch"][key].as_array().expect("arr").iter().map(num).collect();
        let got: Vec<f64> = report.per_class.iter().map(|c| c.values[pos(metric)].value).collect();
        assert_all_close(&format!("mean_batch/{key}"), &got, &want, tol);
        let want_n: Vec<u64> = red["mean_batch"][format!("{key}_not_nans")]
            .as_array()
            .expect("arr")
            .iter()
            .map(|x| x.as_u64().expect("n"))
            .collect();
        let got_n: Vec<u64> =
            report.per_class.iter().map(|c| c.values[pos(metric)].not_nans as u64).collect();
        assert_eq!(got_n, want_n, "mean_batch/{key}_not_nans");
    }
}

/// The edge-case table of swin-reference.md §5.2, spelled out (the goldens cover it too).
#[test]
fn edge_case_table() {
    let doc = golden_json();
    let case = doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "edge_cases")
        .expect("edge case");
    let got = run(case, |_| {});
    // class 2: GT empty, prediction not; class 3: the reverse; class 4: both empty.
    let (gt_empty, pred_empty, both) = (&got[1], &got[2], &got[3]);
    let sg = gt_empty.surface.expect("on");
    assert!(gt_empty.dice.is_nan() && sg.hd == f64::INFINITY && sg.hd95.is_nan() && sg.nsd == 0.0);
    let sp = pred_empty.surface.expect("on");
    assert!(pred_empty.dice == 0.0 && sp.hd == f64::INFINITY && sp.hd95.is_nan() && sp.nsd == 0.0);
    let sb = both.surface.expect("on");
    assert!(
        both.dice.is_nan()
            && sb.hd.is_nan()
            && sb.hd95.is_nan()
            && sb.nsd.is_nan()
            && sb.assd.is_nan()
    );
    let keep = run(case, |c| c.ignore_empty = false);
    assert_eq!((keep[1].dice, keep[3].dice), (0.0, 1.0));
}
