"""The Grafana dashboard (deploy/grafana/sluice.json) against what sluice really exports.

1. Every PromQL expression of the dashboard (panel targets, and the `label_values(...)` of its
   template variables) is parsed with a real PromQL parser (`promql-parser`, Python bindings of
   GreptimeTeam's Rust parser); every metric it selects must be in a scrape of sluice's
   /metrics taken after load through the official openai and anthropic SDKs that exercises
   routes, pools, two tenants, a limit, a budget, a failover, an open breaker, a same-endpoint
   retry, the response cache and a config reload; every label it matches on, groups by or puts
   in a legend must be on that metric. Histograms are selected as `<name>_bucket`, which the
   scrape holds under that name.
2. The JSON is valid for Grafana 11.6: it round-trips through the Grafana Foundation SDK's
   dashboard model for 11.6 (`grafana-foundation-sdk` 11.6, generated from Grafana's own
   schemas) without losing a field (a misspelt or unknown field is dropped by the model and
   so caught), its `schemaVersion` is the one that model writes, and it is provisioning-ready
   (a datasource template variable that every panel and query uses, a fixed uid).
"""

from __future__ import annotations

import copy
import json
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import openai
import promql_parser
import pytest
import yaml

from conftest import (TENANT, VIRTUAL_KEY, Upstream, anthropic_client, llmock_upstream,
                      openai_client)
from harness import (ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, REPO_ROOT, Metrics, free_port, pool,
                     route, scrape, sha256_hex, sluice_config_from, start_sluice)

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "sluice.json"
PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "sluice.yaml"
LIMITED_KEY = "sk-sluice-e2e-team-b-limited-42"
# Grafana's variables, replaced by values a real query could carry before parsing.
VARIABLES = {"$__rate_interval": "5m", "$__range": "1d", "$__interval": "1m",
             "$route": ".*", "$pool": ".*", "$tenant": ".*"}
LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_]\w*)\s*\)$")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query target."""
    return [(p["title"], t) for p in panels(dash) for t in p.get("targets", [])]


# -- PromQL -------------------------------------------------------------------------------

