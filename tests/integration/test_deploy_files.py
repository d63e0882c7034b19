"""`deploy/`: the Prometheus config, alert rules and Grafana dashboards, checked for real.

Every metric the dashboards and alerts name must be one a real node exposes on `/metrics` after
some traffic; promtool must accept the config, the rules, their unit tests and the node's own
exposition; and a real Prometheus scraping a real node must evaluate every dashboard query
without an error, with data in the panels that cannot be empty on a node that served requests.
"""

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.apt import INSTALL_TIMEOUT
from tests.support.nodes import Proxied, admin_port
from tests.support.prometheus import (
    PrometheusServer,
    binaries_missing,
    prometheus_binary,
    promtool_binary,
    run_prometheus,
)

# The first test may have to install Prometheus, which takes longer than a test may otherwise.
pytestmark = [pytest.mark.timeout(INSTALL_TIMEOUT + 60)] if binaries_missing() else []

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARDS = {
    "loadweaver-cluster": DEPLOY / "grafana" / "dashboards" / "loadweaver-cluster.json",
    "loadweaver-backends": DEPLOY / "grafana" / "dashboards" / "loadweaver-backends.json",
}
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "table"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = "loadweaver"
POOL = "app"  # the pool `node_config` makes
REQUESTS = 20
PROMTOOL_TIMEOUT = 60.0
UP_TIMEOUT = 15.0  # until Prometheus has scraped the node
DATA_TIMEOUT = 10.0  # until rate() has the two samples it needs

# Grafana's built-in variables, as a 5s scrape interval and a 5-minute range would set them.
BUILT_IN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
METRIC_NAME = re.compile(r"(?<![\w:$])((?:loadweaver|process|python)_[a-z0-9_]+|up)(?![\w:(])")
PROMETHEUS_MADE = {"up"}  # made by Prometheus for every target, not exposed by the node
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")

# Panels a node that served requests must fill, every target: dashboard uid -> panel titles.
PANELS_WITH_DATA = {
    "loadweaver-cluster": {
        "Requests per second, by node and total",
        "5xx ratio",
        "Nodes",
        "Node details",
        "Leader",
        "Cluster store",
        "Active client connections",
        "Config version per node",
    },
    "loadweaver-backends": {
        "Backend up / down",
        "Pool connections, idle and active",
        "Effective weight per backend",
        "Backends now",
    },
}


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard uid / panel title", or "alerts.yml / alert name"
    expr: str


def load_dashboard(uid: str) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARDS[uid].read_text())
    return dashboard


