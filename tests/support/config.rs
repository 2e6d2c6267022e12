//! The config builder: sluice YAML for the shapes the tests and the load bench share (pools
//! of one endpoint to a mock, path-prefix routes, tenants with virtual keys and limits), with
//! YAML fragments merged in for everything else. The schema is sluice's own (README,
//! "Configuration reference"); this only spares each test its copy of the same lines. Keys
//! keep the order they were added in (`serde_yaml::Mapping` is insertion-ordered).
use serde_yaml::{Mapping, Value};

/// The env var whose value every [`Pool`] injects as its key unless told otherwise.
pub const KEY_ENV_NAME: &str = "SLUICE_TEST_KEY";

/// A whole config. [`Config::to_yaml`] gives the YAML without `listeners` (what
/// `Sluice::start` takes); [`Config::with_listeners`] adds them.
#[derive(Debug, Clone, Default)]
pub struct Config {
    root: Mapping,
}

impl Config {
    /// An empty config.
    pub fn new() -> Config {
        Config::default()
    }

    /// Append `pool` to `pools`.
    pub fn pool(mut self, pool: Pool) -> Config {
        push(&mut self.root, "pools", Value::Mapping(pool.0));
        self
    }

    /// Append `route` to `routes` (routes match in order).
    pub fn route(mut self, route: Route) -> Config {
        push(&mut self.root, "routes", Value::Mapping(route.0));
        self
    }

    /// Append `tenant` to `tenants.list`.
    pub fn tenant(mut self, tenant: Tenant) -> Config {
        let tenants = self
            .root
            .entry("tenants".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()))
            .as_mapping_mut()
            .expect("tenants is a mapping");
        push(tenants, "list", Value::Mapping(tenant.0));
        self
    }

    /// Merge the YAML mapping `fragment` (e.g. `"server: {max_body_bytes: 1024}"`) into the
    /// top level; see [`merge`].
    pub fn yaml(self, fragment: &str) -> Config {
        self.yaml_at(&[], fragment)
    }

    /// Merge the YAML mapping `fragment` at `path` (e.g. `&["tenants"]`), creating the
    /// mappings on the way. An empty fragment changes nothing.
    pub fn yaml_at(mut self, path: &[&str], fragment: &str) -> Config {
        let mut at = &mut self.root;
        for key in path {
            at = at
                .entry((*key).into())
                .or_insert_with(|| Value::Mapping(Mapping::new()))
                .as_mapping_mut()
                .expect("a mapping on the path");
        }
        merge(at, parse(fragment));
        self
    }

    /// The YAML (without `listeners`).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.root).expect("a YAML tree serializes")
    }

    /// The YAML with `listeners: {proxy, admin}` (`host:port` each) first.
    pub fn with_listeners(&self, proxy: &str, admin: &str) -> String {
        format!(
            "listeners: {{proxy: '{proxy}', admin: '{admin}'}}\n{}",
            self.to_yaml()
        )
    }
}

/// One pool of one endpoint (more with [`Pool::endpoint`]).
#[derive(Debug, Clone)]
pub struct Pool(Mapping);

impl Pool {
    /// Pool `name` of `provider` (`openai`, `anthropic`, `azure_openai`, ...) with one endpoint
    /// at `url` whose key comes from env [`KEY_ENV_NAME`].
    pub fn new(name: &str, provider: &str, url: &str) -> Pool {
        Pool(map([
            ("name", name.into()),
            ("provider", provider.into()),
            ("endpoints", Value::Sequence(vec![endpoint(url)])),
        ]))
    }
    /// An `openai` pool.
    pub fn openai(name: &str, url: &str) -> Pool {
        Pool::new(name, "openai", url)
    }
    /// An `anthropic` pool.
    pub fn anthropic(name: &str, url: &str) -> Pool {
        Pool::new(name, "anthropic", url)
    }
    /// An `azure_openai` pool, `api_version: "2024-10-21"`.
    pub fn azure(name: &str, url: &str) -> Pool {
        Pool::new(name, "azure_openai", url).yaml("api_version: \"2024-10-21\"")
    }
    /// The last endpoint's keys: one per env var in `envs`, in order.
    pub fn key_envs(mut self, envs: &[&str]) -> Pool {
        let keys: Vec<Value> = envs.iter().map(|e| Value::Mapping(env_key(e))).collect();
        if let Some(ep) = self.last_endpoint() {
            ep.insert("keys".into(), Value::Sequence(keys));
        }
        self
    }
    /// Another endpoint at `url`, its key from env [`KEY_ENV_NAME`].
    pub fn endpoint(mut self, url: &str) -> Pool {
        push(&mut self.0, "endpoints", endpoint(url));
        self
    }
    /// Merge the YAML mapping `fragment` into the pool (`breaker: {...}`, `timeouts: {...}`).
    pub fn yaml(mut self, fragment: &str) -> Pool {
        merge(&mut self.0, parse(fragment));
        self
    }
    fn last_endpoint(&mut self) -> Option<&mut Mapping> {
        self.0
            .get_mut("endpoints")?
            .as_sequence_mut()?
            .last_mut()?
            .as_mapping_mut()
    }
}