def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def selectors(node: Any) -> Iterator[Any]:
    """Every VectorSelector under `node`."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr,
                           promql_parser.SubqueryExpr)):
        yield from selectors(node.expr)


def groupings(node: Any) -> Iterator[tuple[list[str], list[Any]]]:
    """(labels of `by (...)`, selectors it aggregates) of every aggregation under `node`."""
    if isinstance(node, promql_parser.AggregateExpr):
        if node.modifier is not None:
            yield list(node.modifier.labels), list(selectors(node.expr))
        yield from groupings(node.expr)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from groupings(node.lhs)
        yield from groupings(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from groupings(arg)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr,
                           promql_parser.SubqueryExpr)):
        yield from groupings(node.expr)


def exported(metrics: Metrics) -> dict[str, set[str]]:
    """Metric name -> label names seen on its samples."""
    out: dict[str, set[str]] = {}
    for s in metrics.samples:
        out.setdefault(s.name, set()).update(k for k, _ in s.labels)
    return out


def check_expr(where: str, expr: str, have: dict[str, set[str]], legend: str = "") -> list[str]:
    """Problems of one expression against the scrape `have` (empty when it fits)."""
    problems = []
    ast = promql_parser.parse(substitute(expr))
    found = list(selectors(ast))
    if not found:
        problems.append(f"{where}: selects no metric: {expr}")
    names = set()
    for vs in found:
        name = vs.name
        names.add(name)
        if name not in have:
            problems.append(f"{where}: {name} is not in /metrics")
            continue
        for m in vs.matchers.matchers:
            if m.name != "__name__" and m.name not in have[name]:
                problems.append(f"{where}: {name} has no label {m.name!r} (matcher)")
    for labels, under in groupings(ast):
        for vs in under:
            for label in labels:
                if vs.name in have and label not in have[vs.name]:
                    problems.append(f"{where}: {vs.name} has no label {label!r} (by)")
    for label in LEGEND_LABEL.findall(legend):
        if not any(label in have.get(n, set()) for n in names):
            problems.append(f"{where}: legend label {label!r} is on none of {sorted(names)}")
    return problems


def check_dashboard(dash: dict[str, Any], have: dict[str, set[str]]) -> list[str]:
    problems = []
    for title, target in queries(dash):
        problems += check_expr(f"panel {title!r}", target["expr"], have,
                               target.get("legendFormat", ""))
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = LABEL_VALUES.match(q)
        assert m, f"variable {var['name']}: not a label_values(metric, label) query: {q}"
        metric, label = m.groups()
        if label not in have.get(metric, set()):
            problems.append(f"variable {var['name']}: {metric} has no label {label!r}")
    return problems


# -- the load that makes every metric appear ----------------------------------------------

@pytest.fixture
def dash_upstream(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-dashboard") as u:
        yield u


def dashboard_config(proxy: str, admin: str, upstream: Upstream, team_b_rpm: int) -> dict[str, Any]:
    down = pool("down", "openai", f"http://127.0.0.1:{free_port()}", OPENAI_KEY_ENV)
    # One failure opens the dead endpoint's breaker: later requests skip it.
    down["breaker"] = {"consecutive_failures": 1, "open_ms": 60000}
    return sluice_config_from(
        proxy, admin,
        pools=[down, pool("openai", "openai", upstream.base, OPENAI_KEY_ENV),
               pool("anthropic", "anthropic", upstream.anthropic_url, ANTHROPIC_KEY_ENV)],
        routes=[route("anthropic-messages", "/v1/messages", ["anthropic"]),
                {**route("cached", "/v1", ["openai"], ("x-e2e-route", "cached")),
                 "cache": {"ttl_ms": 60000}},
                route("openai", "/v1", ["down", "openai"])],
        tenants={"reject_unknown_keys": True, "list": [
            {"name": TENANT, "virtual_keys": [{"sha256": sha256_hex(VIRTUAL_KEY)}],
             "limits": {"budget": {"usd_per_day": 100.0}}},
            {"name": "team-b", "virtual_keys": [{"sha256": sha256_hex(LIMITED_KEY)}],
             "limits": {"requests_per_minute": team_b_rpm}}]},
        models=[{"match": "gpt-4o*", "price": {"input_per_1m": 0.15, "output_per_1m": 0.60}},
                {"match": "claude-*", "price": {"input_per_1m": 3.0, "output_per_1m": 15.0}}],
    )


def drive_load(proxy: str, upstream: Upstream) -> None:
    base = f"http://{proxy}"
    oa = openai_client(f"{base}/v1", VIRTUAL_KEY)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "dashboards"}]}
    # The first request fails over from the dead pool (its breaker then opens); one upstream
    # 500 is retried on the same endpoint.
    oa.chat.completions.create(**chat)
    upstream.scenario({"type": "fail", "status": 500, "times": 1,
                       "match": {"provider": "openai"}})
    for stream in (False, True, False, True):
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in
                           oa.chat.completions.create(**chat, stream=True) if c.choices)
        else:
            assert oa.chat.completions.create(**chat).choices[0].message.content
    cached = openai_client(f"{base}/v1", VIRTUAL_KEY,
                           default_headers={"x-e2e-route": "cached"})
    for _ in range(2):
        cached.chat.completions.create(**{**chat, "temperature": 0})
    an = anthropic_client(base, VIRTUAL_KEY)
    msg = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "dashboards"}]}
    assert an.messages.create(**msg).content
    with an.messages.stream(**msg) as s:
        assert s.get_final_message().content
    # team-b: two requests a minute, the third is refused.
    limited = openai_client(f"{base}/v1", LIMITED_KEY)
    refused = 0
    for _ in range(3):
        try:
            limited.chat.completions.create(**chat)
        except openai.RateLimitError:
            refused += 1
    assert refused == 1


def reload(proc: Any, config_path: Path, config: dict[str, Any], admin: str) -> None:
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while scrape(admin).sum("sluice_config_reload_total", result="success") < 1:
        assert time.monotonic() < deadline, "no successful reload within 10 s"
        time.sleep(0.05)


# -- tests ------------------------------------------------------------------------------

@pytest.mark.sluice
def test_every_dashboard_query_reads_metrics_sluice_exports(
        workdir: Path, dash_upstream: Upstream) -> None:
    proxy, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {OPENAI_KEY_ENV: "sk-e2e-dash-openai", ANTHROPIC_KEY_ENV: "sk-ant-e2e-dash",
           "RUST_LOG": "info"}
    proc = start_sluice(workdir, dashboard_config(proxy, admin, dash_upstream, 2), env,
                        name="sluice-dashboard")
    try:
        drive_load(proxy, dash_upstream)
        reload(proc, workdir / "sluice-dashboard.yaml",
               dashboard_config(proxy, admin, dash_upstream, 3), admin)
        metrics = scrape(admin)
    finally:
        proc.stop()
    have = exported(metrics)
    problems = check_dashboard(dashboard(), have)
    assert not problems, "\n".join(problems)
    # The load did what the panels show (else the check above proves little).
    assert metrics.sum("sluice_failovers_total") >= 1
    assert metrics.sum("sluice_upstream_retries_total") >= 1
    assert metrics.sum("sluice_limit_decisions_total", decision="rejected") == 1
    assert metrics.sum("sluice_cache_requests_total", outcome="hit") >= 1
    assert metrics.sum("sluice_breaker_state", pool="down") == 2  # open


def test_the_checker_catches_a_metric_or_label_sluice_does_not_export() -> None:
    have = {"sluice_requests_total": {"route", "pool", "model", "status_class"}}
    assert not check_expr("ok", 'sum by (route) (rate(sluice_requests_total{pool=~"$pool"}[5m]))',
                          have, "{{route}}")
    assert check_expr("x", "rate(sluice_request_total[5m])", have)
    assert check_expr("x", 'rate(sluice_requests_total{tenant="a"}[5m])', have)
    assert check_expr("x", "sum by (tenant) (rate(sluice_requests_total[5m]))", have)
    assert check_expr("x", "sum(rate(sluice_requests_total[5m]))", have, "{{tenant}}")


# -- Grafana 11.6 validity ----------------------------------------------------------------

def lost_fields(a: Any, b: Any, path: str = "$") -> list[str]:
    """Where `a` has a field or value that `b` does not (b may add defaults)."""
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [f"{path}: became {type(b).__name__}"]
        out = []
        for k, v in a.items():
            out += [f"{path}.{k}: unknown to the model"] if k not in b else \
                lost_fields(v, b[k], f"{path}.{k}")
        return out
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path}: list changed"]
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in lost_fields(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} became {b!r}"]


def through_grafana_model(dash: dict[str, Any]) -> dict[str, Any]:
    """`dash` decoded into and encoded from the Foundation SDK's Grafana 11.6 model."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard
    plugins.register_default_plugins()
    return json.loads(json.dumps(Dashboard.from_json(dash), cls=JSONEncoder))


