//! `tenants:` -> [`Tenants`]: virtual keys hashed (SHA-256, never kept in clear), the tenant
//! header and who may be selected by it, the default tenant; every error path-qualified.

use super::{secret_digest, Errors, Secrets};
use crate::config::parse::ConfigFile;
use crate::config::snapshot::{TenantId, Tenants};
use http::HeaderName;
use std::sync::Arc;

pub(super) fn compile_tenants(file: &ConfigFile, secrets: Secrets, errs: &mut Errors) -> Tenants {
    let conf = &file.tenants;
    let mut t = Tenants {
        reject_unknown_keys: conf.reject_unknown_keys,
        ..Tenants::default()
    };
    for (i, tc) in conf.list.iter().enumerate() {
        let path = format!("tenants.list[{i}]");
        if tc.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
            continue;
        }
        if t.by_name.contains_key(&tc.name) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate tenant {:?}", tc.name),
            );
            continue;
        }
        let id: TenantId = Arc::from(tc.name.as_str());
        t.by_name.insert(tc.name.clone(), id.clone());
        if tc.allow_header {
            if conf.header.is_none() {
                errs.push(
                    format!("{path}.allow_header"),
                    "needs tenants.header (the header that selects the tenant)",
                );
            }
            t.by_header.insert(tc.name.clone(), id.clone());
        }
        for (k, vk) in tc.virtual_keys.iter().enumerate() {
            let kp = format!("{path}.virtual_keys[{k}]");
            let digest = secret_digest(vk, &kp, secrets, errs);
            if let Some(d) = digest {
                if t.by_key_sha256.insert(d, id.clone()).is_some() {
                    errs.push(kp, "virtual key already assigned to another tenant");
                }
            }
        }
    }
    if let Some(h) = &conf.header {
        match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(name) => t.header = Some(name),
            Err(_) => errs.push("tenants.header", "invalid header name"),
        }
    }
    let default = match (&conf.default, conf.list.is_empty()) {
        (Some(name), _) => Some(name.clone()),
        // No tenants configured at all: everything is tenant "default".
        (None, true) => Some("default".to_owned()),
        (None, false) => None,
    };
    if let Some(name) = default {
        if conf
            .list
            .iter()
            .any(|tc| tc.name == name && !tc.virtual_keys.is_empty())
        {
            errs.push(
                "tenants.default",
                format!("tenant {name:?} has virtual keys: only they may reach it"),
            );
        }
        let id = t
            .by_name
            .entry(name.clone())
            .or_insert_with(|| Arc::from(name.as_str()))
            .clone();
        t.default = Some(id);
    }
    t
}
