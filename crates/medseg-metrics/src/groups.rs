//! Class groups as data: the TotalSegmentator-v2 117-class map in the five groups of the Swin SMT
//! paper table (organs / vertebrae / muscles / ribs / vessels) and the 13 BTCV organs. Tables are
//! JSON (`src/groups/*.json`), so a new dataset is a new file, not new code.
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::reduce::{Reduced, monai_mean};
use crate::report::{Metric, Report, fmt_reduced, reduced_json};

const TOTALSEG_V2: &str = include_str!("groups/totalsegmentator_v2.json");
const BTCV: &str = include_str!("groups/btcv.json");

/// A named set of classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name (`organs`, `vertebrae`, …).
    pub name: String,
    /// Class indices, ascending.
    pub classes: Vec<usize>,
}

/// Class names of a label map and groups of its classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTable {
    /// Table name (`totalsegmentator_v2`, `btcv`).
    pub name: String,
    /// `labels[i]` names class `i`; index 0 is the background.
    pub labels: Vec<String>,
    /// Groups in report order; every class belongs to at most one group.
    pub groups: Vec<Group>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "documentation field of the JSON file")]
    description: String,
    #[serde(default)]
    #[allow(dead_code, reason = "documentation field of the JSON file")]
    source: String,
    labels: Vec<String>,
    groups: Vec<RawGroup>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    classes: Vec<String>,
}

impl GroupTable {
    /// TotalSegmentator v2 `total` (117 classes + background) in the Swin SMT paper's five groups.
    pub fn totalsegmentator_v2() -> Self {
        Self::builtin(TOTALSEG_V2)
    }

    /// BTCV: 13 abdominal organs (+ background), one group `organs`.
    pub fn btcv() -> Self {
        Self::builtin(BTCV)
    }

    fn builtin(text: &str) -> Self {
        // The built-in tables are checked by unit tests; failing here is a broken build artefact.
        Self::from_json(text).expect("built-in group table is valid")
    }

    /// Parses a table: `{"name", "labels": [names by index], "groups": [{"name", "classes": [names]}]}`.
    /// Class names must exist in `labels` and belong to one group at most.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawTable = serde_json::from_str(text)?;
        let err = |message: String| Error::Groups { table: raw.name.clone(), message };
        let mut owner: Vec<Option<&str>> = vec![None; raw.labels.len()];
        let mut groups = Vec::with_capacity(raw.groups.len());
        for g in &raw.groups {
            let mut classes = Vec::with_capacity(g.classes.len());
            for name in &g.classes {
                let idx =
                    raw.labels.iter().position(|l| l == name).ok_or_else(|| {
                        err(format!("group {} names unknown class {name:?}", g.name))
                    })?;
                if let Some(other) = owner[idx] {
                    return Err(err(format!("class {name:?} is in groups {other} and {}", g.name)));
                }
                owner[idx] = Some(&g.name);
                classes.push(idx);
            }
            classes.sort_unstable();
            groups.push(Group { name: g.name.clone(), classes });
        }
        Ok(Self { name: raw.name.clone(), labels: raw.labels.clone(), groups })
    }

    /// Groups `report` (see [`GroupedReport`]).
    pub fn group(&self, report: &Report) -> GroupedReport {
        let pos = |c: &usize| report.classes.iter().position(|x| x == c);
        let reduce = |cols: &[usize]| -> Vec<Reduced> {
            report.metrics.iter().map(|&m| monai_mean(&report.table(m, cols))).collect()
        };
        let mut all_cols = Vec::new();
        let rows = self
            .groups
            .iter()
            .map(|g| {
                let cols: Vec<usize> = g.classes.iter().filter_map(pos).collect();
                all_cols.extend_from_slice(&cols);
                GroupRow { name: g.name.clone(), classes: cols.len(), values: reduce(&cols) }
            })
            .collect();
        all_cols.sort_unstable();
        let overall =
            GroupRow { name: "overall".into(), classes: all_cols.len(), values: reduce(&all_cols) };
        GroupedReport {
            table: self.name.clone(),
            metrics: report.metrics.clone(),
            cases: report.cases.len(),
            rows,
            overall,
        }
    }
}

/// One line of a [`GroupedReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// Group name.
    pub name: String,
    /// Evaluated classes in the group.
    pub classes: usize,
    /// One value per metric of [`GroupedReport::metrics`].
    pub values: Vec<Reduced>,
}

