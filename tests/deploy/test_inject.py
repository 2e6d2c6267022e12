"""`sluice inject` over a corpus of manifests (tests/deploy/inject/): every kind, multi-document,
already injected, an app with its own base URL, a Pod with init containers and volumes, a List;
and the refusals (tests/deploy/inject/refused/).

Properties, not golden files: the sidecar is the base deployment's (deploy/k8s/base), first
among the init containers and a native sidecar; its volumes are there; the base-URL variables
are set only where the app did not set them, the app's own values kept; other documents and
other fields unchanged; every output schema-valid (offline, strict, both K8S_VERSIONS); a second
run byte-identical; stdin and file input give the same output. Uses the built binary
($SLUICE_BIN, as test_manifests.py does).

    SLUICE_BIN=target/debug/sluice pytest -q tests/deploy/test_inject.py
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from test_manifests import BASE, K8S_VERSIONS, ROOT, SIDECAR, assert_schema_valid, load_docs, rel, sluice_bin

CORPUS = Path(__file__).resolve().parent / "inject"
CASES = sorted(CORPUS.glob("*.yaml")) + [BASE / "deployment.yaml"]
REFUSED = sorted((CORPUS / "refused").glob("*.yaml"))

# The SDKs' base-URL variables for the default providers (openai, anthropic), and the values
# the base deployment gives its app (which inject must match).
DEFAULT_ENV = {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1",
               "ANTHROPIC_BASE_URL": "http://127.0.0.1:8080"}

# kind -> path from the object to its pod (metadata + spec)
POD_PATHS = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(sluice_bin()), "inject", *args], input=stdin, check=False,
                          capture_output=True, text=True, timeout=60)


def inject_ok(*args: str, stdin: str | None = None) -> str:
    out = inject(*args, stdin=stdin)
    assert out.returncode == 0, f"sluice inject {args} exited {out.returncode}:\n{out.stderr}"
    return out.stdout


def objects(docs: list[dict]) -> list[dict]:
    """Top-level objects with List items flattened."""
    out = []
    for d in docs:
        out += d.get("items", []) if d.get("kind") == "List" else [d]
    return out


def pod_of(obj: dict) -> dict | None:
    path = POD_PATHS.get(obj.get("kind"))
    if path is None:
        return None
    pod = obj
    for key in path:
        pod = pod[key]
    return pod


def base_parts() -> tuple[dict, dict, dict]:
    """The base deployment's sidecar container, its volumes by name, and the pod annotations."""
    (deploy,) = load_docs(BASE / "deployment.yaml")
    tmpl = deploy["spec"]["template"]
    (sidecar,) = [c for c in tmpl["spec"]["initContainers"] if c["name"] == SIDECAR]
    mounted = {m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in tmpl["spec"]["volumes"] if v["name"] in mounted}
    return sidecar, volumes, tmpl["metadata"]["annotations"]


@pytest.fixture(scope="module", params=CASES, ids=rel)
def case(request) -> tuple[Path, str, str]:
    path = request.param
    return path, path.read_text(), inject_ok(str(path))


def test_corpus_covers_every_kind():
    kinds = {o.get("kind") for p in CASES for o in objects(load_docs(p))}
    assert set(POD_PATHS) - {"ReplicaSet"} <= kinds, kinds
    assert any(d.get("kind") == "List" for p in CASES for d in load_docs(p))
    assert any(len(load_docs(p)) > 1 for p in CASES), "a multi-document file"


def test_sidecar_added_as_in_the_base(case):
    path, before, after = case
    sidecar, base_volumes, annotations = base_parts()
    old = objects(load_docs(path))
    new = objects([d for d in yaml.safe_load_all(after) if d])
    assert len(old) == len(new), rel(path)
    for o, n in zip(old, new):
        pod_before, pod_after = pod_of(o), pod_of(n)
        if pod_before is None:
            assert n == o, f"{rel(path)}: {o['kind']} changed"
            continue
        where = f"{rel(path)}: {n['kind']} {n['metadata']['name']}"
        spec, spec_before = pod_after["spec"], pod_before["spec"]
        inits = spec["initContainers"]
        already = any(c["name"] == SIDECAR for c in spec_before.get("initContainers", []))
        if already:
            assert n == o, f"{where}: already injected, must be left alone"
            continue

        # The native sidecar, first, exactly the base's but for the volume names it mounts.
        assert inits[0]["name"] == SIDECAR and inits[0]["restartPolicy"] == "Always", where
        assert inits[1:] == spec_before.get("initContainers", []), f"{where}: app inits kept"
        names = {m["name"] for m in sidecar["volumeMounts"]}
        renamed = {m["name"]: m2["name"]
                   for m, m2 in zip(sidecar["volumeMounts"], inits[0]["volumeMounts"])}
        expect = copy.deepcopy(sidecar)
        for m in expect["volumeMounts"]:
            m["name"] = renamed[m["name"]]
        assert inits[0] == expect, where

        # Its volumes are present (under the name its mounts use), the app's kept untouched.
        volumes = {v["name"]: v for v in spec["volumes"]}
        for name in names:
            got = copy.deepcopy(volumes[renamed[name]])
            got["name"] = name
            assert got == base_volumes[name], f"{where}: volume {name}"
        for v in spec_before.get("volumes", []):
            assert volumes[v["name"]] == v, f"{where}: app volume {v['name']} changed"

        # Base URLs only where the app did not set them; its own values and other vars kept.
        for c, c_before in zip(spec["containers"], spec_before["containers"]):
            env = {e["name"]: e.get("value") for e in c["env"]}
            own = {e["name"]: e.get("value") for e in c_before.get("env", [])}
            assert c["env"][:len(own)] == c_before.get("env", []), f"{where}: {c['name']} env"
            for var, value in DEFAULT_ENV.items():
                assert env[var] == own.get(var, value), f"{where}: {c['name']} {var}"
            assert {k: v for k, v in c.items() if k != "env"} == \
                {k: v for k, v in c_before.items() if k != "env"}, f"{where}: {c['name']}"

        # Secret files (mode 0440) readable through fsGroup; an app's own fsGroup is kept.
        fs_group = spec_before.get("securityContext", {}).get("fsGroup", 65532)
        assert spec["securityContext"]["fsGroup"] == fs_group, where
        # Prometheus: the sidecar's scrape annotations unless the app has its own.
        own_ann = (pod_before.get("metadata") or {}).get("annotations", {})
        ann = pod_after["metadata"].get("annotations", {})
        if any(k in own_ann for k in annotations):
            assert ann == own_ann, where
        else:
            assert {k: ann[k] for k in annotations} == annotations, where


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_output_is_schema_valid(case, version):
    path, _, after = case
    for doc in yaml.safe_load_all(after):
        if doc and doc.get("kind") != "List":
            assert_schema_valid(doc, version, f"inject {rel(path)}")
        elif doc:
            for item in doc["items"]:
                assert_schema_valid(item, version, f"inject {rel(path)}")


