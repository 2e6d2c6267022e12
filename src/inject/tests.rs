//! Unit tests of `sluice inject`: the transformation, idempotence and every refusal.

use super::*;
use crate::inject::yaml::get_path;

const BASE: &str = include_str!("../../deploy/k8s/base/deployment.yaml");

const DEPLOYMENT: &str = "\
# header comment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: app
          image: example/app:1 # inline comment
          env:
            - name: OPENAI_BASE_URL
              value: https://gateway.example/v1
        - name: worker
          image: example/worker:1
";

fn run(input: &str) -> Injected {
    match inject(input, &Options::default()) {
        Ok(done) => done,
        Err(e) => panic!("refused: {e:?}"),
    }
}

fn refused(input: &str) -> Vec<InjectError> {
    match inject(input, &Options::default()) {
        Ok(done) => panic!("accepted:\n{}", done.output),
        Err(e) => e,
    }
}

fn docs(output: &str) -> Vec<Value> {
    split_docs(output)
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| serde_yaml::from_str(d.text).unwrap_or_default())
        .collect()
}

fn pod_spec<'a>(doc: &'a Value, path: &[&str]) -> &'a Value {
    get_path(doc, path).unwrap_or(&Value::Null)
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    let env = container.get("env").and_then(Value::as_sequence);
    env.into_iter()
        .flatten()
        .map(|e| {
            let s = |k| str_of(e, k).unwrap_or_default().to_owned();
            (s("name"), s("value"))
        })
        .collect()
}

fn base_sidecar() -> (Value, Value) {
    let base = fix_file_modes(serde_yaml::from_str(BASE).unwrap_or_default());
    let spec = pod_spec(&base, &["spec", "template", "spec"]).clone();
    let sidecar = spec["initContainers"][0].clone();
    (spec, sidecar)
}

