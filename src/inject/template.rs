//! The sidecar `sluice inject` adds, read at build time from `deploy/k8s/base` (the sluice
//! init container, the volumes it mounts, the pod annotations and `fsGroup`), so the injected
//! sidecar and the documented deployment cannot drift apart.

use super::yaml::{fix_file_modes, get_path, str_of};
use serde_yaml::{Mapping, Value};
use std::fmt;
use std::str::FromStr;

/// The example deployment with sluice as a native sidecar (the source of the injected parts).
const BASE_DEPLOYMENT: &str = include_str!("../../deploy/k8s/base/deployment.yaml");
/// The base ConfigMap: its `sluice.yaml` gives the listener ports the sidecar serves.
const BASE_CONFIGMAP: &str = include_str!("../../deploy/k8s/base/configmap.yaml");

/// Name of the injected init container; a pod that has an init container of this name with
/// `restartPolicy: Always` is taken as already injected.
pub const SIDECAR: &str = "sluice";

/// A client SDK whose base-URL environment variable `sluice inject` sets on app containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// `OPENAI_BASE_URL` (openai-python 3.x `OpenAI()`, openai-node): value ends in `/v1`.
    OpenAi,
    /// `ANTHROPIC_BASE_URL` (anthropic-sdk-python 2.x `Anthropic()`): no `/v1`.
    Anthropic,
    /// `GOOGLE_GEMINI_BASE_URL` (google-genai 3.x `_base_url.get_base_url`, Gemini API).
    Gemini,
    /// `OLLAMA_HOST` (ollama-python `Client(host=None)`), a URL with scheme and port.
    Ollama,
    /// `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` (botocore's service-specific endpoint variable for
    /// the `bedrock-runtime` service id, AWS SDKs "service-specific endpoints").
    Bedrock,
}

impl Provider {
    /// Every provider, in the order the environment variables are appended.
    pub const ALL: [Provider; 5] = [
        Provider::OpenAi,
        Provider::Anthropic,
        Provider::Gemini,
        Provider::Ollama,
        Provider::Bedrock,
    ];

    /// The environment variable the provider's official SDK reads its base URL from.
    pub fn env_var(self) -> &'static str {
        match self {
            Provider::OpenAi => "OPENAI_BASE_URL",
            Provider::Anthropic => "ANTHROPIC_BASE_URL",
            Provider::Gemini => "GOOGLE_GEMINI_BASE_URL",
            Provider::Ollama => "OLLAMA_HOST",
            Provider::Bedrock => "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
        }
    }

    /// The variable's value for a sidecar proxy listening on `127.0.0.1:port`.
    pub fn base_url(self, port: u16) -> String {
        match self {
            Provider::OpenAi => format!("http://127.0.0.1:{port}/v1"),
            _ => format!("http://127.0.0.1:{port}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Ollama => "ollama",
            Provider::Bedrock => "bedrock",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = String;

    /// `openai`, `anthropic`, `gemini`, `ollama` or `bedrock`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown provider {s:?} (openai, anthropic, gemini, ollama, bedrock)")
            })
    }
}

/// What the caller may change in the injected sidecar; `None` keeps deploy/k8s/base's value.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The sidecar's image (base: `sluice:0.1.0`).
    pub image: Option<String>,
    /// The ConfigMap holding `sluice.yaml` (base: `sluice-config`).
    pub configmap: Option<String>,
    /// The Secret holding the provider-key files (base: `sluice-provider-keys`).
    pub secret: Option<String>,
    /// The proxy listener port the apps' base URLs name; must match the ConfigMap's
    /// `listeners.proxy` (base: 8080).
    pub proxy_port: Option<u16>,
    /// The admin listener port (probes, `prometheus.io/port`); must match the ConfigMap's
    /// `listeners.admin` (base: 9090).
    pub admin_port: Option<u16>,
    /// Whose base-URL variables are set (empty: openai and anthropic, the base routes).
    pub providers: Vec<Provider>,
}

/// The parts injected into a pod, with the options applied.
#[derive(Clone, Debug)]
pub struct Sidecar {
    /// The `initContainers` entry (a mapping).
    pub container: Value,
    /// The pod volumes the container mounts, in the base's order.
    pub volumes: Vec<Value>,
    /// Pod annotations added when the pod has none of them (Prometheus scrape of the admin port).
    pub annotations: Mapping,
    /// The pod `securityContext.fsGroup` set when the pod has none (group of the Secret files).
    pub fs_group: Value,
    /// The proxy port (for the clash check).
    pub proxy_port: u16,
    /// The admin port (for the clash check).
    pub admin_port: u16,
    /// `(variable, value)` set on every app container lacking the variable.
    pub env: Vec<(String, String)>,
}