/// One route: `match: {path_prefix}` to `pools`, in failover order.
#[derive(Debug, Clone)]
pub struct Route(Mapping);

impl Route {
    /// Route `name` for paths under `path_prefix` to `pools`.
    pub fn prefix(name: &str, path_prefix: &str, pools: &[&str]) -> Route {
        let pools = pools.iter().map(|p| Value::from(*p)).collect();
        Route(map([
            ("name", name.into()),
            (
                "match",
                Value::Mapping(map([("path_prefix", path_prefix.into())])),
            ),
            ("pools", Value::Sequence(pools)),
        ]))
    }
    /// Match only requests whose header `name` is `value`.
    pub fn header(mut self, name: &str, value: &str) -> Route {
        let header = map([("name", name.into()), ("value", value.into())]);
        self.matcher()
            .insert("header".into(), Value::Mapping(header));
        self
    }
    /// Match only requests whose model matches the glob `model`.
    pub fn model(mut self, model: &str) -> Route {
        self.matcher().insert("model".into(), model.into());
        self
    }
    /// Merge the YAML mapping `fragment` into the route (`failover: {...}`).
    pub fn yaml(mut self, fragment: &str) -> Route {
        merge(&mut self.0, parse(fragment));
        self
    }
    fn matcher(&mut self) -> &mut Mapping {
        self.0
            .get_mut("match")
            .and_then(Value::as_mapping_mut)
            .expect("a route has a match")
    }
}

/// One tenant of `tenants.list`.
#[derive(Debug, Clone)]
pub struct Tenant(Mapping);

impl Tenant {
    /// Tenant `name`, with nothing else.
    pub fn new(name: &str) -> Tenant {
        Tenant(map([("name", name.into())]))
    }
    /// Add the virtual key `key`, stored as its SHA-256 (lower-case hex), as a ConfigMap would.
    pub fn virtual_key(mut self, key: &str) -> Tenant {
        let sha = map([("sha256", sha256_hex(key).into())]);
        push(&mut self.0, "virtual_keys", Value::Mapping(sha));
        self
    }
    /// `allow_header: true`: the tenant header may name this tenant.
    pub fn allow_header(mut self) -> Tenant {
        self.0.insert("allow_header".into(), true.into());
        self
    }
    /// Merge the YAML mapping `fragment` into the tenant's `limits`.
    pub fn limits(mut self, fragment: &str) -> Tenant {
        let limits = self
            .0
            .entry("limits".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()))
            .as_mapping_mut()
            .expect("limits is a mapping");
        merge(limits, parse(fragment));
        self
    }
}

/// Lower-case hex SHA-256 of `s` (how configs name virtual keys).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Merge `from` into `into`: a mapping into a mapping key by key, recursively; anything else
/// (scalars, sequences) replaces what was there. `Null` (an empty fragment) changes nothing.
pub fn merge(into: &mut Mapping, from: Value) {
    let Value::Mapping(from) = from else {
        assert!(
            from.is_null(),
            "a YAML fragment must be a mapping: {from:?}"
        );
        return;
    };
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Mapping(a)), Value::Mapping(b)) => merge(a, Value::Mapping(b)),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// A mapping of `pairs`, in order.
fn map<const N: usize>(pairs: [(&str, Value); N]) -> Mapping {
    pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

/// `{env: NAME}`: a key read from env var `name`.
fn env_key(name: &str) -> Mapping {
    map([("env", name.into())])
}

/// `{url, keys: [{env: KEY_ENV_NAME}]}`.
fn endpoint(url: &str) -> Value {
    let keys = Value::Sequence(vec![Value::Mapping(env_key(KEY_ENV_NAME))]);
    Value::Mapping(map([("url", url.into()), ("keys", keys)]))
}

fn parse(fragment: &str) -> Value {
    serde_yaml::from_str(fragment).unwrap_or_else(|e| panic!("bad YAML {fragment:?}: {e}"))
}

fn push(map: &mut Mapping, key: &str, item: Value) {
    if let Some(list) = map
        .entry(key.into())
        .or_insert_with(|| Value::Sequence(Vec::new()))
        .as_sequence_mut()
    {
        list.push(item);
    }
}