def dashboard_queries(uid: str) -> Iterator[tuple[str, Query]]:
    """(panel title, query) for every target of every panel."""
    for panel in load_dashboard(uid)["panels"]:
        for target in panel["targets"]:
            yield panel["title"], Query(f"{uid} / {panel['title']}", target["expr"])


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [Query(f"alerts.yml / {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def all_dashboard_queries() -> list[Query]:
    return [query for uid in DASHBOARDS for _, query in dashboard_queries(uid)]


def variable_queries() -> list[Query]:
    """The `label_values(...)` of every dashboard's query variables."""
    return [
        Query(f"{uid} / ${variable['name']}", variable["definition"])
        for uid in DASHBOARDS
        for variable in load_dashboard(uid)["templating"]["list"]
        if variable["type"] == "query"
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """`expr` with Grafana's `$name` / `${name}` / `${name:format}` replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"unknown variable ${name} in {expr!r}")
        return variables[name]

    return VARIABLE.sub(value, expr)


def referenced_metrics(expr: str) -> set[str]:
    """The metric names in a PromQL expression (label values in quotes left out)."""
    return set(METRIC_NAME.findall(STRING.sub('""', expr)))


def exposed_families(exposition: str) -> dict[str, str]:
    """Family name -> type, from the exposition's `# TYPE` lines."""
    families: dict[str, str] = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind
    return families


def unexposed(name: str, families: dict[str, str]) -> str | None:
    """Why series called `name` would not exist, or None when the node exposes them."""
    if name in PROMETHEUS_MADE:
        return None
    if name in families:
        if families[name] in ("histogram", "summary"):
            return f"{name} is a {families[name]}: name its _bucket, _sum or _count series"
        return None
    for suffix in HISTOGRAM_SUFFIXES:
        family = name.removesuffix(suffix)
        if family != name and families.get(family) in ("histogram", "summary"):
            return None
    return f"{name} is not exposed by the node"


def missing_metrics(queries: list[Query], exposition: str) -> list[str]:
    families = exposed_families(exposition)
    problems = []
    for query in queries:
        names = referenced_metrics(query.expr)
        if not names:
            problems.append(f"{query.where}: names no metric: {query.expr}")
        for name in sorted(names):
            if (problem := unexposed(name, families)) is not None:
                problems.append(f"{query.where}: {problem}")
    return problems


def run_promtool(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_binary(), *arguments],
        check=False,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=PROMTOOL_TIMEOUT,
    )


# --- The files on their own -----------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_is_well_formed(uid: str) -> None:
    dashboard = load_dashboard(uid)
    assert dashboard["uid"] == uid
    assert dashboard["title"].startswith("loadweaver / ")
    assert dashboard["schemaVersion"] == 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "pool"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert LABEL_VALUES.match(variables[name]["definition"]), variables[name]["definition"]
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids)), f"{uid}: panel ids repeat"
    titles = [panel.get("title") for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles)), f"{uid}: panel titles repeat"
    for panel in dashboard["panels"]:
        where = f"{uid} / panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), f"{where}: no title"
        assert panel["type"] in PANEL_TYPES, f"{where}: type {panel['type']}"
        assert panel["datasource"] == DATASOURCE, f"{where}: datasource {panel['datasource']}"
        assert panel.get("targets"), f"{where}: no targets"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: refIds repeat"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{where}: a target without expr"
            assert target["datasource"] == DATASOURCE, f"{where}: target datasource"
    for panel_title in PANELS_WITH_DATA[uid]:
        assert panel_title in {panel["title"] for panel in dashboard["panels"]}


