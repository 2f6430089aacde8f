//! Configuration text shared by the trainers: reading a TOML file or an embedded preset, the
//! UTC stamp of run-folder names, the checkout's git commit and the header of the resolved
//! `config.toml` a run writes.
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The text of `path_or_preset` and its origin for error messages: the file when it exists,
/// else the embedded preset of that name (`<preset NAME>`).
pub fn config_text(
    path_or_preset: &str,
    presets: fn(&str) -> Option<&'static str>,
) -> Result<(String, PathBuf)> {
    let p = Path::new(path_or_preset);
    if !p.exists()
        && let Some(text) = presets(path_or_preset)
    {
        return Ok((text.to_string(), PathBuf::from(format!("<preset {path_or_preset}>"))));
    }
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    Ok((text, p.to_path_buf()))
}

/// `YYYYMMDD-HHMMSS` in UTC, now.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_stamp_at(secs)
}

/// `YYYYMMDD-HHMMSS` in UTC of `secs` seconds after the Unix epoch.
pub fn utc_stamp_at(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (H. Hinnant)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, (rem / 60) % 60, rem % 60)
}

/// The proposed run folder `<out>/<name>-<UTC stamp>`, `out` made absolute against the current
/// folder ([`crate::folder::create_fresh`] creates it, with a suffix on collision).
pub fn run_dir_proposal(out: &Path, name: &str) -> Result<PathBuf> {
    Ok(absolute(out)?.join(format!("{name}-{}", utc_stamp())))
}

/// `p` made absolute against the current folder (unchanged when absolute).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().map_err(|e| Error::io(".", e))?.join(p))
}

/// The checkout's `HEAD` commit, read from `.git` above the current folder without running git.
pub fn git_sha() -> Option<String> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        if let Ok(h) = std::fs::read_to_string(dir.join(".git/HEAD")) {
            let h = h.trim();
            return match h.strip_prefix("ref: ") {
                Some(r) => {
                    std::fs::read_to_string(dir.join(".git").join(r)).ok().map(|s| s.trim().into())
                }
                None => Some(h.to_string()),
            };
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// The resolved `config.toml` of a run: a header naming the run folder and the git commit,
/// then `toml`. `what` is e.g. `"run"` or `"pretraining run"`.
pub fn resolved_config_text(what: &str, run_dir: &Path, toml: &str) -> String {
    format!(
        "# resolved configuration of {what} {}\n# git {}\n{toml}",
        run_dir.display(),
        git_sha().unwrap_or_else(|| "unknown".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_has_the_folder_format() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15);
        assert_eq!(&s[8..9], "-");
        assert!(s.chars().filter(|c| *c != '-').all(|c| c.is_ascii_digit()), "{s}");
        assert_eq!(utc_stamp_at(0), "19700101-000000");
        assert_eq!(utc_stamp_at(951_782_400 + 86_399), "20000229-235959");
    }
}
