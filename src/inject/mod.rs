//! `sluice inject`: reads Kubernetes YAML and writes it back with sluice added to every
//! workload as a native sidecar (an `initContainers` entry with `restartPolicy: Always`,
//! Kubernetes 1.29+), the config and key volumes, and the SDK base-URL variables on the app
//! containers. Other objects pass through byte for byte.
//!
//! All or nothing: [`inject`] returns the whole output or every refusal, never part of it.
//! Idempotent: a pod that already has the sidecar is left untouched, and untouched documents
//! are written back as read, so a second run over the output reproduces it exactly.
//!
//! Comments: an injected document is written back by replaying the additions on a lossless
//! syntax tree of its text ([`lossless`]), so its comments, quoting and layout stay; where that
//! cannot be done faithfully (checked by reading the result back) it is re-serialized with only
//! its leading comments kept, and a warning says so.
//!
//! Parts: [`yaml`] splits the stream and re-serializes, [`template`] is the sidecar taken from
//! deploy/k8s/base, [`pod`] edits one pod, [`lossless`] writes it back; this module finds the
//! pods of each kind.

pub mod lossless;
pub mod pod;
pub mod template;
pub mod yaml;

pub use template::{Options, Provider, Sidecar, SIDECAR};

use pod::Outcome;
use serde_yaml::Value;
use std::fmt;
use yaml::{fix_file_modes, get_path_mut, insert_before, split_docs, str_of};

/// Why a document was refused (or the input could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectError {
    /// 1-based index of the document in the stream (blank or comment-only chunks not
    /// counted); 0 for an error about the whole input.
    pub document: usize,
    /// `Kind name` of the object (and of the `List` item), when known.
    pub object: String,
    /// What is wrong and what to do.
    pub reason: String,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.document, self.object.is_empty()) {
            (0, _) => write!(f, "{}", self.reason),
            (n, true) => write!(f, "document {n}: {}", self.reason),
            (n, false) => write!(f, "document {n} ({}): {}", self.object, self.reason),
        }
    }
}

/// The result of a successful run.
#[derive(Debug, Default)]
pub struct Injected {
    /// The whole output stream.
    pub output: String,
    /// Pods the sidecar was added to.
    pub injected: usize,
    /// Pods that already had it.
    pub already: usize,
    /// Notes for the user (stderr), each `document N (Kind name): ...`.
    pub warnings: Vec<String>,
}

