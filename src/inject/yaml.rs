//! YAML plumbing of `sluice inject`: splitting a multi-document stream into the raw text of
//! each document (so untouched documents are written back byte for byte, comments included),
//! re-serializing a changed one, and small accessors on `serde_yaml::Value`.

use serde_yaml::{Mapping, Value};

/// One document of a YAML stream as written: its `---` line (if any) and everything up to the
/// next one.
#[derive(Debug, PartialEq, Eq)]
pub struct RawDoc<'a> {
    /// The document's text, separator line included, line ends kept.
    pub text: &'a str,
}

impl RawDoc<'_> {
    /// True when the text holds no node: only blank lines, comments, directives (`%YAML`) and
    /// markers. Such a chunk is written back as is and not counted as a document.
    pub fn is_empty(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || l.starts_with('%') || is_marker(l)
        })
    }

    /// The text for this document after a change: its separator and the comment lines that
    /// open it (a file header survives), then `body` as serialized by serde_yaml. Comments
    /// inside the document are lost (see the README's `sluice inject` section).
    pub fn rewrite(&self, body: &str) -> String {
        let mut out = String::with_capacity(body.len() + 64);
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            if line.starts_with("---") && is_marker(line) {
                out.push_str("---\n");
            } else if t.is_empty() || t.starts_with('#') || line.starts_with('%') {
                out.push_str(line);
                if !line.ends_with('\n') {
                    out.push('\n');
                }
            } else {
                break;
            }
        }
        out.push_str(body);
        out
    }
}

/// A `---` (or `...`) marker line: the three characters at column 0 followed by nothing or by
/// white space (YAML 1.2.2 §9.1.2: a marker is only recognized at the start of a line, and
/// cannot occur inside a document's content there, so splitting on it is exact).
fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    (line.starts_with("---") || line.starts_with("..."))
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ' || c == '\t')
}

/// Splits a YAML stream at its `---` lines. Concatenating the `text` of the parts gives the
/// input back exactly.
pub fn split_docs(input: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in input.split_inclusive('\n') {
        if pos > start && line.starts_with("---") && is_marker(line) {
            docs.push(RawDoc {
                text: &input[start..pos],
            });
            start = pos;
        }
        pos += line.len();
    }
    if start < input.len() {
        docs.push(RawDoc {
            text: &input[start..],
        });
    }
    docs
}

/// The string value of `key` in a mapping value.
pub fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The value at a path of mapping keys.
pub fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// The value at a path of mapping keys, mutably.
pub fn get_path_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(k))
}

/// Inserts `key` just before the key `before` (at the end if `before` is absent), so added
/// fields sit where a person would write them (`initContainers` before `containers`). An
/// existing `key` is overwritten in place.
pub fn insert_before(m: &mut Mapping, key: &str, value: Value, before: &str) {
    if m.contains_key(key) || !m.contains_key(before) {
        m.insert(key.into(), value);
        return;
    }
    let mut value = Some(value);
    for (k, v) in std::mem::take(m) {
        if k.as_str() == Some(before) {
            if let Some(value) = value.take() {
                m.insert(key.into(), value);
            }
        }
        m.insert(k, v);
    }
}

/// Kubernetes reads YAML 1.1, where `defaultMode: 0440` is octal (288); serde_yaml follows
/// YAML 1.2, where a leading-zero scalar is the string "0440", which would be written back
/// quoted and fail the API's integer schema. Turns such strings under the file-mode fields
/// (`defaultMode`, `mode`: Volume, KeyToPath, projected sources) back into their integer.
pub fn fix_file_modes(v: Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| {
                    let mode = matches!(k.as_str(), Some("defaultMode" | "mode"));
                    let v = match (&v, mode) {
                        (Value::String(s), true) => octal(s).map_or(v, Value::from),
                        _ => fix_file_modes(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(fix_file_modes).collect()),
        other => other,
    }
}

/// A YAML 1.1 octal integer (`0440`, `0o440`).
fn octal(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0o").or_else(|| s.strip_prefix('0'))?;
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte_and_cuts_at_markers_only() {
        let input =
            "# head\na: 1\n---\nb: |\n  --- not a marker\n  x\n--- # c\nc: 3\n---x: 1\n...\n";
        let docs = split_docs(input);
        let texts: Vec<&str> = docs.iter().map(|d| d.text).collect();
        assert_eq!(
            texts,
            [
                "# head\na: 1\n",
                "---\nb: |\n  --- not a marker\n  x\n",
                "--- # c\nc: 3\n---x: 1\n...\n"
            ]
        );
        assert_eq!(texts.concat(), input);
        assert!(split_docs("").is_empty());
    }

    #[test]
    fn empty_chunks_are_comments_and_markers_only() {
        assert!(RawDoc {
            text: "---\n# x\n\n"
        }
        .is_empty());
        assert!(RawDoc {
            text: "%YAML 1.2\n"
        }
        .is_empty());
        assert!(!RawDoc {
            text: "---\na: 1\n"
        }
        .is_empty());
    }

    #[test]
    fn rewrite_keeps_the_leading_comments() {
        let doc = RawDoc {
            text: "--- # sep\n# about a\na: 1 # gone\n",
        };
        assert_eq!(doc.rewrite("a: 2\n"), "---\n# about a\na: 2\n");
    }

    #[test]
    fn leading_zero_modes_become_octal_integers() {
        let v: Value = serde_yaml::from_str(
            "defaultMode: 0440\nitems: [{mode: 0o600}]\nname: '0440'\nmode: 420\n",
        )
        .unwrap_or_default();
        assert_eq!(v.get("defaultMode"), Some(&Value::from("0440")));
        let v = fix_file_modes(v);
        assert_eq!(v.get("defaultMode"), Some(&Value::from(288)));
        assert_eq!(
            get_path(&v, &["items"])
                .and_then(|i| i.get(0))
                .and_then(|i| i.get("mode")),
            Some(&Value::from(384))
        );
        assert_eq!(v.get("name"), Some(&Value::from("0440")));
        assert_eq!(v.get("mode"), Some(&Value::from(420)));
    }
}