#[test]
fn the_injected_sidecar_is_the_base_deployments() {
    let sidecar = Sidecar::new(&Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let (base_spec, base_container) = base_sidecar();
    assert_eq!(str_of(&base_container, "name"), Some(SIDECAR));
    assert_eq!(sidecar.container, base_container);
    let base_volumes = base_spec["volumes"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sidecar.volumes, base_volumes);
    // The secret mode is the integer Kubernetes reads (0440 octal), not the string "0440".
    assert_eq!(
        sidecar.volumes[1]["secret"]["defaultMode"],
        Value::from(0o440)
    );
    // The app's env in the base sets the same values inject sets.
    let app_env = env_of(&base_spec["containers"][0]);
    for var in &sidecar.env {
        assert!(
            app_env.contains(var),
            "{var:?} not in the base app's env {app_env:?}"
        );
    }
    assert_eq!((sidecar.proxy_port, sidecar.admin_port), (8080, 9090));
}

#[test]
fn a_deployment_gets_the_sidecar_volumes_and_env() {
    let done = run(DEPLOYMENT);
    assert_eq!((done.injected, done.already), (1, 0));
    assert!(done
        .output
        .starts_with("# header comment\napiVersion: apps/v1\n"));
    assert!(done
        .output
        .contains("image: example/app:1 # inline comment\n"));
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    let (_, base_container) = base_sidecar();
    let doc = &docs(&done.output)[0];
    let spec = pod_spec(doc, &["spec", "template", "spec"]);
    assert_eq!(spec["initContainers"][0], base_container);
    assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
    let volumes: Vec<&str> = spec["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| str_of(v, "name"))
        .collect();
    assert_eq!(volumes, ["sluice-config", "provider-keys", "tmp"]);
    assert_eq!(spec["securityContext"]["fsGroup"], 65532);
    let keys: Vec<&str> = spec
        .as_mapping()
        .into_iter()
        .flat_map(|m| m.keys().filter_map(Value::as_str))
        .collect();
    assert_eq!(
        keys,
        ["initContainers", "containers", "volumes", "securityContext"]
    );
    // The app's own OPENAI_BASE_URL is kept; only the missing variable is added.
    assert_eq!(
        env_of(&spec["containers"][0]),
        [
            (
                "OPENAI_BASE_URL".into(),
                "https://gateway.example/v1".into()
            ),
            ("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:8080".into())
        ]
    );
    assert_eq!(
        env_of(&spec["containers"][1]),
        [
            ("OPENAI_BASE_URL".into(), "http://127.0.0.1:8080/v1".into()),
            ("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:8080".into())
        ]
    );
    let ann = &doc["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/port"], "9090");
    assert_eq!(doc["spec"]["template"]["metadata"]["labels"]["app"], "web");
}

#[test]
fn a_second_run_changes_nothing() {
    let once = run(&format!("{DEPLOYMENT}---\n{BASE}"));
    assert_eq!((once.injected, once.already), (1, 1));
    let twice = run(&once.output);
    assert_eq!((twice.injected, twice.already), (0, 2));
    assert_eq!(twice.output, once.output);
}

#[test]
fn other_documents_pass_through_byte_for_byte() {
    let other = "---\n# a service\napiVersion: v1\nkind: Service  # keep me\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n---\n# just a comment\n---\nnot: kubernetes\n";
    let done = run(&format!("{DEPLOYMENT}{other}"));
    assert!(done.output.ends_with(other), "{}", done.output);
    assert_eq!(run(other).output, other);
    assert_eq!(run("").output, "");
}

#[test]
fn every_kind_with_a_pod_is_injected() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: i}]}\n";
    let tmpl = "template: {spec: {containers: [{name: a, image: i}]}}";
    let kinds = [
        ("apps/v1", "StatefulSet", format!("{{{tmpl}}}")),
        ("apps/v1", "DaemonSet", format!("{{{tmpl}}}")),
        ("apps/v1", "ReplicaSet", format!("{{{tmpl}}}")),
        ("batch/v1", "Job", format!("{{{tmpl}}}")),
        (
            "batch/v1",
            "CronJob",
            format!("{{schedule: '* * * * *', jobTemplate: {{spec: {{{tmpl}}}}}}}"),
        ),
    ];
    let mut input = pod.to_owned();
    for (api, kind, spec) in &kinds {
        input +=
            &format!("---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {spec}\n");
    }
    let done = run(&input);
    assert_eq!(done.injected, 6);
    let out = docs(&done.output);
    let paths: [&[&str]; 6] = [
        &["spec"],
        &["spec", "template", "spec"],
        &["spec", "template", "spec"],
        &["spec", "template", "spec"],
        &["spec", "template", "spec"],
        &["spec", "jobTemplate", "spec", "template", "spec"],
    ];
    for (doc, path) in out.iter().zip(paths) {
        let spec = pod_spec(doc, path);
        assert_eq!(spec["initContainers"][0]["name"], SIDECAR, "{doc:?}");
        assert_eq!(env_of(&spec["containers"][0]).len(), 2);
    }
    // A bare Pod's annotations go on its own metadata.
    assert_eq!(
        out[0]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
}

#[test]
fn a_list_has_each_item_injected() {
    let input = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: [{name: a}]}}\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n";
    let done = run(input);
    assert_eq!(done.injected, 1);
    let doc = &docs(&done.output)[0];
    assert_eq!(
        doc["items"][0]["spec"]["initContainers"][0]["name"],
        SIDECAR
    );
    assert!(doc["items"][1].get("spec").is_none());
    let err = refused("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {hostNetwork: true, containers: [{name: a}]}}\n");
    assert_eq!(err[0].object, "List item 1 Pod a");
}