impl Sidecar {
    /// The sidecar of deploy/k8s/base with `opts` applied. Errors only if the built-in base
    /// manifests lack a part (a test keeps them whole).
    pub fn new(opts: &Options) -> Result<Sidecar, String> {
        let deploy: Value = serde_yaml::from_str(BASE_DEPLOYMENT)
            .map_err(|e| format!("built-in deploy/k8s/base/deployment.yaml: {e}"))?;
        let deploy = fix_file_modes(deploy);
        let pod = get_path(&deploy, &["spec", "template"])
            .ok_or("built-in deployment: no spec.template")?
            .clone();
        let spec = pod.get("spec").ok_or("built-in deployment: no pod spec")?;
        let mut container = spec
            .get("initContainers")
            .and_then(Value::as_sequence)
            .and_then(|s| s.iter().find(|c| str_of(c, "name") == Some(SIDECAR)))
            .ok_or("built-in deployment: no sluice init container")?
            .clone();
        let mounted: Vec<&str> = container
            .get("volumeMounts")
            .and_then(Value::as_sequence)
            .map(|m| m.iter().filter_map(|m| str_of(m, "name")).collect())
            .unwrap_or_default();
        let mut volumes: Vec<Value> = spec
            .get("volumes")
            .and_then(Value::as_sequence)
            .map(|v| {
                v.iter()
                    .filter(|v| str_of(v, "name").is_some_and(|n| mounted.contains(&n)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if volumes.len() != mounted.len() {
            return Err("built-in deployment: a sidecar mount has no volume".into());
        }
        let annotations = pod
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        let fs_group = spec
            .get("securityContext")
            .and_then(|s| s.get("fsGroup"))
            .cloned()
            .ok_or("built-in deployment: no pod securityContext.fsGroup")?;
        let (base_proxy, base_admin) = base_ports()?;

        let mut sidecar = Sidecar {
            container: Value::Null,
            volumes: Vec::new(),
            annotations,
            fs_group,
            proxy_port: opts.proxy_port.unwrap_or(base_proxy),
            admin_port: opts.admin_port.unwrap_or(base_admin),
            env: Vec::new(),
        };
        if let Some(image) = &opts.image {
            set(&mut container, "image", image.as_str().into());
        }
        if let Some(ports) = container.get_mut("ports").and_then(Value::as_sequence_mut) {
            for p in ports
                .iter_mut()
                .filter(|p| str_of(p, "name") == Some("admin"))
            {
                set(p, "containerPort", sidecar.admin_port.into());
            }
        }
        for v in &mut volumes {
            if let (Some(name), Some(cm)) = (&opts.configmap, v.get_mut("configMap")) {
                set(cm, "name", name.as_str().into());
            }
            if let (Some(name), Some(secret)) = (&opts.secret, v.get_mut("secret")) {
                set(secret, "secretName", name.as_str().into());
            }
        }
        if let Some(port) = sidecar.annotations.get_mut("prometheus.io/port") {
            *port = sidecar.admin_port.to_string().into();
        }
        let providers = if opts.providers.is_empty() {
            &[Provider::OpenAi, Provider::Anthropic][..]
        } else {
            &opts.providers[..]
        };
        for p in Provider::ALL.into_iter().filter(|p| providers.contains(p)) {
            let var = (p.env_var().to_owned(), p.base_url(sidecar.proxy_port));
            sidecar.env.push(var);
        }
        sidecar.container = container;
        sidecar.volumes = volumes;
        Ok(sidecar)
    }
}

/// The proxy and admin ports of the base ConfigMap's `sluice.yaml` `listeners`.
fn base_ports() -> Result<(u16, u16), String> {
    let cm: Value = serde_yaml::from_str(BASE_CONFIGMAP)
        .map_err(|e| format!("built-in deploy/k8s/base/configmap.yaml: {e}"))?;
    let conf = cm
        .get("data")
        .and_then(|d| d.get("sluice.yaml"))
        .and_then(Value::as_str)
        .ok_or("built-in configmap: no data.sluice.yaml")?;
    let conf: Value =
        serde_yaml::from_str(conf).map_err(|e| format!("built-in configmap sluice.yaml: {e}"))?;
    let port = |listener: &str| {
        conf.get("listeners")
            .and_then(|l| l.get(listener))
            .and_then(Value::as_str)
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or(format!(
                "built-in configmap: no port in listeners.{listener}"
            ))
    };
    Ok((port("proxy")?, port("admin")?))
}

/// Sets `key` in a mapping value (no-op on a non-mapping).
fn set(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = v.as_mapping_mut() {
        m.insert(key.into(), value);
    }
}
