//! Bad input gives a clear `Err` naming the values.
use medseg_metrics::{Binarize, Error, MetricsConfig, SegmentationMetric};

fn metric(c: usize) -> SegmentationMetric {
    SegmentationMetric::new(MetricsConfig::new(c, 1.0)).expect("config")
}

#[test]
fn buffer_and_shape_errors() {
    let mut m = metric(3);
    let a = vec![0u8; 60];
    let e = m.update(&a, &a[..59], [3, 4, 5], [1.0; 3]).expect_err("short gt");
    assert!(
        matches!(e, Error::BufferLen { what: "ground truth", len: 59, expected: 60, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("[3, 4, 5]"));
    let e = m.update(&a, &a, [0, 60, 1], [1.0; 3]).expect_err("empty");
    assert!(matches!(e, Error::EmptyVolume { .. }));
}

#[test]
fn spacing_errors() {
    let mut m = metric(3);
    let a = vec![0u8; 8];
    for s in [[0.0, 1.0, 1.0], [1.0, -2.0, 1.0], [1.0, 1.0, f64::NAN], [f64::INFINITY, 1.0, 1.0]] {
        let e = m.update(&a, &a, [2, 2, 2], s).expect_err("bad spacing");
        assert!(matches!(e, Error::InvalidSpacing { .. }), "{e}");
    }
}

#[test]
fn labels_beyond_the_class_count() {
    let mut m = metric(3);
    let mut p = vec![0u8; 8];
    p[5] = 7;
    let g = vec![0u8; 8];
    let e = m.update(&p, &g, [2, 2, 2], [1.0; 3]).expect_err("label 7");
    assert!(
        matches!(
            e,
            Error::LabelOutOfRange { what: "prediction", label: 7, index: 5, num_classes: 3 }
        ),
        "{e}"
    );
    assert_eq!(e.to_string(), "prediction contains label 7 at voxel 5, but num_classes is 3");
}

#[test]
fn nan_probabilities_and_channel_counts() {
    let mut m = metric(2);
    let mut p = vec![0.0f32; 16];
    let g = vec![0.0f32; 16];
    p[9] = f32::NAN;
    let e = m.update_channels("c", &p, &g, [2, 2, 2], [1.0; 3], Binarize::Argmax).expect_err("nan");
    assert!(matches!(e, Error::NanProbability { what: "prediction", channel: 1, index: 1 }), "{e}");
    let e = m
        .update_channels("c", &p[..8], &g, [2, 2, 2], [1.0; 3], Binarize::Argmax)
        .expect_err("len");
    assert!(matches!(e, Error::ChannelLen { channels: 2, voxels: 8, .. }), "{e}");
    let e = m
        .update_channels("c", &g, &g, [2, 2, 2], [1.0; 3], Binarize::Threshold(f32::NAN))
        .expect_err("t");
    assert!(matches!(e, Error::InvalidThreshold(_)));
}

#[test]
fn config_errors() {
    let bad = |f: &dyn Fn(&mut MetricsConfig)| {
        let mut c = MetricsConfig::new(4, 1.0);
        f(&mut c);
        SegmentationMetric::new(c).expect_err("invalid config")
    };
    assert!(matches!(bad(&|c| c.num_classes = 0), Error::InvalidNumClasses { num_classes: 0 }));
    assert!(matches!(bad(&|c| c.percentile = 101.0), Error::InvalidPercentile(_)));
    let e = bad(&|c| c.nsd_tolerance = vec![1.0, 2.0]);
    assert_eq!(
        e.to_string(),
        "NSD tolerances: 2 values given for 3 evaluated classes (give 1 or 3)"
    );
    assert!(matches!(bad(&|c| c.nsd_tolerance = vec![-1.0]), Error::InvalidTolerance(_)));
    assert!(matches!(bad(&|c| c.nsd_tolerance = vec![f64::NAN]), Error::InvalidTolerance(_)));
}