#[test]
fn existing_init_containers_volumes_and_annotations_are_kept() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {prometheus.io/scrape: 'true', prometheus.io/port: '8000'}\nspec:\n  securityContext: {fsGroup: 2000}\n  initContainers: [{name: migrate, image: m}]\n  containers: [{name: a, image: i, volumeMounts: [{name: tmp, mountPath: /scratch}]}]\n  volumes:\n  - {name: tmp, hostPath: {path: /tmp}}\n  - {name: sluice-config, configMap: {name: sluice-config}}\n";
    let done = run(input);
    let doc = &docs(&done.output)[0];
    let spec = &doc["spec"];
    let inits: Vec<&str> = spec["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|c| str_of(c, "name"))
        .collect();
    assert_eq!(inits, [SIDECAR, "migrate"]);
    assert_eq!(spec["securityContext"]["fsGroup"], 2000);
    assert_eq!(doc["metadata"]["annotations"]["prometheus.io/port"], "8000");
    // The app's own `tmp` differs: ours is renamed; the identical sluice-config is shared.
    let volumes: Vec<&str> = spec["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| str_of(v, "name"))
        .collect();
    assert_eq!(
        volumes,
        ["tmp", "sluice-config", "provider-keys", "sluice-tmp"]
    );
    let mounts: Vec<&str> = spec["initContainers"][0]["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| str_of(v, "name"))
        .collect();
    assert_eq!(mounts, ["sluice-config", "provider-keys", "sluice-tmp"]);
    assert_eq!(spec["containers"][0]["volumeMounts"][0]["name"], "tmp");
}

#[test]
fn options_change_image_names_ports_and_providers() {
    let opts = Options {
        image: Some("registry.example/sluice:9".into()),
        configmap: Some("team-cfg".into()),
        secret: Some("team-keys".into()),
        proxy_port: Some(18080),
        admin_port: Some(19090),
        providers: vec![
            Provider::Bedrock,
            Provider::OpenAi,
            Provider::Ollama,
            Provider::Gemini,
        ],
    };
    let done = inject(DEPLOYMENT, &opts).unwrap_or_else(|e| panic!("{e:?}"));
    let doc = &docs(&done.output)[0];
    let spec = pod_spec(doc, &["spec", "template", "spec"]);
    let sc = &spec["initContainers"][0];
    assert_eq!(sc["image"], "registry.example/sluice:9");
    assert_eq!(sc["ports"][0]["containerPort"], 19090);
    assert_eq!(spec["volumes"][0]["configMap"]["name"], "team-cfg");
    assert_eq!(spec["volumes"][1]["secret"]["secretName"], "team-keys");
    assert_eq!(
        doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "19090"
    );
    let names: Vec<(String, String)> = env_of(&spec["containers"][1]);
    assert_eq!(
        names,
        [
            ("OPENAI_BASE_URL".into(), "http://127.0.0.1:18080/v1".into()),
            (
                "GOOGLE_GEMINI_BASE_URL".into(),
                "http://127.0.0.1:18080".into()
            ),
            ("OLLAMA_HOST".into(), "http://127.0.0.1:18080".into()),
            (
                "AWS_ENDPOINT_URL_BEDROCK_RUNTIME".into(),
                "http://127.0.0.1:18080".into()
            ),
        ]
    );
    assert_eq!("ollama".parse(), Ok(Provider::Ollama));
    assert!("vertex".parse::<Provider>().is_err());
}

#[test]
fn envfrom_is_warned_about() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, envFrom: [{configMapRef: {name: c}}]}]}\n";
    let done = run(input);
    assert_eq!(done.warnings.len(), 1);
    assert!(done.warnings[0].starts_with("document 1 (Pod p): container \"a\" has envFrom"));
}

#[test]
fn what_cannot_be_injected_is_refused_with_where_and_why() {
    let pod =
        |spec: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {spec}\n");
    let cases = [
        (pod("{hostNetwork: true, containers: [{name: a}]}"), "hostNetwork"),
        (pod("{containers: [{name: sluice, image: other}]}"), "app container is named"),
        (pod("{initContainers: [{name: sluice}], containers: [{name: a}]}"), "not a native sidecar"),
        (pod("{containers: []}"), "no containers"),
        (pod("{}"), "no containers"),
        (pod("{containers: [{name: a, ports: [{containerPort: 8080}]}]}"), "declares port 8080"),
        (pod("{initContainers: [{name: i, ports: [{containerPort: 9090}]}], containers: [{name: a}]}"), "declares port 9090"),
        (pod("{volumes: [{name: tmp, emptyDir: {}}, {name: sluice-tmp, emptyDir: {}}], containers: [{name: a}]}"), "both exist"),
        ("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n".into(), "apiVersion extensions/v1beta1"),
        ("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {}\n".into(), "no pod template"),
    ];
    for (input, why) in &cases {
        let err = refused(input);
        assert_eq!(err.len(), 1, "{input}");
        assert_eq!(err[0].document, 1);
        assert!(err[0].reason.contains(why), "{input}: {}", err[0]);
    }
    let err = refused("a: [1\n");
    assert!(
        err[0].to_string().starts_with("document 1: not valid YAML"),
        "{}",
        err[0]
    );
}

