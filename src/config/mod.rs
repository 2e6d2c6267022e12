//! Configuration: the YAML schema (`schema`), its parsing with path-qualified errors
//! (`parse`), and its compilation into the immutable [`Snapshot`] the request path reads
//! (`snapshot`, `compile`).

pub mod cache;
mod compile;
mod key;
pub mod limits;
mod parse;
#[cfg(test)]
mod props;
pub mod schema;
mod snapshot;

pub use compile::{compile, Secrets};
pub use key::Secret;
pub use parse::{parse, parse_lenient, ConfigFile};
pub use snapshot::Profiling;
pub use snapshot::{
    Accounting, ConnectionLimits, Endpoint, Failover, HealthCheck, Pool, Retry, Route, Snapshot,
    TenantId, Tenants, Timeouts,
};

use std::fmt;
use std::path::Path;

/// One validation problem: `path` is where in the YAML (`routes[2].pools[0]`), `message` what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Location in the document, dotted with indices (`pools[0].endpoints[1].url`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub(crate) fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

/// Read, parse and validate a config file without touching secrets (what `sluice validate`
/// runs: key files and env vars may not exist where configs are checked).
///
/// Errors: every problem, path-qualified (schema errors, then semantic ones); a file that
/// cannot be read is one error.
pub fn validate_file(path: &Path) -> Result<Snapshot, ConfigErrors> {
    load(path, Secrets::Skip)
}

/// Read, parse, validate and compile a config file, loading every key (what `sluice run`
/// does). Errors: as [`validate_file`], plus missing env vars or unreadable key files.
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigErrors> {
    load(path, Secrets::Load)
}

fn load(path: &Path, secrets: Secrets) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
    load_text(&text, secrets)
}

/// Parse, validate and compile config `text`; the snapshot records the text's SHA-256.
pub fn load_text(text: &str, secrets: Secrets) -> Result<Snapshot, ConfigErrors> {
    use sha2::{Digest, Sha256};
    let (file, mut errors) = parse_lenient(text)?;
    match compile(&file, secrets) {
        Ok(mut snapshot) if errors.is_empty() => {
            snapshot.source_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
            Ok(snapshot)
        }
        Ok(_) => Err(ConfigErrors(errors)),
        Err(more) => {
            errors.extend(more.0);
            Err(ConfigErrors(errors))
        }
    }
}