def test_second_run_is_byte_identical(case):
    path, _, after = case
    assert inject_ok("-", stdin=after) == after, rel(path)


def test_stdin_equals_file(case):
    path, before, after = case
    assert inject_ok(stdin=before) == after
    assert inject_ok("-", stdin=before) == after


def test_untouched_documents_keep_their_text(case):
    """Documents inject does not change (a Service, a ConfigMap, an injected pod) come back
    byte for byte, comments included."""
    path, before, after = case
    for chunk in before.split("\n---\n"):
        docs = [d for d in yaml.safe_load_all(chunk) if d]
        if docs and all(pod_of(o) is None or any(
                c["name"] == SIDECAR for c in pod_of(o)["spec"].get("initContainers", []))
                for o in objects(docs)):
            assert chunk in after, f"{rel(path)}: a document not injected was rewritten"


def test_comments_are_kept(case):
    """Every comment of the input is in the output, injected documents included."""
    path, before, after = case
    for line in before.splitlines():
        if "#" in line:
            comment = line[line.index("#"):]
            assert comment in after, f"{rel(path)}: comment {comment!r} lost"


def test_base_deployment_is_left_alone():
    path = BASE / "deployment.yaml"
    assert inject_ok(str(path)) == path.read_text()


def test_options_reach_the_output():
    path = CORPUS / "job.yaml"
    out = inject_ok(str(path), "--image", "registry.example/sluice:9", "--configmap", "cfg",
                    "--secret", "keys", "--providers", "openai,ollama,bedrock,gemini")
    (job,) = yaml.safe_load_all(out)
    spec = job["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["image"] == "registry.example/sluice:9"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["sluice-config"]["configMap"]["name"] == "cfg"
    assert vols["provider-keys"]["secret"]["secretName"] == "keys"
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env == {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1",
                   "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:8080",
                   "OLLAMA_HOST": "http://127.0.0.1:8080",
                   "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "http://127.0.0.1:8080"}
    for version in K8S_VERSIONS:
        assert_schema_valid(job, version, "inject --image ...")
    bad = inject(str(path), "--providers", "vertex")
    assert bad.returncode != 0 and not bad.stdout and "vertex" in bad.stderr


REASONS = {
    "host-network.yaml": "document 1 (DaemonSet node-agent): hostNetwork",
    "app-named-sluice.yaml": "document 1 (Pod imposter): an app container is named",
    "old-api-version.yaml": "document 1 (CronJob legacy): apiVersion batch/v1beta1",
    "port-clash.yaml": "document 1 (Deployment listens-on-8080): container \"app\" declares port 8080",
    "no-containers.yaml": "document 1 (Job empty): the pod template has no containers",
    "malformed.yaml": "document 1: not valid YAML",
    "second-of-three.yaml": "document 2 (Pod bad): hostNetwork",
}


@pytest.mark.parametrize("path", REFUSED, ids=rel)
def test_refused_with_where_and_why_and_nothing_written(path: Path):
    assert path.name in REASONS, f"{rel(path)}: add its expected reason"
    for out in (inject(str(path)), inject(stdin=path.read_text())):
        assert out.returncode == 1, out.stderr
        assert out.stdout == "", "all or nothing: no output on a refusal"
        assert "refused, nothing written" in out.stderr
        assert REASONS[path.name] in out.stderr, out.stderr


def test_missing_file_is_an_error():
    out = inject(str(ROOT / "tests/deploy/inject/no-such-file.yaml"))
    assert out.returncode == 1 and out.stdout == "" and "no-such-file.yaml" in out.stderr