/// Metrics per class group, as in the Swin SMT TotalSegmentator-V2 table.
///
/// Each group value is MONAI's `"mean"` reduction of the `[case][class]` table restricted to the
/// group's classes: per case the mean over its non-NaN group classes (classes absent from the
/// ground truth are NaN and skipped), then the mean over cases. `overall` does the same over the
/// union of all groups.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedReport {
    /// Group table name.
    pub table: String,
    /// Metrics, in column order.
    pub metrics: Vec<Metric>,
    /// Number of cases.
    pub cases: usize,
    /// One row per group.
    pub rows: Vec<GroupRow>,
    /// All grouped classes together.
    pub overall: GroupRow,
}

impl GroupedReport {
    fn all_rows(&self) -> impl Iterator<Item = &GroupRow> {
        self.rows.iter().chain(std::iter::once(&self.overall))
    }

    /// Groups as rows, metrics as columns (Dice and NSD scaled to %, distances in spacing units).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let heads: Vec<String> = self
            .metrics
            .iter()
            .map(|m| if is_ratio(*m) { format!("{} (%)", m.name()) } else { m.name().to_string() })
            .collect();
        let _ = writeln!(s, "| group | classes | {} |", heads.join(" | "));
        let _ = writeln!(s, "|---|---|{}", "---|".repeat(heads.len()));
        for r in self.all_rows() {
            let vals: Vec<String> = self
                .metrics
                .iter()
                .zip(&r.values)
                .map(|(m, v)| {
                    if is_ratio(*m) && v.not_nans > 0 && v.value.is_finite() {
                        format!("{:.2}", 100.0 * v.value)
                    } else if v.not_nans > 0 && v.value.is_finite() {
                        format!("{:.3}", v.value)
                    } else {
                        fmt_reduced(v)
                    }
                })
                .collect();
            let _ = writeln!(s, "| {} | {} | {} |", r.name, r.classes, vals.join(" | "));
        }
        s
    }

    /// `group,classes,<metric>,<metric>_not_nans,…` with raw (unscaled) values.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("group,classes");
        for m in &self.metrics {
            let _ = write!(s, ",{0},{0}_not_nans", m.name());
        }
        s.push('\n');
        for r in self.all_rows() {
            let _ = write!(s, "{},{}", r.name, r.classes);
            for v in &r.values {
                let _ = write!(s, ",{},{}", crate::report::fmt_num(v.value), v.not_nans);
            }
            s.push('\n');
        }
        s
    }

    /// `{"table", "cases", "groups": [{"name", "classes", "<metric>": {"value", "not_nans"}}], "overall"}`.
    pub fn to_json(&self) -> Value {
        let row = |r: &GroupRow| {
            let mut o = json!({"name": r.name, "classes": r.classes});
            for (m, v) in self.metrics.iter().zip(&r.values) {
                o[m.name()] = reduced_json(v);
            }
            o
        };
        json!({
            "table": self.table,
            "cases": self.cases,
            "groups": self.rows.iter().map(row).collect::<Vec<_>>(),
            "overall": row(&self.overall),
        })
    }
}

fn is_ratio(m: Metric) -> bool {
    matches!(m, Metric::Dice | Metric::Iou | Metric::Nsd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tables_cover_their_classes_once() {
        let ts = GroupTable::totalsegmentator_v2();
        assert_eq!(ts.labels.len(), 118);
        let mut all: Vec<usize> = ts.groups.iter().flat_map(|g| g.classes.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=117).collect::<Vec<_>>());
        let sizes: Vec<usize> = ts.groups.iter().map(|g| g.classes.len()).collect();
        assert_eq!(sizes, [24, 26, 23, 26, 18]);
        let bt = GroupTable::btcv();
        assert_eq!(bt.groups[0].classes, (1..=13).collect::<Vec<_>>());
    }

    #[test]
    fn unknown_and_duplicate_names_are_errors() {
        let bad = r#"{"name":"t","labels":["bg","a"],"groups":[{"name":"g","classes":["b"]}]}"#;
        assert!(matches!(GroupTable::from_json(bad), Err(Error::Groups { .. })));
        let dup = r#"{"name":"t","labels":["bg","a"],"groups":[{"name":"g","classes":["a"]},{"name":"h","classes":["a"]}]}"#;
        assert!(matches!(GroupTable::from_json(dup), Err(Error::Groups { .. })));
    }
}
