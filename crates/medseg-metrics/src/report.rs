//! Reports: per-case and per-class tables and MONAI-reduced means, as Markdown, CSV and JSON.
//! Non-finite values are written as `nan`, `inf` (JSON strings), so HD's `inf` stays visible.
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::case::ClassScores;
use crate::metric::{CaseScores, MetricsConfig};
use crate::reduce::{Reduced, monai_mean, monai_mean_batch};

/// One scalar metric of [`ClassScores`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Dice.
    Dice,
    /// Intersection over union.
    Iou,
    /// Hausdorff distance (max).
    Hd,
    /// Percentile Hausdorff distance (95 by default).
    Hd95,
    /// Average symmetric surface distance.
    Assd,
    /// Normalised surface Dice.
    Nsd,
}

impl Metric {
    /// All metrics in report order.
    pub const ALL: [Metric; 6] =
        [Metric::Dice, Metric::Iou, Metric::Hd, Metric::Hd95, Metric::Assd, Metric::Nsd];

    /// Column name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Dice => "dice",
            Metric::Iou => "iou",
            Metric::Hd => "hd",
            Metric::Hd95 => "hd95",
            Metric::Assd => "assd",
            Metric::Nsd => "nsd",
        }
    }

    /// The value in `s`, `None` when surface metrics were not computed.
    pub fn of(self, s: &ClassScores) -> Option<f64> {
        match self {
            Metric::Dice => Some(s.dice),
            Metric::Iou => Some(s.iou),
            Metric::Hd => s.surface.map(|x| x.hd),
            Metric::Hd95 => s.surface.map(|x| x.hd95),
            Metric::Assd => s.surface.map(|x| x.assd),
            Metric::Nsd => s.surface.map(|x| x.nsd),
        }
    }
}

/// Means of one class over all cases (MONAI `mean_batch`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassSummary {
    /// Class index.
    pub class: usize,
    /// Class name (`class_<i>` unless names were given).
    pub name: String,
    /// One entry per metric of [`Report::metrics`].
    pub values: Vec<Reduced>,
}

/// The output of [`crate::SegmentationMetric::compute`].
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The configuration that produced the scores.
    pub config: MetricsConfig,
    /// Metrics present (surface metrics only when `config.distances`).
    pub metrics: Vec<Metric>,
    /// Evaluated class indices.
    pub classes: Vec<usize>,
    /// Per-case scores.
    pub cases: Vec<CaseScores>,
    /// Per-class means, aligned with `classes`.
    pub per_class: Vec<ClassSummary>,
    /// MONAI `"mean"` over cases × classes, one entry per metric.
    pub mean: Vec<Reduced>,
}

impl Report {
    /// Reduces `cases` (all scored with `config`).
    pub fn new(config: MetricsConfig, cases: Vec<CaseScores>) -> Self {
        let metrics: Vec<Metric> = Metric::ALL
            .into_iter()
            .filter(|m| config.distances || matches!(m, Metric::Dice | Metric::Iou))
            .collect();
        let classes = config.classes();
        let per_class = classes
            .iter()
            .enumerate()
            .map(|(j, &class)| ClassSummary {
                class,
                name: format!("class_{class}"),
                values: metrics
                    .iter()
                    .map(|&m| monai_mean_batch(cases.iter().map(|c| value(m, &c.classes[j]))))
                    .collect(),
            })
            .collect();
        let all: Vec<usize> = (0..classes.len()).collect();
        let mean = metrics.iter().map(|&m| monai_mean(&table(&cases, m, &all))).collect();
        Self { config, metrics, classes, cases, per_class, mean }
    }

    /// Replaces the default `class_<i>` names; `names[i]` names class `i` (missing → unchanged).
    pub fn with_class_names(mut self, names: &[String]) -> Self {
        for s in &mut self.per_class {
            if let Some(n) = names.get(s.class).filter(|n| !n.is_empty()) {
                s.name.clone_from(n);
            }
        }
        self
    }

    /// `[case][class]` values of `metric` restricted to the positions `cols` of `self.classes`.
    pub fn table(&self, metric: Metric, cols: &[usize]) -> Vec<Vec<f64>> {
        table(&self.cases, metric, cols)
    }

