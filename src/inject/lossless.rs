//! Writing an injected document back with its comments, quoting and layout: the changes
//! [`super::pod`] made to the parsed document (keys added to mappings, items added to
//! sequences) are replayed on a lossless syntax tree of the original text (crate `yaml-edit`),
//! and the result is used only if it parses back to exactly the changed document; otherwise
//! the caller falls back to re-serializing (comments inside that document lost).

use serde_yaml::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use yaml_edit::{Document, YamlFile, YamlNode};

/// The text of one document (`---` line and comments included) with `old` turned into `new`,
/// or `None` when the edit cannot be replayed faithfully (anchors, merge keys, a removed key,
/// a library panic, or a result that does not read back as `new`).
pub fn rewrite(text: &str, old: &Value, new: &Value) -> Option<String> {
    // yaml-edit is pre-1.0: a panic in it must not take `sluice inject` down.
    let out = catch_unwind(AssertUnwindSafe(|| replay(text, old, new))).ok()??;
    (super::parse(&out).ok()? == *new).then_some(out)
}

fn replay(text: &str, old: &Value, new: &Value) -> Option<String> {
    let file = YamlFile::from_str(text).ok()?;
    let mut docs = file.documents();
    let doc = docs.next()?;
    if docs.next().is_some() {
        return None;
    }
    let root = doc
        .as_mapping()
        .map(YamlNode::Mapping)
        .or_else(|| doc.as_sequence().map(YamlNode::Sequence))?;
    sync(&root, old, new)?;
    Some(file.to_string())
}

/// Makes the tree `node` (which reads as `old`) read as `new`, where `new` only adds keys and
/// sequence items to `old` (at the front or the end of a sequence) or changes what is below.
fn sync(node: &YamlNode, old: &Value, new: &Value) -> Option<()> {
    if old == new {
        return Some(());
    }
    match (node, old, new) {
        (YamlNode::Mapping(m), Value::Mapping(o), Value::Mapping(n)) => {
            if o.keys().any(|k| !n.contains_key(k)) {
                return None;
            }
            for (i, (k, vn)) in n.iter().enumerate() {
                let key = k.as_str()?;
                match o.get(k) {
                    Some(vo) if vo == vn => {}
                    Some(vo) => sync(&m.get(key)?, vo, vn)?,
                    None => {
                        let value = node_of(vn)?;
                        let next = n.keys().skip(i + 1).find(|k| o.contains_key(*k));
                        match next.and_then(Value::as_str) {
                            Some(before) => {
                                if !m.insert_before(before, key, value) {
                                    return None;
                                }
                            }
                            None => m.set(key, value),
                        }
                    }
                }
            }
            Some(())
        }
        (YamlNode::Sequence(s), Value::Sequence(o), Value::Sequence(n)) => {
            if n.len() < o.len() {
                return None;
            }
            let extra = n.len() - o.len();
            if extra > 0 && n.get(extra..) == Some(&o[..]) {
                for (i, v) in n.iter().take(extra).enumerate() {
                    s.insert(i, node_of(v)?);
                }
                return Some(());
            }
            for (i, (vo, vn)) in o.iter().zip(n).enumerate() {
                if vo != vn {
                    sync(&s.get(i)?, vo, vn)?;
                }
            }
            for v in n.iter().skip(o.len()) {
                s.push(node_of(v)?);
            }
            Some(())
        }
        _ => None,
    }
}

/// A tree node for a value: serialized by serde_yaml (which quotes strings that would read as
/// another type, e.g. `'true'`) and parsed losslessly, so the quoting survives the insertion.
fn node_of(v: &Value) -> Option<YamlNode> {
    let doc = Document::from_str(&serde_yaml::to_string(v).ok()?).ok()?;
    doc.as_mapping()
        .map(YamlNode::Mapping)
        .or_else(|| doc.as_sequence().map(YamlNode::Sequence))
        .or_else(|| doc.as_scalar().map(YamlNode::Scalar))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::yaml::fix_file_modes;

    fn parse(s: &str) -> Value {
        fix_file_modes(serde_yaml::from_str(s).unwrap_or_default())
    }

    #[test]
    fn comments_survive_and_additions_land_in_place() {
        let text = "--- # doc\n# head\na: 1 # one\nlist:\n  - x # ex\nl2: [y]\nm: {k: v}\nz: 0\n";
        let old = parse(text);
        let new = parse(
            "a: 1\nnew: 'true'\nlist: [first, x]\nl2: [y, last]\nm: {k: v, k2: '9090'}\nz: 0\nend: 65532\n",
        );
        let out = rewrite(text, &old, &new).unwrap_or_else(|| panic!("not replayed"));
        for kept in ["--- # doc\n", "# head\n", "a: 1 # one\n", "x # ex\n"] {
            assert!(out.contains(kept), "{kept:?} lost:\n{out}");
        }
        assert_eq!(parse(&out), new, "{out}");
        let new_pos = out.find("new:").unwrap_or(usize::MAX);
        assert!(
            out.find("a: 1").is_some_and(|a| a < new_pos)
                && new_pos < out.find("list:").unwrap_or(0),
            "{out}"
        );
    }

    #[test]
    fn what_cannot_be_replayed_is_refused() {
        let text = "a: 1\nb: 2\n";
        // A removed key, a changed scalar.
        assert_eq!(rewrite(text, &parse(text), &parse("a: 1\n")), None);
        assert_eq!(rewrite(text, &parse(text), &parse("a: 1\nb: 3\n")), None);
        // An alias whose target would change.
        let text = "x: &l [1]\ny: *l\n";
        assert_eq!(
            rewrite(text, &parse(text), &parse("x: [1]\ny: [1, 2]\n")),
            None
        );
    }
}
