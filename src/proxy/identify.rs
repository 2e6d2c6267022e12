//! Pipeline stage 1 (request_filter): who is calling. A virtual key (the Bearer / `x-api-key`
//! / `x-goog-api-key` / Gemini `?key=` the app sends) authenticates its tenant; the tenant
//! header selects only tenants that allow it; else the default tenant. README "Who is calling"
//! has the full table.

use crate::config::{TenantId, Tenants};
use crate::error::SluiceError;
use crate::provider::client_key;
use pingora_http::RequestHeader;

/// Identify the tenant of `req`.
///
/// 1. A known virtual key: its tenant. A tenant header alongside must name that same tenant,
///    else [`SluiceError::TenantMismatch`] (403).
/// 2. A key that is not a virtual key, while virtual keys are configured and
///    `reject_unknown_keys` is on: [`SluiceError::UnknownVirtualKey`] (401), whatever the
///    header says. With `reject_unknown_keys` off (or no virtual keys configured at all) the key
///    identifies nothing and the request goes on as if it had none.
/// 3. The tenant header: a tenant with `allow_header: true`; a configured tenant without it is
///    [`SluiceError::TenantHeaderNotAllowed`] (403); any other value
///    [`SluiceError::UnknownTenant`] (401).
/// 4. The default tenant; without one [`SluiceError::UnknownVirtualKey`] when an unknown key
///    was sent, else [`SluiceError::UnknownTenant`] (both 401).
pub fn tenant(req: &RequestHeader, tenants: &Tenants) -> Result<TenantId, SluiceError> {
    let key = client_key(req).filter(|k| !k.is_empty());
    let named = tenants
        .header
        .as_ref()
        .and_then(|h| req.headers.get(h))
        .map(|v| v.to_str().map(str::trim));
    if let Some(t) = key.and_then(|k| tenants.by_virtual_key(k)) {
        return match named {
            None => Ok(t.clone()),
            Some(Ok(name)) if name == &**t => Ok(t.clone()),
            Some(_) => Err(SluiceError::TenantMismatch),
        };
    }
    let unknown_key = key.is_some() && !tenants.by_key_sha256.is_empty();
    if unknown_key && tenants.reject_unknown_keys {
        return Err(SluiceError::UnknownVirtualKey);
    }
    if let Some(name) = named {
        let name = name.map_err(|_| SluiceError::UnknownTenant)?;
        if let Some(t) = tenants.by_header.get(name) {
            return Ok(t.clone());
        }
        return Err(if tenants.by_name.contains_key(name) {
            SluiceError::TenantHeaderNotAllowed
        } else {
            SluiceError::UnknownTenant
        });
    }
    tenants.default.clone().ok_or(if unknown_key {
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

    /// Tenants `a` (virtual key `vk-a`), `b` (no key, header not allowed), `c` (header
    /// allowed), header `x-tenant`, plus `extra` (indented 2) in `tenants`.
    fn tenants(extra: &str) -> Tenants {
        let hash = hex::encode(Sha256::digest(b"vk-a"));
        let yaml = format!(
            "tenants:\n  header: x-tenant\n  list:\n    - name: a\n      virtual_keys: [{{sha256: {hash}}}]\n    - name: b\n    - name: c\n      allow_header: true\n{extra}"
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

    fn who(t: &Tenants, headers: &[(&str, &str)]) -> Result<String, &'static str> {
        tenant(&req(headers), t)
            .map(|t| t.to_string())
            .map_err(|e| e.label())
    }

    #[test]
    fn a_known_key_names_its_tenant_and_the_header_may_only_agree() {
        let t = tenants("");
        assert_eq!(who(&t, &[("authorization", "Bearer vk-a")]), Ok("a".into()));
        assert_eq!(who(&t, &[("x-api-key", "vk-a")]), Ok("a".into()));
        assert_eq!(who(&t, &[("x-goog-api-key", "vk-a")]), Ok("a".into()));
        assert_eq!(
            who(&t, &[("x-api-key", "vk-a"), ("x-tenant", " a ")]),
            Ok("a".into())
        );
        for other in ["b", "c", "zz"] {
            assert_eq!(
                who(&t, &[("x-api-key", "vk-a"), ("x-tenant", other)]),
                Err("tenant_mismatch"),
                "{other}"
            );
        }
    }

    #[test]
    fn an_unknown_key_is_refused_whatever_the_header_says() {
        let t = tenants("  default: b\n");
        for header in [None, Some("a"), Some("b"), Some("c"), Some("zz")] {
            let mut h = vec![("authorization", "Bearer nope")];
            h.extend(header.map(|v| ("x-tenant", v)));
            assert_eq!(who(&t, &h), Err("invalid_api_key"), "{header:?}");
        }
    }

    #[test]
    fn the_header_selects_only_tenants_that_allow_it() {
        let t = tenants("");
        assert_eq!(who(&t, &[("x-tenant", "c")]), Ok("c".into()));
        assert_eq!(
            who(&t, &[("x-tenant", "a")]),
            Err("tenant_header_not_allowed")
        );
        assert_eq!(
            who(&t, &[("x-tenant", "b")]),
            Err("tenant_header_not_allowed")
        );
        assert_eq!(who(&t, &[("x-tenant", "zz")]), Err("unknown_tenant"));
        assert_eq!(who(&t, &[]), Err("unknown_tenant"));
    }

    #[test]
    fn with_unknown_keys_allowed_the_key_identifies_nothing() {
        let t = tenants("  default: b\n  reject_unknown_keys: false\n");
        assert_eq!(who(&t, &[("authorization", "Bearer nope")]), Ok("b".into()));
        assert_eq!(who(&t, &[]), Ok("b".into()));
        assert_eq!(
            who(&t, &[("authorization", "Bearer nope"), ("x-tenant", "c")]),
            Ok("c".into())
        );
        assert_eq!(
            who(&t, &[("authorization", "Bearer nope"), ("x-tenant", "a")]),
            Err("tenant_header_not_allowed")
        );
        let no_default = tenants("  reject_unknown_keys: false\n");
        assert_eq!(
            who(&no_default, &[("authorization", "Bearer nope")]),
            Err("invalid_api_key")
        );
    }

    #[test]
    fn the_default_tenant_must_not_have_keys_and_allow_header_needs_the_header() {
        let hash = hex::encode(Sha256::digest(b"vk-a"));
        let yaml = format!(
            "tenants:\n  default: a\n  list:\n    - name: a\n      virtual_keys: [{{sha256: {hash}}}]\n    - name: c\n      allow_header: true\n"
        );
        let errs = compile(&parse(&yaml).unwrap(), Secrets::Skip)
            .unwrap_err()
            .to_string();
        assert!(errs.contains("tenants.default"), "{errs}");
        assert!(errs.contains("tenants.list[1].allow_header"), "{errs}");
    }
}