/// Injects the sidecar of `opts` into every workload of the YAML stream `input`.
///
/// Workloads: `v1` Pod; `apps/v1` Deployment, StatefulSet, DaemonSet, ReplicaSet; `batch/v1`
/// Job and CronJob (`spec.jobTemplate.spec.template`); `v1` List (each item). Other kinds,
/// and documents that are not Kubernetes objects, pass through unchanged. Errors: every
/// refused document (malformed YAML, a workload kind under another apiVersion, and the pod
/// refusals of [`pod::inject`]), in input order; nothing is output then.
pub fn inject(input: &str, opts: &Options) -> Result<Injected, Vec<InjectError>> {
    let sidecar = Sidecar::new(opts).map_err(|reason| {
        vec![InjectError {
            document: 0,
            object: String::new(),
            reason,
        }]
    })?;
    let mut done = Injected {
        output: String::with_capacity(input.len() + 4096),
        ..Injected::default()
    };
    let mut errors = Vec::new();
    let mut index = 0;
    for raw in split_docs(input) {
        if raw.is_empty() {
            done.output.push_str(raw.text);
            continue;
        }
        index += 1;
        let fail = |object: String, reason: String| InjectError {
            document: index,
            object,
            reason,
        };
        let mut doc = match parse(raw.text) {
            Ok(doc) => doc,
            Err(reason) => {
                errors.push(fail(String::new(), reason));
                continue;
            }
        };
        let before = doc.clone();
        let mut warnings = Vec::new();
        match object(&mut doc, &sidecar, &mut warnings, true) {
            Err((object, reason)) => errors.push(fail(object, reason)),
            Ok(tally) => {
                let name = describe(&doc);
                done.warnings.extend(
                    warnings
                        .into_iter()
                        .map(|w| format!("document {index} ({name}): {w}")),
                );
                done.injected += tally.injected;
                done.already += tally.already;
                if tally.injected == 0 {
                    done.output.push_str(raw.text);
                } else if let Some(text) = lossless::rewrite(raw.text, &before, &doc) {
                    done.output.push_str(&text);
                } else {
                    match serde_yaml::to_string(&doc) {
                        Ok(body) => {
                            done.output.push_str(&raw.rewrite(&body));
                            done.warnings.push(format!(
                                "document {index} ({name}): rewritten without the comments \
                                 inside it (its layout could not be edited in place)"
                            ));
                        }
                        Err(e) => errors.push(fail(name, format!("cannot write it back: {e}"))),
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        Err(errors)
    }
}

/// One document as the injection sees it: merge keys (`<<`) applied, as Kubernetes' YAML
/// reader does, and file modes read as YAML 1.1 octal ([`yaml::fix_file_modes`]).
fn parse(text: &str) -> Result<Value, String> {
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    doc.apply_merge()
        .map_err(|e| format!("bad YAML merge key: {e}"))?;
    Ok(fix_file_modes(doc))
}

/// Pods injected and pods already injected in one object.
#[derive(Default)]
struct Tally {
    injected: usize,
    already: usize,
}

/// `Kind name` of an object, for messages (`generateName` when there is no name).
fn describe(doc: &Value) -> String {
    let kind = str_of(doc, "kind").unwrap_or("?");
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| str_of(m, "name").or_else(|| str_of(m, "generateName")))
        .unwrap_or("(unnamed)");
    format!("{kind} {name}")
}

/// Injects into one object (recursing once into a `List`'s items). Errors carry the object's
/// description.
fn object(
    doc: &mut Value,
    sidecar: &Sidecar,
    warnings: &mut Vec<String>,
    top: bool,
) -> Result<Tally, (String, String)> {
    let name = describe(doc);
    let fail = |reason: String| (name.clone(), reason);
    let (Some(kind), Some(api)) = (str_of(doc, "kind"), str_of(doc, "apiVersion")) else {
        return Ok(Tally::default());
    };
    let (want, path): (&str, &[&str]) = match kind {
        "Pod" => ("v1", &[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            ("apps/v1", &["spec", "template"])
        }
        "Job" => ("batch/v1", &["spec", "template"]),
        "CronJob" => ("batch/v1", &["spec", "jobTemplate", "spec", "template"]),
        "List" if top && api == "v1" => return list(doc, sidecar, warnings),
        _ => return Ok(Tally::default()),
    };
    if api != want {
        return Err(fail(format!(
            "apiVersion {api}: sluice inject knows {kind} as {want} only (the one served since \
             Kubernetes 1.25); convert it first"
        )));
    }
    let pod = if path.is_empty() {
        Some(&mut *doc)
    } else {
        get_path_mut(doc, path)
    };
    let Some(pod) = pod.and_then(Value::as_mapping_mut) else {
        return Err(fail(format!("no pod template at {}", path.join("."))));
    };
    // Taken out and put back in place, so the keys keep their order.
    let mut metadata = pod
        .get_mut("metadata")
        .map(std::mem::take)
        .unwrap_or_default();
    let mut spec = pod.get_mut("spec").map(std::mem::take).unwrap_or_default();
    let outcome = pod::inject(&mut metadata, &mut spec, sidecar, warnings);
    for (key, value) in [("metadata", metadata), ("spec", spec)] {
        match pod.get_mut(key) {
            Some(slot) => *slot = value,
            None if !value.is_null() => insert_before(pod, key, value, "spec"),
            None => {}
        }
    }
    match outcome.map_err(fail)? {
        Outcome::Injected => Ok(Tally {
            injected: 1,
            already: 0,
        }),
        Outcome::AlreadyInjected => Ok(Tally {
            injected: 0,
            already: 1,
        }),
    }
}

/// Each item of a `v1` List (as `kubectl get -o yaml` prints).
fn list(
    doc: &mut Value,
    sidecar: &Sidecar,
    warnings: &mut Vec<String>,
) -> Result<Tally, (String, String)> {
    let mut tally = Tally::default();
    let items = doc.get_mut("items").and_then(Value::as_sequence_mut);
    for (i, item) in items.into_iter().flatten().enumerate() {
        let t = object(item, sidecar, warnings, false)
            .map_err(|(name, reason)| (format!("List item {} {name}", i + 1), reason))?;
        tally.injected += t.injected;
        tally.already += t.already;
    }
    Ok(tally)
}

#[cfg(test)]
mod tests;
