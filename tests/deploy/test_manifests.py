"""The Kubernetes deployment under deploy/: schema-valid, wired as a native sidecar, and
carrying sluice configs that sluice itself accepts.

Offline: kubernetes-validate ships the Kubernetes JSON schemas. Kustomizations are rendered
with `kubectl kustomize` (or `kustomize build`) when one is installed, else by the small
renderer below, which knows exactly the kustomize features deploy/k8s uses (and is checked
against kubectl's output whenever kubectl is there).

    pip install -r tests/deploy/requirements.txt
    SLUICE_BIN=target/debug/sluice pytest -q tests/deploy
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"

# Native sidecars (init containers with restartPolicy: Always) are on by default since 1.29.
# The oldest minor we support and a current one; strict: unknown fields are errors.
K8S_VERSIONS = ("1.30", "1.33")

SIDECAR = "sluice"
CONFIG_KEY = "sluice.yaml"
CONFIG_MOUNT = "/etc/sluice"
SECRET_MOUNT = "/var/run/secrets/sluice"
NONROOT_UID = 65532


# ---------------------------------------------------------------------------------------
# Finding and rendering manifests


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/k8s that holds Kubernetes objects (not kustomizations)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render_with_tool(kdir: Path) -> list[dict] | None:
    if shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(kdir)]
    elif shutil.which("kustomize"):
        argv = ["kustomize", "build", str(kdir)]
    else:
        return None
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


SUPPORTED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches"}


def merge_patch(target: dict, patch: dict) -> None:
    """Strategic merge, restricted to what deploy/k8s patches: maps merge, scalars and
    strings (a ConfigMap's data values) replace. Lists would need Kubernetes' merge keys."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            assert not isinstance(value, list), (
                f"fallback renderer: list in a patch ({key}); install kubectl")
            target[key] = copy.deepcopy(value)


