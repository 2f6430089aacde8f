//! Coded concepts for DICOM SEG segments: SNOMED CT codes for the common TotalSegmentator and
//! BTCV class names, with laterality as a type modifier; anything else gets the generic "Tissue".
use serde::Serialize;

/// One coded concept (Code Sequence Macro).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Code {
    /// CodeValue.
    pub value: &'static str,
    /// CodingSchemeDesignator.
    pub scheme: &'static str,
    /// CodeMeaning.
    pub meaning: &'static str,
}

const fn sct(value: &'static str, meaning: &'static str) -> Code {
    Code { value, scheme: "SCT", meaning }
}

/// SegmentedPropertyCategory of every known organ.
pub const ANATOMICAL_STRUCTURE: Code = sct("123037004", "Anatomical Structure");
/// Category and type of a class name not in the table.
pub const TISSUE: Code = sct("85756007", "Tissue");
/// Laterality modifiers.
pub const RIGHT: Code = sct("24028007", "Right");
/// Left laterality.
pub const LEFT: Code = sct("7771000", "Left");

/// Class name (lower case, words joined by `_`, laterality removed) → SNOMED CT type.
const TABLE: &[(&[&str], Code)] = &[
    (&["liver"], sct("10200004", "Liver")),
    (&["spleen"], sct("78961009", "Spleen")),
    (&["kidney", "kid"], sct("64033007", "Kidney")),
    (&["pancreas"], sct("15776009", "Pancreas")),
    (&["aorta"], sct("15825003", "Aorta")),
    (&["gallbladder", "gall_bladder", "gall"], sct("28231008", "Gallbladder")),
    (&["esophagus", "oesophagus", "eso"], sct("32849002", "Esophagus")),
    (&["stomach", "sto"], sct("69695003", "Stomach")),
    (&["inferior_vena_cava", "ivc", "postcava"], sct("64131007", "Inferior vena cava")),
    (
        &["portal_vein_and_splenic_vein", "veins", "portal_and_splenic_vein"],
        sct("32764006", "Portal vein"),
    ),
    (&["adrenal_gland", "adrenal", "ad"], sct("23451007", "Adrenal gland")),
    (&["duodenum"], sct("38848004", "Duodenum")),
    (&["urinary_bladder", "bladder"], sct("89837001", "Urinary bladder")),
    (&["heart"], sct("80891009", "Heart")),
    (&["lung"], sct("39607008", "Lung")),
    (&["colon"], sct("71854001", "Colon")),
    (&["small_bowel", "small_intestine"], sct("30315005", "Small intestine")),
    (&["prostate"], sct("41216001", "Prostate")),
    (&["brain"], sct("12738006", "Brain")),
    (&["trachea"], sct("44567001", "Trachea")),
    (&["spinal_cord"], sct("2748008", "Spinal cord")),
    (&["thyroid_gland", "thyroid"], sct("69748006", "Thyroid")),
    (&["sacrum"], sct("54735007", "Sacrum")),
    (&["sternum"], sct("56873002", "Sternum")),
    (&["femur"], sct("71341001", "Femur")),
    (&["hip"], sct("29836001", "Hip")),
    (&["pulmonary_artery", "pulmonary_vein"], sct("81040000", "Pulmonary artery")),
];

/// The coded meaning of a class name: (category, type, laterality modifier).
/// Accepts TotalSegmentator (`kidney_left`) and BTCV (`rkid`, `right kidney`, `lad`) spellings.
pub fn code_for(name: &str) -> (Code, Code, Option<Code>) {
    let lower = name.trim().to_ascii_lowercase();
    let words: Vec<&str> = lower.split(['_', '-', ' ']).filter(|w| !w.is_empty()).collect();
    let mut side = None;
    let mut rest: Vec<&str> = Vec::new();
    for w in &words {
        match *w {
            "left" | "l" => side = Some(LEFT),
            "right" | "r" => side = Some(RIGHT),
            _ => rest.push(w),
        }
    }
    let mut key = rest.join("_");
    // BTCV abbreviations: rkid, lkid, rad, lad.
    if side.is_none() && rest.len() == 1 {
        for (prefix, s) in [("r", RIGHT), ("l", LEFT)] {
            if let Some(stem) = key.strip_prefix(prefix)
                && matches!(stem, "kid" | "ad")
            {
                side = Some(s);
                key = stem.to_string();
                break;
            }
        }
    }
    for (names, code) in TABLE {
        if names.contains(&key.as_str()) {
            return (ANATOMICAL_STRUCTURE, *code, side);
        }
    }
    (TISSUE, TISSUE, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totalsegmentator_and_btcv_names() {
        assert_eq!(code_for("liver").1.value, "10200004");
        assert_eq!(
            code_for("kidney_left"),
            (ANATOMICAL_STRUCTURE, sct("64033007", "Kidney"), Some(LEFT))
        );
        assert_eq!(code_for("right kidney").2, Some(RIGHT));
        assert_eq!(
            code_for("rkid"),
            (ANATOMICAL_STRUCTURE, sct("64033007", "Kidney"), Some(RIGHT))
        );
        assert_eq!(code_for("lad").1.value, "23451007");
        assert_eq!(code_for("IVC").1.value, "64131007");
        assert_eq!(code_for("adrenal_gland_right").2, Some(RIGHT));
        assert_eq!(code_for("something_else"), (TISSUE, TISSUE, None));
    }
}
