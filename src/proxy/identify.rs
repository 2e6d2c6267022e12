//! Pipeline stage 1 (request_filter): who is calling. A virtual key (the Bearer / `x-api-key`
//! the app sends) names its tenant; else the tenant header; else the default tenant.

use crate::config::{TenantId, Tenants};
use crate::error::SluiceError;
use crate::provider::client_key;
use pingora_http::RequestHeader;

/// Identify the tenant of `req`.
///
/// Order: a known virtual key; the configured tenant header (must name a configured tenant);
/// then, if the client sent a key that is not a virtual key while virtual keys exist and
/// `reject_unknown_keys` is on, [`SluiceError::UnknownVirtualKey`]; else the default tenant,
/// or [`SluiceError::UnknownTenant`] without one.
pub fn tenant(req: &RequestHeader, tenants: &Tenants) -> Result<TenantId, SluiceError> {
    let key = client_key(req).filter(|k| !k.is_empty());
    if let Some(t) = key.and_then(|k| tenants.by_virtual_key(k)) {
        return Ok(t.clone());
    }
    if let Some(name) = tenants.header.as_ref().and_then(|h| req.headers.get(h)) {
        let name = name.to_str().map_err(|_| SluiceError::UnknownTenant)?;
        return tenants
            .by_name
            .get(name.trim())
            .cloned()
            .ok_or(SluiceError::UnknownTenant);
    }
    if key.is_some() && tenants.reject_unknown_keys && !tenants.by_key_sha256.is_empty() {
        return Err(SluiceError::UnknownVirtualKey);
    }
    tenants.default.clone().ok_or(if key.is_some() {
        SluiceError::UnknownVirtualKey
    } else {
        SluiceError::UnknownTenant
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile, parse, Secrets};
    use sha2::{Digest, Sha256};

    fn tenants(extra: &str) -> Tenants {
        let hash = hex::encode(Sha256::digest(b"vk-a"));
        let yaml = format!(
            "tenants:\n  header: x-tenant\n  list:\n    - name: a\n      virtual_keys: [{{sha256: {hash}}}]\n    - name: b\n{extra}"
        );
        compile(&parse(&yaml).unwrap(), Secrets::Skip)
            .unwrap()
            .tenants
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn identification_order() {
        let t = tenants("");
        assert_eq!(
            &*tenant(&req(&[("authorization", "Bearer vk-a")]), &t).unwrap(),
            "a"
        );
        assert_eq!(&*tenant(&req(&[("x-api-key", "vk-a")]), &t).unwrap(), "a");
        assert_eq!(&*tenant(&req(&[("x-tenant", "b")]), &t).unwrap(), "b");
        assert!(matches!(
            tenant(&req(&[("x-tenant", "zz")]), &t),
            Err(SluiceError::UnknownTenant)
        ));
        assert!(matches!(
            tenant(&req(&[("authorization", "Bearer nope")]), &t),
            Err(SluiceError::UnknownVirtualKey)
        ));
        assert!(matches!(
            tenant(&req(&[]), &t),
            Err(SluiceError::UnknownTenant)
        ));
    }

    #[test]
    fn default_tenant_when_unknown_keys_allowed() {
        let t = tenants("  default: b\n  reject_unknown_keys: false\n");
        assert_eq!(
            &*tenant(&req(&[("authorization", "Bearer nope")]), &t).unwrap(),
            "b"
        );
        assert_eq!(&*tenant(&req(&[]), &t).unwrap(), "b");
    }
}