def test_the_dashboard_uids_are_distinct() -> None:
    uids = [load_dashboard(uid)["uid"] for uid in DASHBOARDS]
    titles = [load_dashboard(uid)["title"] for uid in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize(
    "arguments",
    [
        ("check", "config", str(PROMETHEUS_DIR / "prometheus.yml")),
        ("check", "rules", str(ALERTS)),
        ("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_prometheus_files(arguments: tuple[str, ...]) -> None:
    done = run_promtool(*arguments)
    assert done.returncode == 0, f"promtool {' '.join(arguments)}:\n{done.stdout}{done.stderr}"


def test_every_alert_has_a_severity_and_annotations() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, rule["alert"]
        text = annotations["summary"] + annotations["description"]
        assert "$labels" in text or "$value" in text, rule["alert"]


# --- Against a real node ----------------------------------------------------------------------


@pytest.fixture
async def served(proxied: Proxied) -> Proxied:
    """A node (in front of an echo backend) that has served REQUESTS requests."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for index in range(REQUESTS):
            async with session.get(f"{proxied.url}/deploy/{index}") as response:
                assert response.status == 200
                await response.read()
    return proxied


@pytest.fixture
async def exposition(served: Proxied) -> str:
    """That node's `/metrics`."""
    metrics_url = f"http://127.0.0.1:{admin_port(served.config)}/metrics"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(metrics_url) as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_every_dashboard_metric_is_exposed_by_a_node(exposition: str) -> None:
    problems = missing_metrics(all_dashboard_queries() + variable_queries(), exposition)
    assert not problems, "\n".join(problems)


async def test_every_alert_metric_is_exposed_by_a_node(exposition: str) -> None:
    problems = missing_metrics(alert_queries(), exposition)
    assert not problems, "\n".join(problems)


async def test_promtool_accepts_the_node_metrics(exposition: str) -> None:
    done = run_promtool("check", "metrics", stdin=exposition)
    assert done.returncode == 0, f"promtool check metrics:\n{done.stdout}{done.stderr}"
    assert not done.stdout.strip(), done.stdout


@pytest.fixture(scope="session")
def prometheus() -> str:
    return prometheus_binary()


async def poll(check: Callable[[], Awaitable[str]], timeout: float) -> None:
    """Calls `check` every 0.2 s until it returns "" (all is well); fails with its last
    complaint after `timeout`."""
    deadline = time.monotonic() + timeout
    while complaint := await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: {complaint}")
        await asyncio.sleep(0.2)


async def wait_for_results(server: PrometheusServer, exprs: list[str], timeout: float) -> None:
    """Until every one of `exprs` has a result (a non-empty vector)."""

    async def still_empty() -> str:
        empty = []
        for expr in exprs:
            answer = await server.query(expr)
            assert answer["status"] == "success", f"{expr}: {answer}"
            if not answer["data"]["result"]:
                empty.append(expr)
        return "".join(f"\n  no data: {expr}" for expr in empty)

    try:
        await poll(still_empty, timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\nprometheus log:\n{server.log_tail()}") from None


async def refused_queries(server: PrometheusServer, pool: str) -> list[str]:
    """Every dashboard and alert query, with the variables set, that Prometheus refuses."""
    variables = {**BUILT_IN_VARIABLES, "instance": ".*", "pool": pool}
    refused = []
    for query in all_dashboard_queries() + alert_queries():
        expr = substitute(query.expr, variables)
        answer = await server.query(expr)
        if answer["status"] != "success":
            refused.append(
                f"{query.where} (pool={pool}): {answer.get('errorType')}: {answer.get('error')}"
                f"\n    {expr}"
            )
    return refused


async def test_a_real_prometheus_evaluates_every_dashboard_query_and_alert(
    served: Proxied, prometheus: str, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{admin_port(served.config)}"
    async with run_prometheus(
        prometheus, tmp_path / "prometheus", [target], job=JOB, rule_files=[ALERTS]
    ) as server:
        await wait_for_results(server, [f'up{{job="{JOB}"}} == 1'], UP_TIMEOUT)
        everything = {**BUILT_IN_VARIABLES, "instance": ".*", "pool": ".*"}
        # These panels fill as soon as rate() has its two samples.
        must_fill = [
            substitute(query.expr, everything)
            for uid, titles in PANELS_WITH_DATA.items()
            for title, query in dashboard_queries(uid)
            if title in titles
        ]
        await wait_for_results(server, must_fill, DATA_TIMEOUT)

        refused = [*await refused_queries(server, ".*"), *await refused_queries(server, POOL)]
        assert not refused, "queries Prometheus refused:\n" + "\n".join(refused)

        # The template variables' label_values() find this node and its pool.
        expected = {"instance": target, "pool": POOL}
        for uid in DASHBOARDS:
            for variable in load_dashboard(uid)["templating"]["list"]:
                if variable["type"] != "query":
                    continue
                match = LABEL_VALUES.match(variable["definition"])
                assert match is not None, variable["definition"]
                selector = substitute(match.group(1) or "", everything)
                answer = await server.label_values(match.group(2), selector)
                assert answer["status"] == "success", f"{uid} ${variable['name']}: {answer}"
                assert expected[variable["name"]] in answer["data"], f"{uid}: {answer}"

        # Prometheus evaluates every alert rule without an error, and none holds on a node
        # that is healthy and served only 200s.
        rules: list[dict[str, Any]] = []

        async def not_evaluated() -> str:
            nonlocal rules
            rules = await server.rules()
            return ", ".join(rule["name"] for rule in rules if rule["health"] == "unknown")

        await poll(not_evaluated, DATA_TIMEOUT)
        assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
        broken = [
            f"{rule['name']}: {rule['lastError']}" for rule in rules if rule["health"] != "ok"
        ]
        assert not broken, "rules Prometheus failed to evaluate:\n" + "\n".join(broken)
        holding = [
            f"{rule['name']}: {rule['state']}" for rule in rules if rule["state"] != "inactive"
        ]
        assert not holding, "alerts pending or firing on a healthy node:\n" + "\n".join(holding)
