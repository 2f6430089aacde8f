//! Per-class statistics of a label map on its image's grid (`medseg predict --statistics`):
//! voxel count, volume in ml and the input intensity (HU for CT) inside each class — mean,
//! standard deviation (numpy's `std`, ddof 0), minimum, maximum and median (numpy's `median`:
//! the mean of the two middle values for an even count).

/// Statistics of one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassStatistics {
    /// Label value.
    pub label: u8,
    /// Class name.
    pub name: String,
    /// Voxels with this label.
    pub voxels: u64,
    /// Volume in millilitres (voxels × voxel volume).
    pub volume_ml: f64,
    /// Intensity inside the class; `None` for an empty class.
    pub intensity: Option<IntensityStatistics>,
}

/// Summary of the image values inside one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IntensityStatistics {
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation (ddof 0).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
}

/// Statistics of every class `1..names.len()` (label 0, the background, is left out), in label
/// order; empty classes are listed with zero voxels. `image` and `labels` are the same C-ordered
/// grid; `spacing` in mm.
///
/// # Panics
/// When `image` and `labels` differ in length (a caller bug, not user data).
pub fn class_statistics(
    labels: &[u8],
    image: &[f32],
    spacing: [f64; 3],
    names: &[String],
) -> Vec<ClassStatistics> {
    assert_eq!(labels.len(), image.len(), "label map and image differ in voxel count");
    let classes = names.len().min(256);
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); classes];
    for (&l, &v) in labels.iter().zip(image) {
        if let Some(bucket) = values.get_mut(l as usize) {
            bucket.push(v);
        }
    }
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    (1..classes)
        .map(|c| {
            let vals = &mut values[c];
            ClassStatistics {
                label: c as u8,
                name: names[c].clone(),
                voxels: vals.len() as u64,
                volume_ml: vals.len() as f64 * voxel_ml,
                intensity: intensity(vals),
            }
        })
        .collect()
}

fn intensity(vals: &mut [f32]) -> Option<IntensityStatistics> {
    if vals.is_empty() {
        return None;
    }
    let n = vals.len() as f64;
    let mean = vals.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = vals.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in vals.iter() {
        min = min.min(v as f64);
        max = max.max(v as f64);
    }
    let mid = vals.len() / 2;
    let (_, &mut upper, _) = vals.select_nth_unstable_by(mid, f32::total_cmp);
    let median = if vals.len() % 2 == 1 {
        upper as f64
    } else {
        // The lower middle is the largest value left of `mid` after the partition.
        let lower = vals[..mid].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (lower as f64 + upper as f64) / 2.0
    };
    Some(IntensityStatistics { mean, std: var.sqrt(), min, max, median })
}

/// The statistics as CSV: `label,name,voxels,volume_ml,mean,std,min,max,median` (intensity
/// columns empty for an empty class).
pub fn to_csv(stats: &[ClassStatistics]) -> String {
    let mut out = String::from("label,name,voxels,volume_ml,mean,std,min,max,median\n");
    for s in stats {
        let name = if s.name.contains([',', '"']) {
            format!("\"{}\"", s.name.replace('"', "\"\""))
        } else {
            s.name.clone()
        };
        out.push_str(&format!("{},{},{},{}", s.label, name, s.voxels, s.volume_ml));
        match &s.intensity {
            Some(i) => {
                out.push_str(&format!(",{},{},{},{},{}\n", i.mean, i.std, i.min, i.max, i.median))
            }
            None => out.push_str(",,,,,\n"),
        }
    }
    out
}

/// The statistics as a JSON object keyed by class name (TotalSegmentator's `statistics.json`
/// shape), each value holding the fields of [`ClassStatistics`].
pub fn to_json(stats: &[ClassStatistics]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = stats
        .iter()
        .map(|s| (s.name.clone(), serde_json::to_value(s).unwrap_or(serde_json::Value::Null)))
        .collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn statistics_match_hand_computed_values() {
        let labels = [0u8, 1, 1, 1, 1, 2, 0, 2];
        let image = [9.0f32, 1.0, 4.0, 2.0, 3.0, -5.0, 7.0, -5.0];
        let s = class_statistics(&labels, &image, [1.0, 2.0, 0.5], &names(4));
        assert_eq!(s.len(), 3);
        let c1 = s[0].intensity.as_ref().expect("class 1");
        assert_eq!((s[0].voxels, s[0].volume_ml), (4, 0.004));
        assert_eq!((c1.mean, c1.min, c1.max, c1.median), (2.5, 1.0, 4.0, 2.5));
        assert!((c1.std - 1.25f64.sqrt()).abs() < 1e-12);
        let c2 = s[1].intensity.as_ref().expect("class 2");
        assert_eq!((c2.mean, c2.std, c2.median), (-5.0, 0.0, -5.0));
        assert_eq!((s[2].voxels, s[2].intensity.clone()), (0, None));
        let csv = to_csv(&s);
        assert_eq!(csv.lines().nth(3), Some("3,c3,0,0,,,,,"));
        assert_eq!(to_json(&s)["c1"]["voxels"], 4);
    }

    #[test]
    fn odd_median_is_the_middle_value() {
        let mut v = [5.0f32, -1.0, 3.0];
        assert_eq!(intensity(&mut v).map(|i| i.median), Some(3.0));
    }
}