#[test]
fn one_refusal_fails_the_whole_stream_and_all_are_reported() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {hostNetwork: true, containers: [{name: a}]}\n";
    let input = format!("{DEPLOYMENT}---\n{bad}---\n# c\n---\n{bad}");
    let err = refused(&input);
    let text: Vec<String> = err.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2);
    assert!(
        text[0].starts_with("document 2 (Pod bad): hostNetwork"),
        "{text:?}"
    );
    assert!(
        text[1].starts_with("document 3 (Pod bad): hostNetwork"),
        "{text:?}"
    );
}

#[test]
fn a_layout_that_cannot_be_edited_in_place_is_rewritten_with_a_warning() {
    // The container is an alias: adding env to it in place would change its anchor too.
    let input = "# top\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nx-app: &app {name: a, image: i}\nspec:\n  containers: [*app] # inner\n";
    let done = run(input);
    assert_eq!(done.injected, 1);
    assert!(done.output.starts_with("# top\n"), "{}", done.output);
    assert!(!done.output.contains("# inner"));
    assert_eq!(done.warnings.len(), 1, "{:?}", done.warnings);
    assert!(done.warnings[0].contains("rewritten without the comments"));
    let doc = &docs(&done.output)[0];
    assert_eq!(doc["spec"]["initContainers"][0]["name"], SIDECAR);
    assert_eq!(env_of(&doc["spec"]["containers"][0]).len(), 2);
    assert_eq!(run(&done.output).output, done.output);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const LINES: &[&str] = &[
        "---",
        "# comment",
        "apiVersion: v1",
        "apiVersion: apps/v1",
        "kind: Pod",
        "kind: Deployment",
        "kind: Service",
        "metadata: {name: p}",
        "metadata:",
        "  name: x # n",
        "spec:",
        "  template:",
        "    spec: {containers: [{name: t}]}",
        "  containers:",
        "  - name: a",
        "    image: i",
        "    env: [{name: OPENAI_BASE_URL, value: x}]",
        "  - {name: b, ports: [{containerPort: 80}]}",
        "  initContainers: [{name: sluice, restartPolicy: Always}]",
        "  hostNetwork: true",
        "  volumes: [{name: tmp, emptyDir: {}}]",
        "  securityContext: {fsGroup: 7}",
        "x: &a {name: c}",
        "  - *a",
        "",
        "...",
        "\t: [",
    ];

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn split_gives_the_input_back(text in any::<String>()) {
            let docs = split_docs(&text);
            prop_assert_eq!(docs.iter().map(|d| d.text).collect::<String>(), text);
        }

        /// Arbitrary text never panics; manifest-like text that is accepted is accepted again
        /// and comes back byte-identical (idempotence).
        #[test]
        fn accepted_output_is_a_fixed_point(
            lines in prop::collection::vec(prop::sample::select(LINES), 0..24),
            noise in any::<String>(),
        ) {
            let _ = inject(&noise, &Options::default());
            let input = lines.join("\n") + "\n";
            if let Ok(once) = inject(&input, &Options::default()) {
                let twice = inject(&once.output, &Options::default());
                prop_assert!(twice.is_ok(), "{input}\n=>\n{}\n{twice:?}", once.output);
                if let Ok(twice) = twice {
                    prop_assert_eq!(twice.injected, 0);
                    prop_assert_eq!(&twice.output, &once.output);
                }
            }
        }
    }
}