def test_the_dashboard_json_is_valid_for_grafana_11_6() -> None:
    from grafana_foundation_sdk.models.dashboard import Dashboard
    dash = dashboard()
    assert not lost_fields(dash, through_grafana_model(dash))
    assert dash["schemaVersion"] == Dashboard().schema_version == 41
    assert 8 <= len(dash["uid"]) <= 40 and dash["title"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    # Provisioning-ready: the data source is a template variable every query uses.
    ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert [v["query"] for v in ds_vars] == ["prometheus"]
    ref = {"type": "prometheus", "uid": "${%s}" % ds_vars[0]["name"]}
    for p in panels(dash):
        if p["type"] != "row":
            assert p["datasource"] == ref, p["title"]
            assert all(t["datasource"] == ref for t in p["targets"]), p["title"]
    # Every panel sits on the 24-column grid without overlapping another.
    cells: set[tuple[int, int]] = set()
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    # The provisioning file points Grafana's file provider at a folder of dashboards.
    prov = yaml.safe_load(PROVISIONING.read_text())
    assert prov["apiVersion"] == 1
    assert [p["type"] for p in prov["providers"]] == ["file"]
    assert prov["providers"][0]["options"]["path"]


def test_the_validity_check_catches_an_unknown_field() -> None:
    dash = dashboard()
    broken = copy.deepcopy(dash)
    timeseries = next(p for p in panels(broken) if p["type"] == "timeseries")
    timeseries["fieldConfig"]["defaults"]["unitt"] = "s"
    broken["refreshh"] = "5s"
    lost = lost_fields(broken, through_grafana_model(broken))
    assert any("unitt" in p for p in lost) and any("refreshh" in p for p in lost), lost
