//! Adding the sidecar to one pod (a Pod's `metadata` + `spec`, or a workload's pod template):
//! the checks that refuse a pod sluice cannot join, then the edits.

use super::template::{Sidecar, SIDECAR};
use super::yaml::{insert_before, str_of};
use serde_yaml::{Mapping, Sequence, Value};

/// What happened to a pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar, volumes, annotations and env vars were added.
    Injected,
    /// The pod already has a sluice native sidecar: left exactly as it was.
    AlreadyInjected,
}

/// Adds `sidecar` to the pod whose `metadata` and `spec` mappings are given (`metadata` is
/// created if absent). Pushes notes the user should read (not errors) onto `warnings`.
///
/// Errors (the pod is refused, with the reason): no `containers`; a container named `sluice`
/// in `containers`, or an init container named `sluice` that is not a native sidecar
/// (`restartPolicy: Always`); `hostNetwork: true` (the sidecar's loopback ports would be the
/// node's, shared by every such pod on it); a container declaring the proxy or admin port; a
/// volume name clash that renaming cannot avoid.
pub fn inject(
    metadata: &mut Value,
    spec: &mut Value,
    sidecar: &Sidecar,
    warnings: &mut Vec<String>,
) -> Result<Outcome, String> {
    let Some(spec) = spec.as_mapping_mut() else {
        return Err("the pod spec is not a mapping".into());
    };
    let containers = spec.get("containers").and_then(Value::as_sequence);
    if containers.is_none_or(Vec::is_empty) {
        return Err("the pod template has no containers".into());
    }
    let inits = spec.get("initContainers").and_then(Value::as_sequence);
    if let Some(ours) = inits.and_then(|i| i.iter().find(|c| str_of(c, "name") == Some(SIDECAR))) {
        return if str_of(ours, "restartPolicy") == Some("Always") {
            Ok(Outcome::AlreadyInjected)
        } else {
            Err(format!(
                "init container {SIDECAR:?} is not a native sidecar (no restartPolicy: Always): \
                 not one sluice inject added; rename or remove it"
            ))
        };
    }
    if containers
        .into_iter()
        .flatten()
        .any(|c| str_of(c, "name") == Some(SIDECAR))
    {
        return Err(format!(
            "an app container is named {SIDECAR:?}: sluice runs as an init container of that \
             name; rename the app container"
        ));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(format!(
            "hostNetwork: true: the sidecar's ports {} and {} would be the node's, clashing \
             between pods on the node",
            sidecar.proxy_port, sidecar.admin_port
        ));
    }
    check_ports(spec, sidecar)?;

    let volume_names = add_volumes(spec, sidecar)?;
    let mut container = sidecar.container.clone();
    rename_mounts(&mut container, &volume_names);
    if !spec.contains_key("initContainers") {
        insert_before(spec, "initContainers", Value::Null, "containers");
    }
    let inits = entry_seq(spec, "initContainers")?;
    // First: Kubernetes starts init containers in order and waits for a native sidecar's
    // startupProbe before starting the next, so the app's own init containers can call it too.
    inits.insert(0, container);
    set_fs_group(spec, sidecar)?;
    if let Some(apps) = spec.get_mut("containers").and_then(Value::as_sequence_mut) {
        for app in apps.iter_mut() {
            set_env(app, sidecar, warnings)?;
        }
    }
    add_annotations(metadata, sidecar)?;
    Ok(Outcome::Injected)
}

/// Refuses a pod where a container declares the sidecar's proxy or admin port (containers of
/// a pod share its network namespace: two listeners cannot bind the same port).
fn check_ports(spec: &Mapping, sidecar: &Sidecar) -> Result<(), String> {
    let all = ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_sequence))
        .flatten();
    for c in all {
        let ports = c.get("ports").and_then(Value::as_sequence).into_iter();
        for p in ports.flatten() {
            let port = p.get("containerPort").and_then(Value::as_u64);
            let ours = [sidecar.proxy_port, sidecar.admin_port].map(u64::from);
            if let Some(port) = port.filter(|p| ours.contains(p)) {
                return Err(format!(
                    "container {:?} declares port {port}, which the sidecar listens on: pick \
                     other ports (--proxy-port / --admin-port and the ConfigMap's listeners)",
                    str_of(c, "name").unwrap_or("?")
                ));
            }
        }
    }
    Ok(())
}

