//! YAML text -> [`ConfigFile`], collecting every structural error with its path.
//!
//! serde stops at the first error, so the document is first read as a generic YAML value and
//! each section (and each list item) is deserialized on its own: one typo per pool or route is
//! reported, not just the first one in the file.

use super::schema::{
    AccountingConf, CacheSection, DebugConf, LimitsSection, ListenersConf, ModelConf, PoolConf,
    ReloadConf, RouteConf, ServerConf, TenantsConf, TracingConf,
};
use super::{ConfigError, ConfigErrors};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// A parsed (not yet validated) config document.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    /// `listeners`.
    pub listeners: ListenersConf,
    /// `server`.
    pub server: ServerConf,
    /// `pools`.
    pub pools: Vec<PoolConf>,
    /// `routes`.
    pub routes: Vec<RouteConf>,
    /// `tenants`.
    pub tenants: TenantsConf,
    /// `limits`.
    pub limits: LimitsSection,
    /// `models`.
    pub models: Vec<ModelConf>,
    /// `reload`.
    pub reload: ReloadConf,
    /// `accounting`.
    pub accounting: AccountingConf,
    /// `cache`.
    pub cache: CacheSection,
    /// `debug`.
    pub debug: DebugConf,
    /// `tracing`.
    pub tracing: TracingConf,
    /// Names of pools that failed to parse (so routes naming them are not also reported as
    /// naming an unknown pool).
    pub broken_pools: Vec<String>,
}

const SECTIONS: &[&str] = &[
    "listeners",
    "server",
    "pools",
    "routes",
    "tenants",
    "limits",
    "models",
    "reload",
    "accounting",
    "cache",
    "debug",
    "tracing",
];

/// Parse YAML text. Errors: YAML syntax (one error, with line and column), an unknown top-level
/// section, and every item that does not fit the schema, each with its path.
pub fn parse(text: &str) -> Result<ConfigFile, ConfigErrors> {
    let (file, errors) = parse_lenient(text)?;
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Like [`parse`], but returns what did parse alongside the item errors, so that validation
/// can go on and report semantic errors too. Errors: only a YAML syntax error or a document
/// that is not a mapping.
pub fn parse_lenient(text: &str) -> Result<(ConfigFile, Vec<ConfigError>), ConfigErrors> {
    let root: Value = serde_yaml::from_str(text)
        .map_err(|e| ConfigErrors::one("", format!("invalid YAML: {e}")))?;
    let map = match root {
        Value::Mapping(m) => m,
        Value::Null => serde_yaml::Mapping::new(),
        _ => return Err(ConfigErrors::one("", "the config must be a YAML mapping")),
    };
    let mut errors = Vec::new();
    let mut file = ConfigFile::default();
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            errors.push(err("", format!("non-string top-level key {key:?}")));
            continue;
        };
        match name {
            "listeners" => section(name, value, &mut errors, &mut file.listeners),
            "server" => section(name, value, &mut errors, &mut file.server),
            "tenants" => {
                // Tenants one by one, so a typo in one tenant's limits names that tenant.
                let mut value = value;
                let tenants = value
                    .as_mapping_mut()
                    .and_then(|m| m.remove("list"))
                    .unwrap_or(Value::Null);
                section(name, value, &mut errors, &mut file.tenants);
                file.tenants.list = list("tenants.list", tenants, &mut errors);
            }
            "limits" => section(name, value, &mut errors, &mut file.limits),
            "reload" => section(name, value, &mut errors, &mut file.reload),
            "accounting" => section(name, value, &mut errors, &mut file.accounting),
            "cache" => section(name, value, &mut errors, &mut file.cache),
            "debug" => section(name, value, &mut errors, &mut file.debug),
            "tracing" => section(name, value, &mut errors, &mut file.tracing),
            "models" => file.models = list(name, value, &mut errors),
            "pools" => {
                file.broken_pools = broken_names(&value);
                file.pools = list(name, value, &mut errors);
                file.broken_pools
                    .retain(|n| !file.pools.iter().any(|p| &p.name == n));
            }
            "routes" => file.routes = list(name, value, &mut errors),
            other => errors.push(err(
                other,
                format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            )),
        }
    }
    Ok((file, errors))
}

/// Every `name` of the items of a list (those that parse drop out later).
fn broken_names(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn section<T: DeserializeOwned>(
    path: &str,
    value: Value,
    errors: &mut Vec<ConfigError>,
    out: &mut T,
) {
    if value.is_null() {
        return;
    }
    match serde_yaml::from_value::<T>(value) {
        Ok(v) => *out = v,
        Err(e) => errors.push(err(path, clean(&e))),
    }
}

fn list<T: DeserializeOwned>(path: &str, value: Value, errors: &mut Vec<ConfigError>) -> Vec<T> {
    let items = match value {
        Value::Sequence(items) => items,
        Value::Null => return Vec::new(),
        _ => {
            errors.push(err(path, "expected a list"));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match serde_yaml::from_value::<T>(item) {
            Ok(v) => out.push(v),
            Err(e) => errors.push(err(format!("{path}[{i}]"), clean(&e))),
        }
    }
    out
}

/// serde_yaml prefixes nested errors with their inner path (`endpoints[0]: unknown field`);
/// keep it, joined to ours by the caller's prefix.
fn clean(e: &serde_yaml::Error) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_one_error_per_bad_item() {
        let text = "pools:\n  - name: a\n    provider: openai\n    endpoints: []\n    colour: red\n  - name: b\n    provider: nope\n    endpoints: []\nroutes:\n  - name: r\n    match: {path_prefx: /v1}\n    pools: [a]\nextra: 1\n";
        let errors = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["pools[0]", "pools[1]", "routes[0]", "extra"]);
        assert!(
            errors[0].message.contains("colour"),
            "{}",
            errors[0].message
        );
        assert!(errors[1].message.contains("nope"), "{}", errors[1].message);
        assert!(
            errors[2].message.contains("path_prefx"),
            "{}",
            errors[2].message
        );
    }

    #[test]
    fn nested_errors_name_the_tenant() {
        let text = "tenants:\n  default: a\n  list:\n    - name: a\n    - name: b\n      limits: {requests_per_minit: 5}\n";
        let errors = parse(text).unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].path.starts_with("tenants.list[1]"),
            "{:?}",
            errors[0]
        );
        assert!(
            errors[0].message.contains("requests_per_minit"),
            "{:?}",
            errors[0]
        );
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let errors = parse("pools: [\n").unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("invalid YAML"));
    }

    #[test]
    fn empty_document_gives_defaults() {
        let file = parse("").unwrap();
        assert_eq!(file.listeners.proxy, "127.0.0.1:8080");
        assert_eq!(file.server.max_body_bytes, 32 * 1024 * 1024);
    }
}