def render_fallback(kdir: Path) -> list[dict]:
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    unsupported = set(kust) - SUPPORTED_KUSTOMIZE_KEYS
    assert not unsupported, (
        f"{kdir}: the fallback renderer does not support {sorted(unsupported)}; "
        "install kubectl (or kustomize), or extend render_fallback")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = (kdir / res).resolve()
        docs += render_fallback(path) if path.is_dir() else load_docs(path)
    for p in kust.get("patches", []):
        assert set(p) == {"path"}, f"{kdir}: fallback renderer supports `patches: - path:` only"
        for patch in load_docs(kdir / p["path"]):
            targets = [d for d in docs if d["kind"] == patch["kind"]
                       and d["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(targets) == 1, f"{kdir}: patch {p['path']} matches {len(targets)} objects"
            merge_patch(targets[0], patch)
    if "namespace" in kust:
        for d in docs:
            d["metadata"]["namespace"] = kust["namespace"]
    return docs


def render(kdir: Path) -> list[dict]:
    docs = render_with_tool(kdir)
    return docs if docs is not None else render_fallback(kdir)


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def sluice_configs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(ConfigMap name, parsed sluice.yaml) for every ConfigMap carrying one."""
    return [(cm["metadata"]["name"], yaml.safe_load(cm["data"][CONFIG_KEY]))
            for cm in by_kind(docs, "ConfigMap") if CONFIG_KEY in cm.get("data", {})]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(workload name, pod template) of every workload that runs the sluice sidecar."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            tmpl = d["spec"]["template"]
            names = [c["name"] for c in tmpl["spec"].get("initContainers", [])
                     + tmpl["spec"]["containers"]]
            if SIDECAR in names:
                out.append((d["metadata"]["name"], tmpl))
    return out


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def sluice_bin() -> Path:
    """$SLUICE_BIN, else target/debug/sluice; relative paths are from the repo root."""
    path = Path(os.environ.get("SLUICE_BIN", "target/debug/sluice"))
    if not path.is_absolute():
        path = ROOT / path
    if not os.access(path, os.X_OK):
        pytest.fail(f"sluice binary {path} missing: run `cargo build`, or set SLUICE_BIN")
    return path


RENDERED = {rel(k): render(k) for k in kustomization_dirs()}
KUSTOMIZATIONS = sorted(RENDERED)


def test_there_is_a_base_and_an_overlay():
    assert "deploy/k8s/base" in KUSTOMIZATIONS
    assert any(k.startswith("deploy/k8s/overlays/") for k in KUSTOMIZATIONS)


# ---------------------------------------------------------------------------------------
# Schemas (offline, strict)


def assert_schema_valid(doc: dict, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.absolute_path)
        pytest.fail(f"{where}: {doc['kind']}/{doc['metadata'].get('name')} invalid for "
                    f"Kubernetes {version} at {path or '(root)'}: {e.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifest_file_is_schema_valid(path: Path, version: str):
    docs = load_docs(path)
    assert docs, f"{rel(path)} holds no object"
    for doc in docs:
        assert_schema_valid(doc, version, rel(path))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_rendered_kustomization_is_schema_valid(kdir: str, version: str):
    docs = RENDERED[kdir]
    assert by_kind(docs, "Deployment") and by_kind(docs, "ConfigMap")
    for doc in docs:
        assert_schema_valid(doc, version, kdir)


def test_strict_validation_rejects_unknown_fields():
    """The schema check can fail: a typo'd field in the sidecar is an error, not ignored."""
    (deploy,) = by_kind(load_docs(BASE / "deployment.yaml"), "Deployment")
    bad = copy.deepcopy(deploy)
    bad["spec"]["template"]["spec"]["initContainers"][0]["restartPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_fallback_renderer_matches_kubectl():
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed: nothing to compare the fallback renderer with")

    def key(d: dict) -> tuple:
        return (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])

    for k in kustomization_dirs():
        assert sorted(render_fallback(k), key=key) == sorted(RENDERED[rel(k)], key=key), rel(k)


# ---------------------------------------------------------------------------------------
# The sidecar wiring, on every rendered kustomization


@pytest.fixture(params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, RENDERED[request.param]


def probe(container: dict, kind: str, ports: dict[str, int]) -> tuple[str, int]:
    """(path, port number) of a container's HTTP probe; named ports resolved."""
    get = container[kind]["httpGet"]
    port = get["port"]
    return get["path"], ports[port] if isinstance(port, str) else port


def test_sidecar_wiring(rendered):
    kdir, docs = rendered
    configs = dict(sluice_configs(docs))
    workloads = pod_specs(docs)
    assert workloads, f"{kdir}: no workload runs the {SIDECAR} sidecar"
    for name, tmpl in workloads:
        where = f"{kdir}: {name}"
        spec = tmpl["spec"]
        inits = {c["name"]: c for c in spec.get("initContainers", [])}
        apps = spec["containers"]

        # A native sidecar: an init container that keeps running.
        assert SIDECAR in inits, f"{where}: sluice must be an initContainer (native sidecar)"
        assert SIDECAR not in [c["name"] for c in apps], f"{where}: sluice is an app container"
        sc = inits[SIDECAR]
        assert sc.get("restartPolicy") == "Always", f"{where}: sidecar needs restartPolicy Always"
        assert spec.get("terminationGracePeriodSeconds") == 30, where

        # The ConfigMap as a directory (hot reload needs the `..data` swap), never subPath.
        volumes = {v["name"]: v for v in spec["volumes"]}
        cm_mounts = [m for m in sc["volumeMounts"] if "configMap" in volumes[m["name"]]]
        assert len(cm_mounts) == 1, f"{where}: sluice mounts {len(cm_mounts)} ConfigMaps"
        (cm_mount,) = cm_mounts
        assert "subPath" not in cm_mount and "subPathExpr" not in cm_mount, (
            f"{where}: a subPath ConfigMap mount never updates: mount the directory")
        assert cm_mount["mountPath"] == CONFIG_MOUNT, where
        cm_name = volumes[cm_mount["name"]]["configMap"]["name"]
        assert cm_name in configs, f"{where}: ConfigMap {cm_name} with {CONFIG_KEY} not rendered"
        items = volumes[cm_mount["name"]]["configMap"].get("items")
        assert not items or any(i["key"] == CONFIG_KEY for i in items), where
        args = sc.get("args", [])
        assert args[:2] == ["run", "-c"] and args[2] == f"{CONFIG_MOUNT}/{CONFIG_KEY}", (
            f"{where}: sidecar args {args}")
        conf = configs[cm_name]

        # Provider keys: a read-only Secret mount in the sidecar only; the config reads its files.
        secret_mounts = [m for m in sc["volumeMounts"] if "secret" in volumes[m["name"]]]
        assert [m["mountPath"] for m in secret_mounts] == [SECRET_MOUNT], where
        assert all(m.get("readOnly") is True for m in secret_mounts), f"{where}: Secret rw"
        secret_volumes = {m["name"] for m in secret_mounts}
        for app in apps:
            mounted = {m["name"] for m in app.get("volumeMounts", [])}
            assert not mounted & secret_volumes, f"{where}: app {app['name']} mounts provider keys"
        key_files = [k["file"] for p in conf["pools"] for e in p["endpoints"] for k in e["keys"]]
        assert key_files, where
        for f in key_files:
            assert f.startswith(SECRET_MOUNT + "/"), f"{where}: key file {f} outside the Secret"

        # Listeners: the proxy on loopback (this pod's app only), the admin port reachable.
        proxy_host, proxy_port = split_hostport(conf["listeners"]["proxy"])
        admin_host, admin_port = split_hostport(conf["listeners"]["admin"])
        assert proxy_host == "127.0.0.1", f"{where}: proxy listener should be loopback"
        assert admin_host in ("0.0.0.0", "::"), (
            f"{where}: admin on {admin_host}: kubelet probes and Prometheus cannot reach it")

        # Probes on the admin port.
        ports = {p["name"]: p["containerPort"] for p in sc.get("ports", []) if "name" in p}
        assert admin_port in ports.values(), f"{where}: admin port {admin_port} not declared"

        assert probe(sc, "readinessProbe", ports) == ("/readyz", admin_port), where
        assert probe(sc, "livenessProbe", ports) == ("/healthz", admin_port), where
        if "startupProbe" in sc:
            assert probe(sc, "startupProbe", ports)[1] == admin_port, where

        # Prometheus scrapes the admin listener.
        ann = tmpl["metadata"].get("annotations", {})
        assert ann.get("prometheus.io/scrape") == "true", where
        assert ann.get("prometheus.io/port") == str(admin_port), where
        assert ann.get("prometheus.io/path") == "/metrics", where

        # Apps reach the sidecar over plain HTTP on localhost.
        for app in apps:
            env = {e["name"]: e.get("value") for e in app.get("env", [])}
            if "OPENAI_BASE_URL" in env or "ANTHROPIC_BASE_URL" in env:
                assert env.get("OPENAI_BASE_URL") == f"http://127.0.0.1:{proxy_port}/v1", where
                assert env.get("ANTHROPIC_BASE_URL") == f"http://127.0.0.1:{proxy_port}", where
        assert any("OPENAI_BASE_URL" in {e["name"] for e in a.get("env", [])} for a in apps), (
            f"{where}: no app container points its SDK at sluice")

        # Sized, and locked down.
        res = sc.get("resources", {})
        assert res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"), (
            f"{where}: sidecar memory requests/limits")
        assert res.get("requests", {}).get("cpu"), where
        sec = sc.get("securityContext", {})
        pod_sec = spec.get("securityContext", {})
        assert sec.get("runAsNonRoot") is True, where
        assert sec.get("runAsUser") == NONROOT_UID, where
        assert sec.get("readOnlyRootFilesystem") is True, where
        assert sec.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in sec.get("capabilities", {}).get("drop", []), where
        seccomp = sec.get("seccompProfile") or pod_sec.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", where


def test_configmap_name_is_stable(rendered):
    """No generator hash suffix: a renamed ConfigMap would roll the pods instead of letting
    the sidecars hot-reload it."""
    kdir, docs = rendered
    assert [name for name, _ in sluice_configs(docs)] == ["sluice-config"], kdir


def test_overlays_set_their_namespace():
    for kdir in kustomization_dirs():
        kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
        if "overlays" not in kdir.parts:
            continue
        assert kust.get("namespace"), f"{rel(kdir)}: an overlay names its namespace"
        for d in RENDERED[rel(kdir)]:
            assert d["metadata"].get("namespace") == kust["namespace"], (rel(kdir), d["kind"])


def test_overlay_replaces_the_policy():
    """An overlay's sluice.yaml differs from the base's (else it is not overlaying policy)."""
    (_, base_conf), = sluice_configs(RENDERED["deploy/k8s/base"])
    for kdir in KUSTOMIZATIONS:
        if kdir.startswith("deploy/k8s/overlays/"):
            (_, conf), = sluice_configs(RENDERED[kdir])
            assert conf != base_conf, kdir


# ---------------------------------------------------------------------------------------
# Secrets: none in git


KEY_LIKE = re.compile(r"\b(sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16})\b")


def test_no_real_looking_keys_under_deploy():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            found = KEY_LIKE.findall(path.read_text(errors="replace"))
            assert not found, f"{rel(path)} holds something that looks like a key: {found}"


def test_secret_example_is_placeholder_and_not_applied():
    secrets = [(p, d) for p in manifest_files() for d in load_docs(p) if d["kind"] == "Secret"]
    assert secrets, "provider-keys.example.yaml should show the Secret's shape"
    for path, secret in secrets:
        assert path.name.endswith(".example.yaml"), f"{rel(path)}: a Secret outside an example"
        assert not secret.get("data"), f"{rel(path)}: use stringData placeholders"
        values = secret.get("stringData", {})
        assert values and set(values.values()) == {"REPLACE_ME"}, rel(path)
        for kdir, docs in RENDERED.items():
            assert not by_kind(docs, "Secret"), f"{kdir} renders a Secret: keep keys out of git"
    # The example's keys are exactly the files the base config reads.
    (_, conf), = sluice_configs(RENDERED["deploy/k8s/base"])
    files = {Path(k["file"]).name for p in conf["pools"] for e in p["endpoints"] for k in e["keys"]}
    (_, example), = [(p, d) for p, d in secrets if p.parent == BASE]
    assert set(example["stringData"]) == files


# ---------------------------------------------------------------------------------------
# The image matches the manifests


def test_dockerfile_matches_manifests():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert stages[0].startswith("rust:") and stages[-1] == "gcr.io/distroless/cc-debian12:nonroot"
    assert "cargo build --release --locked" in text
    assert re.search(r"^USER\s+65532(:65532)?\s*$", text, re.MULTILINE), "numeric non-root USER"
    assert re.search(r"^EXPOSE\s+8080\s+9090\s*$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["/usr/local/bin/sluice"]' in text
    assert f'CMD ["run", "-c", "{CONFIG_MOUNT}/{CONFIG_KEY}"]' in text
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {"target/", ".venv/", ".git/"} <= ignored, "the build context must skip target/ (GiBs)"


# ---------------------------------------------------------------------------------------
# sluice accepts the configs


def extracted_configs() -> list[tuple[str, str]]:
    out = []
    for kdir, docs in RENDERED.items():
        for cm in by_kind(docs, "ConfigMap"):
            if CONFIG_KEY in cm.get("data", {}):
                out.append((f"{kdir}:{cm['metadata']['name']}", cm["data"][CONFIG_KEY]))
    return out


@pytest.mark.parametrize("name,text", extracted_configs(), ids=[n for n, _ in extracted_configs()])
def test_sluice_validates_configmap(name: str, text: str, tmp_path: Path):
    conf = tmp_path / CONFIG_KEY
    conf.write_text(text)
    out = subprocess.run([str(sluice_bin()), "validate", str(conf)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{name}: sluice validate exited {out.returncode}:\n{out.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_sluice_runs_the_base_config_and_answers_probes(tmp_path: Path):
    """`sluice run` on the base ConfigMap's config (key files from a temp dir standing in for
    the Secret mount, listeners on free loopback ports): the probe and scrape paths the
    Deployment uses answer 200. No upstream is contacted."""
    (_, conf), = sluice_configs(RENDERED["deploy/k8s/base"])
    for pool in conf["pools"]:
        for ep in pool["endpoints"]:
            for k in ep["keys"]:
                key_file = tmp_path / Path(k["file"]).name
                key_file.write_text("placeholder-not-a-key\n")
                k["file"] = str(key_file)
    admin_port = free_port()
    conf["listeners"] = {"proxy": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{admin_port}"}
    conf_file = tmp_path / CONFIG_KEY
    conf_file.write_text(yaml.safe_dump(conf))
    log = (tmp_path / "sluice.log").open("w")
    proc = subprocess.Popen([str(sluice_bin()), "run", "-c", str(conf_file)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = http_get(f"{base}/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status == 200, (f"/readyz never answered 200 (exit {proc.poll()}):\n"
                               + (tmp_path / "sluice.log").read_text())
        assert http_get(f"{base}/healthz")[0] == 200
        status, body = http_get(f"{base}/metrics")
        assert status == 200 and "# TYPE sluice_" in body
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