    /// Per-class summary and overall mean as a Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let heads: Vec<&str> = self.metrics.iter().map(|m| m.name()).collect();
        let _ = writeln!(s, "| class | name | {} |", heads.join(" | "));
        let _ = writeln!(s, "|---|---|{}", "---|".repeat(heads.len()));
        for c in &self.per_class {
            let vals: Vec<String> = c.values.iter().map(fmt_reduced).collect();
            let _ = writeln!(s, "| {} | {} | {} |", c.class, c.name, vals.join(" | "));
        }
        let vals: Vec<String> = self.mean.iter().map(fmt_reduced).collect();
        let _ = writeln!(s, "| **mean** | {} cases | {} |", self.cases.len(), vals.join(" | "));
        s
    }

    /// One row per case and class: `case,class,name,gt_voxels,pred_voxels,<metrics…>`.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("case,class,name,gt_voxels,pred_voxels");
        for m in &self.metrics {
            s.push(',');
            s.push_str(m.name());
        }
        s.push('\n');
        for case in &self.cases {
            for (j, c) in case.classes.iter().enumerate() {
                let name = &self.per_class[j].name;
                let _ = write!(
                    s,
                    "{},{},{},{},{}",
                    csv_field(&case.name),
                    c.class,
                    csv_field(name),
                    c.gt_voxels,
                    c.pred_voxels
                );
                for &m in &self.metrics {
                    let _ = write!(s, ",{}", fmt_num(value(m, c)));
                }
                s.push('\n');
            }
        }
        s
    }

    /// Everything (config, per-case, per-class, mean) as JSON.
    pub fn to_json(&self) -> Value {
        let metric_obj = |vals: &dyn Fn(Metric) -> Value| -> Value {
            Value::Object(self.metrics.iter().map(|&m| (m.name().to_string(), vals(m))).collect())
        };
        let cases: Vec<Value> = self
            .cases
            .iter()
            .map(|case| {
                let classes: Vec<Value> = case
                    .classes
                    .iter()
                    .map(|c| {
                        let mut o = json!({"class": c.class, "gt_voxels": c.gt_voxels, "pred_voxels": c.pred_voxels});
                        for &m in &self.metrics {
                            o[m.name()] = num(value(m, c));
                        }
                        o
                    })
                    .collect();
                json!({"name": case.name, "dims": case.dims, "spacing": case.spacing, "classes": classes})
            })
            .collect();
        let per_class: Vec<Value> = self
            .per_class
            .iter()
            .map(|c| {
                let vals = metric_obj(&|m| reduced_json(&c.values[self.metric_pos(m)]));
                json!({"class": c.class, "name": c.name, "mean": vals})
            })
            .collect();
        json!({
            "config": serde_json::to_value(&self.config).unwrap_or(Value::Null),
            "metrics": self.metrics.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "mean": metric_obj(&|m| reduced_json(&self.mean[self.metric_pos(m)])),
            "per_class": per_class,
            "cases": cases,
        })
    }

    fn metric_pos(&self, m: Metric) -> usize {
        self.metrics.iter().position(|&x| x == m).unwrap_or(0)
    }
}

fn value(m: Metric, c: &ClassScores) -> f64 {
    m.of(c).unwrap_or(f64::NAN)
}

fn table(cases: &[CaseScores], m: Metric, cols: &[usize]) -> Vec<Vec<f64>> {
    cases.iter().map(|c| cols.iter().map(|&j| value(m, &c.classes[j])).collect()).collect()
}

/// `1.234568`, `nan`, `inf`, `-inf`.
pub(crate) fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{x:.6}")
    }
}

/// Markdown cell of a reduced value; `n/a` when no case contributed.
pub(crate) fn fmt_reduced(r: &Reduced) -> String {
    if r.not_nans == 0 { "n/a".into() } else { fmt_num(r.value) }
}

/// JSON number, or the strings `"nan"`, `"inf"`, `"-inf"`.
pub(crate) fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::String(fmt_num(x)) }
}

pub(crate) fn reduced_json(r: &Reduced) -> Value {
    json!({"value": num(r.value), "not_nans": r.not_nans})
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
