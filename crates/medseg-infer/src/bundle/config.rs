//! Reading a MONAI bundle config file (`monai.bundle.ConfigParser` syntax) without Python: JSON
//! values, `@id` references (ids nested with `::` or the older `#`), and the one kind of `$`
//! expression inference configs use for paths — `@id`s and quoted strings joined by `+`
//! (`"$@bundle_root + '/models/model.pt'"`). Only the ids medseg asks for are resolved, so the
//! Python-only parts of a config (`$torch.device(...)`, `$@network_def.to(@device)`, the
//! evaluator) are never evaluated; asking for one is an error naming the id and the file.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

/// Largest config file read (bundle configs are a few KiB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Deepest chain of references followed (cycles end here).
const MAX_DEPTH: usize = 64;

/// One parsed config file.
#[derive(Debug, Clone)]
pub struct MonaiConfig {
    path: PathBuf,
    root: Value,
    overrides: BTreeMap<String, Value>,
}

impl MonaiConfig {
    /// Reads and parses `path` (a JSON object); `overrides` replace top-level ids (MONAI's
    /// `--bundle_root DIR` style arguments).
    pub fn read(path: &Path, overrides: BTreeMap<String, Value>) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(Error::Bundle {
                file: path.to_path_buf(),
                key: "(file)".into(),
                reason: format!("{} bytes is too large for a bundle config", meta.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, overrides)
    }

    /// Parses `text` (named `path` in errors).
    pub fn parse(text: &str, path: &Path, overrides: BTreeMap<String, Value>) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| Error::Bundle {
            file: path.to_path_buf(),
            key: "(file)".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        if !root.is_object() {
            return Err(Error::Bundle {
                file: path.to_path_buf(),
                key: "(file)".into(),
                reason: "the top level must be a JSON object".into(),
            });
        }
        Ok(MonaiConfig { path: path.to_path_buf(), root, overrides })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about `key` of this file.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Bundle { file: self.path.clone(), key: key.to_string(), reason: reason.into() }
    }

    /// The value of `id` as written (no references resolved); `None` when absent.
    pub fn raw(&self, id: &str) -> Option<&Value> {
        let mut parts = split_id(id).into_iter();
        let first = parts.next()?;
        let mut v = match self.overrides.get(first) {
            Some(v) => v,
            None => self.root.get(first)?,
        };
        for p in parts {
            v = match v {
                Value::Object(m) => m.get(p)?,
                Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// The value of `id` with every reference and path expression in it resolved; `None` when
    /// absent.
    pub fn get(&self, id: &str) -> Result<Option<Value>> {
        match self.raw(id) {
            None => Ok(None),
            Some(v) => self.resolve(v, id, 0).map(Some),
        }
    }

    /// [`Self::get`] for an id that must exist.
    pub fn require(&self, id: &str) -> Result<Value> {
        self.get(id)?.ok_or_else(|| self.error(id, "missing"))
    }

    /// Resolves `v`, found at `at`.
    pub fn resolve(&self, v: &Value, at: &str, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(
                self.error(at, format!("references nest deeper than {MAX_DEPTH} (a cycle?)"))
            );
        }
        match v {
            Value::String(s) if s.starts_with('@') => {
                let id = &s[1..];
                let target = self
                    .raw(id)
                    .ok_or_else(|| self.error(at, format!("reference {s:?} names no config id")))?;
                self.resolve(target, id, depth + 1)
            }
            Value::String(s) if s.starts_with('$') => self.expression(&s[1..], at, depth),
            Value::String(s) if s.starts_with('%') => Err(self.error(
                at,
                format!("macro {s:?}: `%` macros (text from other files) are not supported"),
            )),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| self.resolve(x, &format!("{at}::{i}"), depth))
                .collect::<Result<Vec<_>>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, x) in m {
                    out.insert(k.clone(), self.resolve(x, &format!("{at}::{k}"), depth)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    /// A `$` expression: one `@id` (any value), or `@id`s and quoted strings joined by `+`.
    fn expression(&self, expr: &str, at: &str, depth: usize) -> Result<Value> {
        let unsupported = || {
            self.error(
                at,
                format!(
                    "expression \"${expr}\" cannot be evaluated without Python (medseg evaluates \
                     `@id` references and quoted strings joined by `+` only)"
                ),
            )
        };
        let terms = split_terms(expr).ok_or_else(unsupported)?;
        let mut values = Vec::with_capacity(terms.len());
        for t in &terms {
            values.push(match t {
                Term::Ref(id) => {
                    let target = self.raw(id).ok_or_else(|| {
                        self.error(at, format!("reference @{id} in \"${expr}\" names no config id"))
                    })?;
                    self.resolve(target, id, depth + 1)?
                }
                Term::Str(s) => Value::String(s.clone()),
            });
        }
        if values.len() == 1 {
            return Ok(values.remove(0));
        }
        let mut joined = String::new();
        for v in values {
            match v {
                Value::String(s) => joined.push_str(&s),
                _ => return Err(unsupported()),
            }
        }
        Ok(Value::String(joined))
    }
}

/// The parts of an id (`a::b::0`, or the older `a#b#0`).
fn split_id(id: &str) -> Vec<&str> {
    if id.contains("::") { id.split("::").collect() } else { id.split('#').collect() }
}

/// One term of a `$` expression.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Ref(String),
    Str(String),
}

/// `@a + '/x' + "y"` → terms; `None` for anything else (calls, attributes, arithmetic).
fn split_terms(expr: &str) -> Option<Vec<Term>> {
    let mut terms = Vec::new();
    let mut rest = expr.trim();
    loop {
        if let Some(r) = rest.strip_prefix('@') {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '#'))
                .unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            terms.push(Term::Ref(r[..end].to_string()));
            rest = r[end..].trim_start();
        } else if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let body = &rest[1..];
            let end = body.find(q)?;
            if body[..end].contains('\\') {
                return None;
            }
            terms.push(Term::Str(body[..end].to_string()));
            rest = body[end + 1..].trim_start();
        } else {
            return None;
        }
        if rest.is_empty() {
            return Some(terms);
        }
        rest = rest.strip_prefix('+')?.trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> MonaiConfig {
        let mut o = BTreeMap::new();
        o.insert("bundle_root".to_string(), Value::String("/b".into()));
        MonaiConfig::parse(text, Path::new("inference.json"), o).expect("parse")
    }

    #[test]
    fn references_and_path_expressions_resolve() {
        let c = cfg(r#"{
            "bundle_root": ".",
            "image_key": "image",
            "ckpt": "$@bundle_root + '/models/' + \"model.pt\"",
            "alias": "$@image_key",
            "t": {"transforms": [{"keys": "@image_key", "n": [1, "@t::transforms::0::m"], "m": 3}]},
            "old": "@t#transforms#0#m",
            "device": "$torch.device('cpu')"
        }"#);
        assert_eq!(cfg_get(&c, "ckpt"), Value::String("/b/models/model.pt".into()));
        assert_eq!(cfg_get(&c, "alias"), Value::String("image".into()));
        assert_eq!(cfg_get(&c, "t::transforms::0::n"), serde_json::json!([1, 3]));
        assert_eq!(cfg_get(&c, "old"), serde_json::json!(3));
        let e = c.get("device").expect_err("python").to_string();
        assert!(
            e.contains("inference.json") && e.contains("device") && e.contains("torch.device"),
            "{e}"
        );
        assert!(c.get("absent").expect("absent").is_none());
    }

    fn cfg_get(c: &MonaiConfig, id: &str) -> Value {
        c.get(id).expect("resolves").expect("present")
    }

    #[test]
    fn hostile_configs_give_errors_naming_the_key() {
        let c = cfg(r#"{"a": "@b", "b": "@a", "m": "%other.json::x", "r": "@nowhere",
                        "e": "$@a + 1", "s": "$'unterminated"}"#);
        for (id, want) in [
            ("a", "deeper than"),
            ("m", "macro"),
            ("r", "names no config id"),
            ("e", "cannot be evaluated"),
            ("s", "cannot be evaluated"),
        ] {
            let e = c.get(id).expect_err(id).to_string();
            assert!(e.contains(want) && e.contains("inference.json"), "{id}: {e}");
        }
        for bad in ["[1, 2]", "{\"a\": ", "", "\"x\""] {
            let e = MonaiConfig::parse(bad, Path::new("x.json"), BTreeMap::new())
                .expect_err(bad)
                .to_string();
            assert!(e.contains("x.json"), "{e}");
        }
    }
}