/// Adds the sidecar's volumes. A pod volume of the same name and the same definition is
/// shared; a different one keeps its name and ours becomes `sluice-<name>`. Returns the
/// `(base name, name used)` pairs for the mounts.
fn add_volumes(spec: &mut Mapping, sidecar: &Sidecar) -> Result<Vec<(String, String)>, String> {
    let volumes = entry_seq(spec, "volumes")?;
    let mut names = Vec::new();
    for ours in &sidecar.volumes {
        let base = str_of(ours, "name").unwrap_or_default().to_owned();
        let existing = |name: &str| volumes.iter().find(|v| str_of(v, "name") == Some(name));
        let mut name = base.clone();
        match existing(&base) {
            Some(v) if v == ours => {}
            None => volumes.push(ours.clone()),
            Some(_) => {
                name = format!("{SIDECAR}-{base}");
                if existing(&name).is_some() {
                    return Err(format!(
                        "volumes {base:?} and {name:?} both exist and differ from the \
                         sidecar's {base:?}: rename one"
                    ));
                }
                let mut renamed = ours.clone();
                if let Some(m) = renamed.as_mapping_mut() {
                    m.insert("name".into(), name.as_str().into());
                }
                volumes.push(renamed);
            }
        }
        names.push((base, name));
    }
    Ok(names)
}

/// Points the container's volume mounts at the names [`add_volumes`] chose.
fn rename_mounts(container: &mut Value, names: &[(String, String)]) {
    let mounts = container
        .get_mut("volumeMounts")
        .and_then(Value::as_sequence_mut);
    for m in mounts.into_iter().flatten() {
        let Some(name) = m.get_mut("name") else {
            continue;
        };
        if let Some((_, new)) = names.iter().find(|(base, _)| name.as_str() == Some(base)) {
            *name = new.as_str().into();
        }
    }
}

/// Sets the pod's `securityContext.fsGroup` when absent: the Secret's key files are mode 0440,
/// readable through the group only. An existing fsGroup is kept (Kubernetes adds it to every
/// container's supplementary groups, so the sidecar reads the files through it).
fn set_fs_group(spec: &mut Mapping, sidecar: &Sidecar) -> Result<(), String> {
    let ctx = entry_map(spec, "securityContext")?;
    if !ctx.contains_key("fsGroup") {
        ctx.insert("fsGroup".into(), sidecar.fs_group.clone());
    }
    Ok(())
}

/// Appends each base-URL variable the app container does not set in `env` already.
fn set_env(app: &mut Value, sidecar: &Sidecar, warnings: &mut Vec<String>) -> Result<(), String> {
    let name = str_of(app, "name").unwrap_or("?").to_owned();
    let Some(app) = app.as_mapping_mut() else {
        return Err(format!("container {name:?} is not a mapping"));
    };
    if app.contains_key("envFrom") {
        warnings.push(format!(
            "container {name:?} has envFrom: an `env` entry wins over it, so a base URL set \
             there is replaced; set it in `env` to keep it"
        ));
    }
    let env = entry_seq(app, "env")?;
    for (var, value) in &sidecar.env {
        if !env.iter().any(|e| str_of(e, "name") == Some(var)) {
            let mut entry = Mapping::new();
            entry.insert("name".into(), var.as_str().into());
            entry.insert("value".into(), value.as_str().into());
            env.push(Value::Mapping(entry));
        }
    }
    Ok(())
}

/// Adds the Prometheus scrape annotations when the pod has none of them (a pod that already
/// tells Prometheus to scrape its app keeps that).
fn add_annotations(metadata: &mut Value, sidecar: &Sidecar) -> Result<(), String> {
    if metadata.is_null() {
        *metadata = Value::Mapping(Mapping::new());
    }
    let Some(metadata) = metadata.as_mapping_mut() else {
        return Err("the pod metadata is not a mapping".into());
    };
    let annotations = entry_map(metadata, "annotations")?;
    if sidecar
        .annotations
        .keys()
        .any(|k| annotations.contains_key(k))
    {
        return Ok(());
    }
    for (k, v) in &sidecar.annotations {
        annotations.insert(k.clone(), v.clone());
    }
    Ok(())
}

/// The sequence at `key`, created empty if absent or null.
fn entry_seq<'a>(m: &'a mut Mapping, key: &str) -> Result<&'a mut Sequence, String> {
    let v = m.entry(key.into()).or_insert(Value::Null);
    if v.is_null() {
        *v = Value::Sequence(Sequence::new());
    }
    v.as_sequence_mut()
        .ok_or_else(|| format!("{key} is not a list"))
}

/// The mapping at `key`, created empty if absent or null.
fn entry_map<'a>(m: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, String> {
    let v = m.entry(key.into()).or_insert(Value::Null);
    if v.is_null() {
        *v = Value::Mapping(Mapping::new());
    }
    v.as_mapping_mut()
        .ok_or_else(|| format!("{key} is not a mapping"))
}
