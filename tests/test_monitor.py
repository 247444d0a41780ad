"""
Tests for C{monitor/}: the compose stack's files, the Grafana provisioning
and dashboard, promtool's checks of the Prometheus config and alert rules,
and a real Prometheus scraping a real server under load from
C{tcpdemo.client}, queried for every expression of every dashboard panel.

The Prometheus binaries come from Debian's C{prometheus} package (installed
by C{.ci/run}).  When C{prometheus} or C{promtool} is missing these tests
fail, never skip: a dashboard nobody checked is what they are here to stop.

YAML files are read by L{loadYamlFile}, with PyYAML's C{yaml.safe_load}
(PyYAML is in the C{test} extra).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import yaml
from twisted.trial import unittest

from tests.support import (
    LOOPBACK,
    REPO_ROOT,
    TwistdServer,
    freePort,
    requireBinary,
    subprocessEnv,
    waitFor,
)

MONITOR = os.path.join(REPO_ROOT, "monitor")
DASHBOARD = os.path.join(MONITOR, "grafana", "dashboards", "tcpdemo.json")

#: The seed article's three panels, with its expressions (metric names
#: renamed to tcpdemo's).
SEED_PANELS = {
    "req_recv_rate": "rate(tcpdemo_req_recv_total[15s])",
    "rsp_send_rate": "rate(tcpdemo_rsp_send_total[15s])",
    "client_connected": "tcpdemo_client_connected",
}

#: The panel of the handler's batch latency quantiles.
HANDLER_LATENCY_PANEL = "Handler batch latency p50 / p99"

#: Panels every one of whose queries must be above zero while the load
#: client runs.  (Protocol errors, refusals, idle timeouts and backpressure
#: pauses are rightly zero under well-behaved load.)
POSITIVE_UNDER_LOAD = frozenset(
    {
        "req_recv_rate",
        "rsp_send_rate",
        "client_connected",
        "Bytes received / sent",
        "Process CPU",
        "Process RSS",
        "Open file descriptors",
        HANDLER_LATENCY_PANEL,
        "Acks by result",
    }
)

#: Metrics the dashboard must show, beyond the seed's.
REQUIRED_METRICS = (
    "tcpdemo_protocol_errors_total",
    "tcpdemo_bytes_received_total",
    "tcpdemo_bytes_sent_total",
    "tcpdemo_backpressure_pauses_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "tcpdemo_handler_batch_seconds_bucket",
    "tcpdemo_handler_pending",
    "tcpdemo_acks_total",
    "tcpdemo_handler_errors_total",
    "tcpdemo_handler_timeouts_total",
)

#: Grafana variables a panel expression may use, and what the test puts in
#: their place.  tcpdemo.json uses none; anything else starting with C{$}
#: is reported as a problem.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s"}

#: Scrape and rule-evaluation interval of the test's Prometheus (5 s in
#: monitor/prometheus.yml): short, so that a few seconds of load give the
#: 15 s rate windows several samples.
TEST_INTERVAL = "1s"

#: Load client run time, seconds.
LOAD_SECONDS = 8


# --- YAML -------------------------------------------------------------------


def loadYamlFile(*path: str) -> Any:
    """
    The YAML file C{monitor/<path>}, read with PyYAML's safe loader.
    """
    with open(os.path.join(MONITOR, *path), encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- Dashboards --------------------------------------------------------------


def loadDashboard(path: str = DASHBOARD) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def iterPanels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """
    Every panel, depth first, including those nested in (collapsed) rows.
    """
    for panel in panels:
        yield panel
        yield from iterPanels(panel.get("panels", []))


def dashboardQueries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """
    C{(panel title, expression)} for every query target of every panel.
    """
    queries = []
    for panel in iterPanels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if expr:
                queries.append((panel.get("title", ""), expr))
    return queries


def substituteVariables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


QueryFunction = Callable[[str, float], dict[str, Any]]


def checkQueries(
    query: QueryFunction,
    queries: Sequence[tuple[str, str]],
    at: float,
    positive: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """
    Evaluate every C{(panel title, expression)} at time C{at} with C{query}
    (which returns Prometheus's C{/api/v1/query} JSON) and return the
    problems found: a failed query, no data at all, or, for a panel named in
    C{positive}, no value above zero.  An empty list means the dashboard
    would show data for every query.
    """
    problems = []
    for title, expr in queries:
        where = f"panel {title!r}, expr {expr!r}"
        concrete = substituteVariables(expr)
        if "$" in concrete:
            problems.append(f"{where}: uses a Grafana variable the test cannot substitute")
            continue
        try:
            response = query(concrete, at)
        except Exception as e:
            problems.append(f"{where}: query failed: {e}")
            continue
        if response.get("status") != "success":
            problems.append(f"{where}: query failed: {response}")
            continue
        data = response.get("data", {})
        result = data.get("result")
        if data.get("resultType") == "scalar":
            values = [float(result[1])] if result else []
        elif data.get("resultType") == "vector":
            values = [float(sample["value"][1]) for sample in result or []]
        else:
            problems.append(f"{where}: unexpected result type {data.get('resultType')!r}")
            continue
        if not values:
            problems.append(f"{where}: no data")
        elif title in positive and not any(v > 0 for v in values):
            problems.append(f"{where}: no value above zero under load: {values}")
    return problems


# --- Prometheus --------------------------------------------------------------


def testPrometheusConfig(
    source: dict[str, Any], prometheusAddress: str, tcpdemoAddress: str
) -> tuple[dict[str, Any], list[str]]:
    """
    The test's Prometheus config, made from C{monitor/prometheus.yml}'s
    parsed C{source}: the same jobs and scrape settings, but

      - scrape and evaluation intervals of L{TEST_INTERVAL};
      - rule files by absolute path (the copy lives in a temporary directory);
      - the C{prometheus} and C{tcpdemo} jobs' targets moved to the given
        loopback addresses;
      - the C{node} job dropped: there is no node-exporter in the test (and
        the dashboard uses no node metrics).

    Returns the config and the names of the jobs dropped.  A job it does not
    know raises, so a new job in prometheus.yml is a decision for this test.
    """
    config = copy.deepcopy(source)
    config.setdefault("global", {})
    config["global"]["scrape_interval"] = TEST_INTERVAL
    config["global"]["evaluation_interval"] = TEST_INTERVAL
    if "scrape_timeout" in config["global"]:
        config["global"]["scrape_timeout"] = TEST_INTERVAL
    config["rule_files"] = [os.path.join(MONITOR, path) for path in config.get("rule_files") or []]
    targets = {"prometheus": prometheusAddress, "tcpdemo": tcpdemoAddress}
    jobs = []
    dropped = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name == "node":
            dropped.append(name)
            continue
        if name not in targets:
            raise ValueError(f"prometheus.yml has a job this test does not know: {name}")
        for key in ("scrape_interval", "scrape_timeout"):
            if key in job:
                job[key] = TEST_INTERVAL
        job["static_configs"] = [{"targets": [targets[name]]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config, dropped


def httpJson(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            result: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as e:
        # Prometheus answers bad queries with 400 and a JSON error body.
        result = json.load(e)
    return result


def httpOk(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class LiveStack:
    """
    A real C{twistd tcpdemo} and a real Prometheus scraping it, configured
    from C{monitor/prometheus.yml}, in C{workdir}.  Stopped by the test's
    cleanups.
    """

    def __init__(self, testCase: unittest.TestCase, workdir: str, serverArgs: Sequence[str] = ()):
        self.testCase = testCase
        self.workdir = workdir
        prometheus = requireBinary("prometheus")
        self.server = TwistdServer(workdir, serverArgs)
        testCase.addCleanup(self.stopServer)
        self.promPort = freePort()
        self.base = f"http://{LOOPBACK}:{self.promPort}"
        config, _ = testPrometheusConfig(
            loadYamlFile("prometheus.yml"),
            f"{LOOPBACK}:{self.promPort}",
            f"{LOOPBACK}:{self.server.metricsPort}",
        )
        self.configPath = os.path.join(workdir, "prometheus.yml")
        with open(self.configPath, "w", encoding="utf-8") as f:
            # JSON is YAML: Prometheus reads it as it is.
            json.dump(config, f, indent=2)
        self.promLog = os.path.join(workdir, "prometheus.log")
        with open(self.promLog, "wb") as log:
            self.prometheus = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={self.configPath}",
                    f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
                    f"--web.listen-address={LOOPBACK}:{self.promPort}",
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        testCase.addCleanup(self.stopPrometheus)
        self.waitFor(lambda: httpOk(f"{self.base}/-/ready"), 20, "Prometheus to be ready")
        self.waitFor(self.tcpdemoScraped, 20, "Prometheus to scrape tcpdemo twice")

    def stopServer(self) -> None:
        if self.server.process.poll() is None:
            try:
                self.server.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.server.kill()

    def stopPrometheus(self) -> None:
        if self.prometheus.poll() is None:
            self.prometheus.terminate()
            try:
                self.prometheus.wait(10)
            except subprocess.TimeoutExpired:
                self.prometheus.kill()
                self.prometheus.wait(10)

    def diagnostics(self) -> str:
        return (
            f"\n--- prometheus log ---\n{tail(self.promLog)}"
            f"\n--- twistd log ---\n{tail(self.server.logPath)}"
        )

    def waitFor(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            waitFor(
                condition,
                timeout,
                interval=0.2,
                what=what,
                unless=lambda: self.prometheus.poll() is not None,
            )
        except AssertionError as e:
            self.testCase.fail(f"{e}{self.diagnostics()}")

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return httpJson(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}")

    def queryRange(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        return httpJson(f"{self.base}/api/v1/query_range?{urllib.parse.urlencode(params)}")

    def tcpdemoScraped(self) -> bool:
        """
        Whether the tcpdemo target is up and has at least two samples in
        the last 15 s, enough for C{rate(...[15s])}.
        """
        response = self.query('count_over_time(up{job="tcpdemo"}[15s]) >= 2')
        up = self.query('up{job="tcpdemo"} == 1')
        return bool(response.get("data", {}).get("result")) and bool(
            up.get("data", {}).get("result")
        )

    def rules(self) -> list[dict[str, Any]]:
        response = httpJson(f"{self.base}/api/v1/rules")
        return [rule for group in response["data"]["groups"] for rule in group["rules"]]


# --- Tests -------------------------------------------------------------------


class ComposeTests(unittest.TestCase):
    """
    The docker-compose stack, checked by structure: Docker cannot run here.
    """

    def setUp(self) -> None:
        self.compose = loadYamlFile("docker-compose.yml")
        self.services = self.compose["services"]

    def test_services(self) -> None:
        self.assertEqual(set(self.services), {"tcpdemo", "prometheus", "grafana", "node-exporter"})

    def test_officialImagesPinned(self) -> None:
        expected = {
            "prometheus": "prom/prometheus",
            "grafana": "grafana/grafana",
            "node-exporter": "prom/node-exporter",
        }
        for service, repository in expected.items():
            image = self.services[service]["image"]
            name, _, tag = image.partition(":")
            self.assertEqual(name, repository)
            self.assertRegex(tag, r"^v?\d+\.\d+\.\d+$", f"{service} image must be pinned")

    def test_tcpdemoBuild(self) -> None:
        """
        tcpdemo is built from the repository root by monitor/Dockerfile,
        which runs the server in the foreground.
        """
        build = self.services["tcpdemo"]["build"]
        self.assertEqual(build["context"], "..")
        context = os.path.normpath(os.path.join(MONITOR, build["context"]))
        self.assertEqual(context, os.path.normpath(REPO_ROOT))
        dockerfile = os.path.join(context, build["dockerfile"])
        self.assertEqual(os.path.normpath(dockerfile), os.path.join(MONITOR, "Dockerfile"))
        with open(dockerfile, encoding="utf-8") as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^FROM python:3\.\d+-slim-\w+$")
        cmd = re.search(r"(?m)^CMD (\[.*\])$", text)
        assert cmd is not None
        argv = json.loads(cmd.group(1))
        self.assertEqual(argv[:4], ["twistd", "-n", "--pidfile=", "tcpdemo"])
        self.assertIn("tcp:8889", argv)
        self.assertRegex(text, r"(?m)^EXPOSE 8888 8889$")

    def test_buildContextKeepsThePackage(self) -> None:
        """
        monitor/Dockerfile.dockerignore does not leave out what
        C{pip install .} needs.
        """
        with open(os.path.join(MONITOR, "Dockerfile.dockerignore"), encoding="utf-8") as f:
            patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        needed = ["pyproject.toml", "setup.cfg", "tcpdemo/__init__.py", "tcpdemo/tap.py",
                  "twisted/plugins/tcpdemo_plugin.py"]  # fmt: skip
        for path in needed:
            self.assertTrue(os.path.exists(os.path.join(REPO_ROOT, path)), path)
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            for pattern in patterns:
                for prefix in prefixes:
                    self.assertFalse(
                        fnmatch.fnmatchcase(prefix, pattern.lstrip("/")),
                        f"{pattern} excludes {path}",
                    )

    def test_hostNetwork(self) -> None:
        """
        Every service shares the host's network, as in the seed article, so
        the localhost targets of prometheus.yml and the datasource URL hold.
        """
        for name, service in self.services.items():
            self.assertEqual(service.get("network_mode"), "host", name)
            self.assertNotIn("ports", service, f"{name}: ports mean nothing on the host network")

    def bindMounts(self, service: str) -> dict[str, str]:
        """
        Container path -> host path of a service's bind mounts, checking
        that each host path in monitor/ exists.
        """
        mounts = {}
        for volume in self.services[service].get("volumes", []):
            host, container = volume.split(":")[:2]
            if host.startswith("./"):
                self.assertTrue(os.path.exists(os.path.join(MONITOR, host)), volume)
            mounts[container] = host
        return mounts

    def test_prometheusMounts(self) -> None:
        mounts = self.bindMounts("prometheus")
        command = self.services["prometheus"]["command"]
        self.assertIn("--config.file=/etc/prometheus/prometheus.yml", command)
        self.assertEqual(mounts["/etc/prometheus/prometheus.yml"], "./prometheus.yml")
        # rule_files are relative to the config file, in the container too.
        for rules in loadYamlFile("prometheus.yml")["rule_files"]:
            self.assertEqual(mounts[f"/etc/prometheus/{rules}"], f"./{rules}")

    def test_grafanaMounts(self) -> None:
        """
        Grafana gets the provisioning directory, and the dashboards where the
        dashboard provider looks for them.
        """
        mounts = self.bindMounts("grafana")
        self.assertEqual(mounts["/etc/grafana/provisioning"], "./grafana/provisioning")
        provider = loadYamlFile("grafana", "provisioning", "dashboards", "tcpdemo.yml")
        path = provider["providers"][0]["options"]["path"]
        self.assertEqual(mounts[path], "./grafana/dashboards")
        home = self.services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        self.assertEqual(home, f"{path}/tcpdemo.json")

    def test_nodeExporter(self) -> None:
        service = self.services["node-exporter"]
        self.assertEqual(service["pid"], "host")
        self.assertIn("--path.rootfs=/host", service["command"])
        self.assertIn("/:/host:ro,rslave", service["volumes"])


class PrometheusConfigTests(unittest.TestCase):
    def setUp(self) -> None:
        self.config = loadYamlFile("prometheus.yml")

    def test_jobs(self) -> None:
        """
        Prometheus itself, tcpdemo on :8889 and node-exporter on :9100, every
        5 s, as in the seed article.
        """
        self.assertEqual(self.config["global"]["scrape_interval"], "5s")
        jobs = {
            job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
            for job in self.config["scrape_configs"]
        }
        self.assertEqual(
            jobs,
            {
                "prometheus": ["localhost:9090"],
                "tcpdemo": ["localhost:8889"],
                "node": ["localhost:9100"],
            },
        )
        self.assertEqual(self.config["rule_files"], ["rules.yml"])

    def test_testConfig(self) -> None:
        """
        The test's config keeps the jobs but moves their targets, shortens
        the intervals, and drops the node job.
        """
        config, dropped = testPrometheusConfig(self.config, "127.0.0.1:1", "127.0.0.1:2")
        self.assertEqual(dropped, ["node"])
        self.assertEqual(config["global"]["scrape_interval"], "1s")
        self.assertEqual(config["global"]["evaluation_interval"], "1s")
        self.assertEqual(config["rule_files"], [os.path.join(MONITOR, "rules.yml")])
        self.assertEqual(
            [(job["job_name"], job["static_configs"]) for job in config["scrape_configs"]],
            [
                ("prometheus", [{"targets": ["127.0.0.1:1"]}]),
                ("tcpdemo", [{"targets": ["127.0.0.1:2"]}]),
            ],
        )
        # The source is left as it was.
        self.assertEqual(self.config, loadYamlFile("prometheus.yml"))

    def test_unknownJob(self) -> None:
        config = copy.deepcopy(self.config)
        config["scrape_configs"].append({"job_name": "other", "static_configs": []})
        self.assertRaises(ValueError, testPrometheusConfig, config, "a:1", "b:2")


class PromtoolTests(unittest.TestCase):
    """
    What CI runs: C{promtool check config}, C{check rules} and C{test rules}.
    """

    def promtool(self, *args: str) -> str:
        promtool = requireBinary("promtool", package="prometheus")
        process = subprocess.run(
            [promtool, *args],
            cwd=MONITOR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        output = process.stdout.decode(errors="replace")
        self.assertEqual(process.returncode, 0, f"promtool {' '.join(args)}:\n{output}")
        return output

    def test_checkConfig(self) -> None:
        """
        monitor/prometheus.yml, and the rules it loads, are valid.
        """
        output = self.promtool("check", "config", "prometheus.yml")
        self.assertIn("1 rule files found", output)

    def test_checkTestConfig(self) -> None:
        """
        The config the live tests generate is valid too.
        """
        config, _ = testPrometheusConfig(
            loadYamlFile("prometheus.yml"), "127.0.0.1:9090", "127.0.0.1:8889"
        )
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        self.promtool("check", "config", path)

    def test_checkRules(self) -> None:
        output = self.promtool("check", "rules", "rules.yml")
        self.assertIn("SUCCESS", output)

    def test_testRules(self) -> None:
        output = self.promtool("test", "rules", "rules_test.yml")
        self.assertIn("SUCCESS", output)

    def test_everyAlertTestedBothWays(self) -> None:
        """
        Each alert in rules.yml has a case in rules_test.yml where it fires
        and one where it does not.
        """
        rules = loadYamlFile("rules.yml")
        alerts = {
            rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
        }
        self.assertGreaterEqual(
            alerts,
            {
                "TcpdemoDown",
                "TcpdemoConnectionsNearLimit",
                "TcpdemoHandlerErrors",
                "TcpdemoHandlerTimeouts",
                "TcpdemoHandlerSlow",
            },
        )
        tests = loadYamlFile("rules_test.yml")
        self.assertEqual(tests["rule_files"], ["rules.yml"])
        firing: set[str] = set()
        silent: set[str] = set()
        for case in tests["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
        self.assertEqual(alerts - firing, set(), "alerts never tested firing")
        self.assertEqual(alerts - silent, set(), "alerts never tested silent")


class DashboardTests(unittest.TestCase):
    """
    The dashboard and Grafana's provisioning, offline.
    """

    def setUp(self) -> None:
        self.dashboard = loadDashboard()
        self.panels = list(iterPanels(self.dashboard["panels"]))
        self.queries = dashboardQueries(self.dashboard)

    def test_seedPanels(self) -> None:
        """
        The seed article's three panels, with its expressions.
        """
        for title, expr in SEED_PANELS.items():
            self.assertIn((title, expr), self.queries)

    def test_requiredMetrics(self) -> None:
        text = "\n".join(expr for _, expr in self.queries)
        for name in REQUIRED_METRICS:
            self.assertIn(name, text)
        self.assertIn("by (reason)", text)

    def test_handlerLatencyQuantiles(self) -> None:
        """
        The handler latency panel shows p50 and p99 of the batch histogram,
        from the rates of its buckets summed by C{le}.
        """
        exprs = [expr for title, expr in self.queries if title == HANDLER_LATENCY_PANEL]
        self.assertEqual(
            exprs,
            [
                f"histogram_quantile({q}, sum by (le) "
                "(rate(tcpdemo_handler_batch_seconds_bucket[1m])))"
                for q in ("0.5", "0.99")
            ],
        )

    def test_positivePanelsExist(self) -> None:
        self.assertLessEqual(set(POSITIVE_UNDER_LOAD), {title for title, _ in self.queries})

    def test_noNodeMetrics(self) -> None:
        """
        The live test runs no node-exporter, so the dashboard must not need
        one (the stock dashboard 1860 shows node metrics).
        """
        for title, expr in self.queries:
            self.assertNotRegex(expr, r"\bnode_", title)

    def test_datasource(self) -> None:
        """
        Every panel and query names the provisioned datasource by its uid.
        """
        datasources = loadYamlFile("grafana", "provisioning", "datasources", "prometheus.yml")
        [datasource] = datasources["datasources"]
        self.assertEqual(datasource["type"], "prometheus")
        self.assertEqual(datasource["url"], "http://localhost:9090")
        expected = {"type": "prometheus", "uid": datasource["uid"]}
        for panel in self.panels:
            if panel.get("type") == "row":
                continue
            self.assertEqual(panel["datasource"], expected, panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"], expected, panel["title"])

    def test_wellFormed(self) -> None:
        self.assertEqual(self.dashboard["uid"], "tcpdemo")
        ids = [panel["id"] for panel in self.panels]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in self.panels:
            grid = panel["gridPos"]
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
            refIds = [target["refId"] for target in panel.get("targets", [])]
            self.assertEqual(len(refIds), len(set(refIds)), panel["title"])
        for _, expr in self.queries:
            self.assertNotIn("$", expr)

    def test_iterPanelsFindsNestedPanels(self) -> None:
        dashboard = {
            "panels": [
                {"type": "row", "title": "open", "panels": []},
                {"title": "a", "targets": [{"expr": "x"}, {"expr": ""}]},
                {
                    "type": "row",
                    "title": "collapsed",
                    "panels": [{"title": "b", "targets": [{"expr": "y"}]}],
                },
            ]
        }
        self.assertEqual(dashboardQueries(dashboard), [("a", "x"), ("b", "y")])

    def test_checkQueriesReportsProblems(self) -> None:
        """
        L{checkQueries} reports failed queries, empty results and zeros
        where values above zero are required.
        """
        answers: dict[str, dict[str, Any]] = {
            "ok": {"status": "success",
                   "data": {"resultType": "vector", "result": [{"value": [1, "2"]}]}},
            "zero": {"status": "success",
                     "data": {"resultType": "vector", "result": [{"value": [1, "0"]}]}},
            "empty": {"status": "success", "data": {"resultType": "vector", "result": []}},
            "bad": {"status": "error", "error": "parse error"},
        }  # fmt: skip
        queries = [("p", "ok"), ("p", "zero"), ("q", "zero"), ("q", "empty"), ("q", "bad"),
                   ("q", "$job")]  # fmt: skip
        problems = checkQueries(lambda expr, at: answers[expr], queries, 0.0, {"p"})
        self.assertEqual(len(problems), 4, problems)
        self.assertIn("no value above zero", problems[0])
        self.assertIn("no data", problems[1])
        self.assertIn("query failed", problems[2])
        self.assertIn("Grafana variable", problems[3])


class LivePrometheusTests(unittest.TestCase):
    """
    A real Prometheus, configured from monitor/prometheus.yml, scraping a
    real server; every dashboard query must return data.
    """

    def workdir(self) -> str:
        path: str = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def test_dashboardHasDataUnderLoad(self) -> None:
        """
        Under load from C{tcpdemo.client}, every query of every panel returns
        data, and the throughput, process and handler panels are above zero
        at a moment inside the load window.  The alert rules load and
        evaluate.

        The server runs the durable C{sqlite} handler, a real one with real
        latency (the default C{ack} answers at once, and the idle control of
        L{test_checkerHasTeeth} covers it).
        """
        workdir = self.workdir()
        store = os.path.join(workdir, "submits.db")
        stack = LiveStack(self, workdir, ["--handler", f"sqlite:{store}"])
        start = time.time()
        client = subprocess.run(
            [
                sys.executable, "-m", "tcpdemo.client",
                "--port", f"tcp:{LOOPBACK}:{stack.server.port}",
                "--connections", "4",
                "--window", "32",
                "--duration", str(LOAD_SECONDS),
                "--quiet",
            ],
            cwd=stack.workdir,
            env=subprocessEnv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=LOAD_SECONDS + 30,
        )  # fmt: skip
        end = time.time()
        output = client.stdout.decode(errors="replace")
        self.assertEqual(client.returncode, 0, f"tcpdemo.client failed:\n{output}")

        # A moment inside the load window, as Prometheus saw it: the middle
        # of the samples where clients were connected.
        stack.waitFor(lambda: time.time() > end + 2, 5, "a scrape after the load")
        connected = stack.queryRange("tcpdemo_client_connected > 0", start, end, 0.5)
        series = connected["data"]["result"]
        self.assertTrue(series, f"no connections seen during load:\n{output}{stack.diagnostics()}")
        stamps = sorted(float(t) for t, _ in series[0]["values"])
        at = stamps[len(stamps) // 2]

        queries = dashboardQueries(loadDashboard())
        problems = checkQueries(stack.query, queries, at, POSITIVE_UNDER_LOAD)
        self.assertEqual(problems, [], f"client output:\n{output}{stack.diagnostics()}")

        # The rules of monitor/rules.yml were loaded and evaluate cleanly.
        def evaluated() -> bool:
            return all(rule.get("health") == "ok" for rule in stack.rules())

        stack.waitFor(evaluated, 10, f"every rule to evaluate: {stack.rules()}")
        names = {rule["name"] for rule in stack.rules()}
        self.assertGreaterEqual(names, {"TcpdemoConnectionsNearLimit", "TcpdemoHandlerSlow"})
        firing = [rule["name"] for rule in stack.rules() if rule.get("state") == "firing"]
        self.assertEqual(firing, [])

    def test_checkerHasTeeth(self) -> None:
        """
        The check of L{test_dashboardHasDataUnderLoad} fails a dashboard
        that queries a metric the server does not have, and a rate panel
        that is zero because no load ran.
        """
        stack = LiveStack(self, self.workdir())
        at = time.time()
        dashboard = loadDashboard()
        # Idle, every query still returns data (zeros, or NaN for the
        # latency quantiles of a histogram with no batch yet): the control.
        # The server runs the default ack handler: the handler metrics
        # exist, with their result labels, before any Submit.
        self.assertEqual(checkQueries(stack.query, dashboardQueries(dashboard), at), [])

        broken = copy.deepcopy(dashboard)
        for panel in iterPanels(broken["panels"]):
            if panel.get("title") == "rsp_send_rate":
                panel["targets"][0]["expr"] = "rate(tcpdemo_rsp_sent_total[15s])"
        broken["panels"].append(
            {
                "type": "row",
                "title": "collapsed",
                "collapsed": True,
                "panels": [{"title": "ghost", "targets": [{"expr": "tcpdemo_no_such_metric"}]}],
            }
        )
        problems = checkQueries(stack.query, dashboardQueries(broken), at)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("'rate(tcpdemo_rsp_sent_total[15s])': no data", problems[0])
        self.assertIn("'tcpdemo_no_such_metric': no data", problems[1])

        # Without load the request rate is zero, which the load test rejects.
        problems = checkQueries(
            stack.query, [("req_recv_rate", SEED_PANELS["req_recv_rate"])], at, POSITIVE_UNDER_LOAD
        )
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("no value above zero", problems[0])
