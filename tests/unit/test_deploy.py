"""deploy/ says what the code does: metric names, ports, paths, node names and grace periods.

Every alert and dashboard query must name series a node really exposes; the cluster files must
load and agree with the compose file, the Kubernetes manifests and the Prometheus targets; the
manifests must validate against the Kubernetes schemas; promtool, when installed, checks the
Prometheus files and runs the alert scenarios of deploy/prometheus/alerts.test.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from federation import cluster
from node import metrics as node_metrics
from node import server
from sync import metrics as sync_metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "selfmodel.json"
DOMAINS = {"sales", "support", "billing"}

# Series Prometheus itself makes, not a node.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Labels Prometheus attaches to every series of a target (prometheus.yml, prometheus.k8s.yml).
TARGET_LABELS = {"job", "instance", "node", "domain", "namespace"}
# Sample names per metric type, after the family name (prometheus_client's exposition).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="PROMTOOL IS NOT INSTALLED: the promtool checks of deploy/prometheus are skipped "
    "(Debian/Ubuntu: apt-get install prometheus, as .ci/run does); the Prometheus files are "
    "then checked by the Python tests only",
)


# -- reading deploy/ ----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"deploy/k8s has no {kind} {name}")


def statefulset() -> dict[str, Any]:
    return k8s_object("StatefulSet", "selfmodel")


def node_container() -> dict[str, Any]:
    [container] = statefulset()["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def configmap_cluster(key: str = "cluster.toml") -> cluster.Cluster:
    text = k8s_object("ConfigMap", "selfmodel-cluster")["data"][key]
    return cluster.parse(tomllib.loads(text), Path("/etc/selfmodel/config"), None)


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")  # type: ignore[no-any-return]


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard()["panels"] for t in p.get("targets", [])]


def port_of(address: str) -> int:
    return server.split_address(address)[1]


def host_of(address: str) -> str:
    return server.split_address(address)[0]


# -- the metrics a node exposes -------------------------------------------------------------------


def exposed_series() -> set[str]:
    """Every sample name of every family registered by a running node's modules."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def metric_labels() -> dict[str, set[str]]:
    """Sample name -> label names, for the metrics of node/metrics.py and sync/metrics.py.

    prometheus_client has no public accessor for a metric's label names; ``_labelnames`` has
    been stable for years.
    """
    labels: dict[str, set[str]] = {}
    for module in (node_metrics, sync_metrics):
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            family = next(iter(value.describe()))
            for suffix in _SUFFIXES.get(family.type, ("",)):
                extra = {"le"} if suffix == "_bucket" else set()
                labels[family.name + suffix] = set(value._labelnames) | extra
    return labels


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.$:])[A-Za-z_:][A-Za-z0-9_:]*(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}
_SELECTOR = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"")


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, function calls, numbers and keywords are taken out."""
    bare = _STRINGS.sub('""', expr)
    bare = _MATCHERS.sub(" ", bare)
    bare = _RANGES.sub(" ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {name for name in _IDENT.findall(bare) if name not in _KEYWORDS}


def selectors(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every label matcher of a named selector."""
    found = []
    for metric, body in _SELECTOR.findall(expr):
        for label, op, value in _MATCHER.findall(body):
            found.append((metric, label, op, value))
    return found


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert and every dashboard target, Grafana variables filled in."""
    found = [(f"alerts.yml {r['alert']}", r["expr"]) for r in alert_rules()]
    for title, target in dashboard_targets():
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$node", ".*")
        found.append((f"dashboard panel {title!r}", expr))
    return found


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up == 0", {"up"}),
        (
            'sum by (node, peer) (rate(selfmodel_deltas_sent_total{job="x", peer=~"a|b"}[5m]))'
            " / on (job) group_left(node) up > bool 0.5",
            {"selfmodel_deltas_sent_total", "up"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) "
            '(rate(grpc_server_handling_seconds_bucket{grpc_type="unary"}[$__rate_interval])))',
            {"grpc_server_handling_seconds_bucket"},
        ),
        ('count(ALERTS{alertname=~"SelfModel.*"}) or vector(0)', {"ALERTS"}),
        ("selfmodel_lag offset 5m > 1e3", {"selfmodel_lag"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_alert_and_dashboard_query_names_series_a_node_exposes() -> None:
    known = exposed_series() | PROMETHEUS_SERIES
    assert "selfmodel_replication_lag_seconds" in known, "sync.metrics is not registered"
    assert "grpc_server_handled_total" in known, "node.metrics is not registered"
    unknown = {(where, name) for where, expr in queries() for name in metric_names(expr) - known}
    assert not unknown, f"series no node exposes (typo, or a metric renamed?): {sorted(unknown)}"


def test_every_label_matcher_uses_a_label_the_metric_has() -> None:
    labels = metric_labels()
    wrong = []
    for where, expr in queries():
        for metric, label, _, _ in selectors(expr):
            if metric in labels and label not in labels[metric] | TARGET_LABELS:
                wrong.append((where, metric, label))
    assert not wrong, f"label matchers on labels the metric does not have: {wrong}"


def test_grpc_codes_are_spelled_as_the_node_reports_them() -> None:
    # node/metrics.py reports grpc.StatusCode names (INVALID_ARGUMENT), not Go's InvalidArgument.
    codes = {c.name for c in grpc.StatusCode}
    wrong = []
    for where, expr in queries():
        for _, label, _, value in selectors(expr):
            if label == "grpc_code":
                wrong += [(where, v) for v in value.split("|") if v not in codes]
    assert not wrong, f"grpc_code values that no call ever has: {wrong}"


def test_the_dashboard_covers_every_metric_the_alerts_use() -> None:
    in_alerts = {n for r in alert_rules() for n in metric_names(r["expr"])}
    in_dashboard = {n for _, t in dashboard_targets() for n in metric_names(t["expr"])}
    assert in_alerts - in_dashboard - {"up"} == set()


# -- alerts ------------------------------------------------------------------------------------


def test_every_alert_has_a_severity_a_summary_and_what_to_do() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 120, f"{rule['alert']}: say what to do"


def test_every_alert_is_explained_in_the_readme() -> None:
    readme = (DEPLOY / "README.md").read_text()
    missing = [r["alert"] for r in alert_rules() if f"`{r['alert']}`" not in readme]
    assert not missing, f"deploy/README.md does not explain {missing}"


def test_alerts_the_brief_promised_exist() -> None:
    series = {n for r in alert_rules() for n in metric_names(r["expr"])}
    for name in (
        "up",
        "selfmodel_replication_lag_seconds",
        "selfmodel_peer_connected",
        "selfmodel_peers_connected",
        "selfmodel_outbox_depth",
        "selfmodel_clock_skew_refused_total",
        "selfmodel_outbox_peers_dropped_total",
        "selfmodel_anti_entropy_subjects_repaired_total",
        "selfmodel_handoff_timeouts_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
    ):
        assert name in series, f"no alert watches {name}"


# -- Grafana -----------------------------------------------------------------------------------


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_queries_go_through_the_datasource_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["node"]["type"] == "query"
    for title, target in dashboard_targets():
        assert target["datasource"]["uid"] == "${datasource}", title
        assert target["expr"].strip(), title


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/selfmodel.yml")["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    [source] = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"


# -- cluster files, compose, Prometheus targets ------------------------------------------------


def test_the_compose_cluster_file_loads_and_configures_credentials() -> None:
    compose_cluster = cluster.load(DEPLOY / "cluster.compose.toml")
    assert set(compose_cluster.names()) == DOMAINS
    assert {n.domain for n in compose_cluster.nodes} == DOMAINS
    # Binding 0.0.0.0 is refused without a token file; Sync off loopback needs mutual TLS.
    assert compose_cluster.tokens is not None and compose_cluster.tls is not None
    for node in compose_cluster.nodes:
        assert host_of(node.address) == "0.0.0.0"
        assert node.data == Path("/data") / node.name


def test_the_host_view_of_compose_names_the_same_nodes_at_the_published_ports() -> None:
    host_view = cluster.load(DEPLOY / "cluster.compose-host.toml")
    compose_cluster = cluster.load(DEPLOY / "cluster.compose.toml")
    assert host_view.names() == compose_cluster.names()
    services = compose()["services"]
    for node in host_view.nodes:
        inside = port_of(compose_cluster.node(node.name).address)
        assert f"{node.address}:{inside}" in services[node.name]["ports"]


def test_compose_runs_each_node_of_the_cluster_file_under_its_own_hostname() -> None:
    compose_cluster = cluster.load(DEPLOY / "cluster.compose.toml")
    services = compose()["services"]
    for node in compose_cluster.nodes:
        service = services[node.name]
        command = service["command"]
        assert command[command.index("--name") + 1] == node.name
        config = command[command.index("--cluster") + 1]
        assert f"./cluster.compose.toml:{config}:ro" in service["volumes"]
        # A node binds its peer_address, and its peers check it against its certificate.
        assert host_of(node.peer_address) == service["hostname"] == node.name
        assert any(v.endswith(":/data") for v in service["volumes"])


def test_compose_mounts_the_secrets_where_the_cluster_file_reads_them() -> None:
    compose_cluster = cluster.load(DEPLOY / "cluster.compose.toml")
    assert compose_cluster.tls is not None and compose_cluster.tokens is not None
    for node in compose_cluster.nodes:
        targets = {v.split(":")[1] for v in compose()["services"][node.name]["volumes"]}
        files = compose_cluster.tls[node.name]
        assert {str(files.ca.parent), str(files.cert.parent), str(files.key.parent)} <= targets
        assert str(compose_cluster.tokens.parent) in targets


def test_compose_bind_mounts_exist_except_the_secrets_an_operator_creates() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not source.startswith("./secrets"):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_scrapes_every_compose_node_with_its_node_label() -> None:
    compose_cluster = cluster.load(DEPLOY / "cluster.compose.toml")
    [job] = [
        j
        for j in load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
        if j["job_name"] == "selfmodel"
    ]
    targets = {t: c["labels"]["node"] for c in job["static_configs"] for t in c["targets"]}
    expected = {f"{n.name}:{port_of(n.metrics or '')}": n.name for n in compose_cluster.nodes}
    assert targets == expected
    mounts = compose()["services"]["prometheus"]["volumes"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert f"./prometheus/{rule_file}:/etc/prometheus/{rule_file}:ro" in mounts


def test_shutdown_grace_covers_the_node_drain() -> None:
    drain = server.NodeConfig().grace_s
    grace = compose()["x-node"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= drain + 10
    spec = statefulset()["spec"]["template"]["spec"]
    pre_stop = node_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 10


# -- Kubernetes --------------------------------------------------------------------------------


def test_the_configmap_cluster_file_loads_with_one_node_per_pod() -> None:
    k8s_cluster = configmap_cluster()
    replicas = statefulset()["spec"]["replicas"]
    assert k8s_cluster.names() == [f"selfmodel-{i}" for i in range(replicas)]
    compose_domains = {n.domain for n in cluster.load(DEPLOY / "cluster.compose.toml").nodes}
    assert sorted(n.domain for n in k8s_cluster.nodes) == sorted(compose_domains)
    assert k8s_cluster.tokens is not None and k8s_cluster.tls is not None
    # The status view names the same nodes, at their pod DNS names.
    status_view = configmap_cluster("cluster-status.toml")
    assert status_view.names() == k8s_cluster.names()


def test_nodes_reach_each_other_through_the_headless_service() -> None:
    k8s_cluster = configmap_cluster()
    headless = statefulset()["spec"]["serviceName"]
    service = k8s_object("Service", headless)
    assert service["spec"]["clusterIP"] == "None"
    peer_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "peer")
    for node in k8s_cluster.nodes:
        assert host_of(node.peer_address) == "0.0.0.0"
        for peer in k8s_cluster.peers_of(node.name):
            assert peer.address == f"{peer.name}.{headless}:{peer_port}", node.name


def test_each_domain_has_a_service_selecting_its_node_pod() -> None:
    for node in configmap_cluster().nodes:
        service = k8s_object("Service", f"selfmodel-{node.domain}")
        selector = service["spec"]["selector"]
        assert selector["statefulset.kubernetes.io/pod-name"] == node.name
        [port] = service["spec"]["ports"]
        assert port["port"] == port_of(node.address)


def test_the_pod_runs_the_node_named_after_it_with_the_mounted_files() -> None:
    k8s_cluster = configmap_cluster()
    container = node_container()
    args = container["args"]
    assert args[args.index("--name") + 1] == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    config_dir = str(Path(args[args.index("--cluster") + 1]).parent)
    assert k8s_cluster.tls is not None and k8s_cluster.tokens is not None
    files = k8s_cluster.tls["selfmodel-0"]
    assert {config_dir, str(files.ca.parent), str(k8s_cluster.tokens.parent)} <= mounts
    assert {str(n.data.parent) for n in k8s_cluster.nodes} <= mounts


def test_ports_and_grpc_probes_match_the_cluster_file() -> None:
    node = configmap_cluster().nodes[0]
    container = node_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": port_of(node.address),
        "peer": port_of(node.peer_address),
        "metrics": port_of(node.metrics or ""),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_the_pod_runs_as_the_images_non_root_user_with_a_volume_for_its_data() -> None:
    spec = statefulset()["spec"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"--uid {pod['securityContext']['runAsUser']}" in dockerfile
    assert node_container()["securityContext"]["allowPrivilegeEscalation"] is False
    [claim] = spec["volumeClaimTemplates"]
    data_mount = next(
        m for m in node_container()["volumeMounts"] if m["name"] == claim["metadata"]["name"]
    )
    assert data_mount["mountPath"] == "/data"


def test_the_disruption_budget_and_services_select_the_node_pods() -> None:
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    budget = k8s_object("PodDisruptionBudget", "selfmodel")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    for _, doc in k8s_documents():
        if doc["kind"] == "Service":
            selector = dict(doc["spec"]["selector"])
            selector.pop("statefulset.kubernetes.io/pod-name", None)
            assert selector.items() <= labels.items(), doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def strategic_merge(base: Any, patch: Any) -> Any:
    """As much of Kubernetes' strategic merge patch as deploy/k8s's patches use: maps merge, a
    null deletes its key, lists of named maps (containers) merge item by item by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged[key], value) if key in merged else value
        return merged
    named = [*base, *patch] if isinstance(base, list) and isinstance(patch, list) else []
    if named and all(isinstance(item, dict) and "name" in item for item in named):
        merged_list = list(base)
        for item in patch:
            at = [i for i, old in enumerate(merged_list) if old["name"] == item["name"]]
            if at:
                merged_list[at[0]] = strategic_merge(merged_list[at[0]], item)
            else:
                merged_list.append(item)
        return merged_list
    return patch


def test_strategic_merge_follows_kubernetes_for_maps_nulls_and_named_lists() -> None:
    base = {"a": {"grpc": {"port": 1}, "keep": 1}, "cs": [{"name": "x", "v": 1}, {"name": "y"}]}
    patch = {"a": {"grpc": None, "exec": {"command": ["c"]}}, "cs": [{"name": "y", "v": 2}]}
    assert strategic_merge(base, patch) == {
        "a": {"keep": 1, "exec": {"command": ["c"]}},
        "cs": [{"name": "x", "v": 1}, {"name": "y", "v": 2}],
    }


AGENTS_TLS = K8S / "agents-tls"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def agents_tls_statefulset() -> dict[str, Any]:
    """deploy/k8s's StatefulSet with the agents-tls component's patch applied."""
    component = load_yaml(AGENTS_TLS / "kustomization.yaml")
    assert component["kind"] == "Component"
    [ref] = component["patches"]
    patch = load_yaml(AGENTS_TLS / ref["path"])
    assert (patch["kind"], patch["metadata"]["name"]) == ("StatefulSet", "selfmodel")
    return strategic_merge(statefulset(), patch)  # type: ignore[no-any-return]


def agents_tls_probe_command() -> list[str]:
    """The exec probes' command of the agents-tls component (also run by tests/integration)."""
    [container] = agents_tls_statefulset()["spec"]["template"]["spec"]["containers"]
    commands = {tuple(container[p]["exec"]["command"]) for p in PROBES}
    assert len(commands) == 1, commands
    return list(commands.pop())


def test_the_agents_tls_component_probes_with_selfmodel_health_on_the_pods_cluster_file() -> None:
    [container] = agents_tls_statefulset()["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    for probe in PROBES:
        handlers = {"exec", "grpc", "httpGet", "tcpSocket"} & container[probe].keys()
        assert handlers == {"exec"}, probe
    command = agents_tls_probe_command()
    assert command == ["selfmodel", "health", "--cluster", args[args.index("--cluster") + 1]]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # a WAL replay's time


def _k8s_versions() -> list[str]:
    validate = pytest.importorskip(
        "kubernetes_validate.utils",
        reason="kubernetes-validate is not installed (pip install '.[dev]')",
    )
    supported = [v for v in validate.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 27)]
    return sorted(set(supported), key=lambda v: tuple(map(int, v.split("."))))


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    """Strict (unknown fields fail) against the oldest Kubernetes deploy/ supports (1.27: gRPC
    probes and PVC retention) and the newest one kubernetes-validate ships (offline schemas);
    the StatefulSet also as the agents-tls component patches it."""
    versions = _k8s_versions()
    from kubernetes_validate import utils

    assert versions, "kubernetes-validate ships no schema of 1.27 or later"
    documents = [*k8s_documents(), (AGENTS_TLS / "probes.yaml", agents_tls_statefulset())]
    for version in {versions[0], versions[-1]}:
        for path, doc in documents:
            try:
                utils.validate(doc, version, strict=True)
            except utils.ValidationError as exc:
                pytest.fail(
                    f"{path.name} {doc['kind']}/{doc['metadata']['name']} on {version}: {exc}"
                )


# -- the image ---------------------------------------------------------------------------------


def test_the_image_installs_every_package_and_exposes_the_cluster_ports() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"]
    roots = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    folders = {package_dirs.get(r, r).split("/")[0] for r in roots}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for folder in folders:
        assert re.search(rf"^COPY {folder} \./{folder}$", dockerfile, re.M), folder
        assert f"!{folder}/" in ignore, folder
    node = configmap_cluster().nodes[0]
    exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split())  # type: ignore[union-attr]
    assert exposed == {
        str(port_of(a)) for a in (node.address, node.peer_address, node.metrics or "")
    }
    assert re.search(r"^USER selfmodel:selfmodel$", dockerfile, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.M)
    assert re.search(r'^VOLUME \["/data"\]$', dockerfile, re.M)
    assert healthcheck_command() == ["selfmodel", "health"]


def test_compose_checks_each_node_through_the_cluster_file_it_runs() -> None:
    """The check follows the cluster file (address, TLS on the agents' port), for the node the
    container's hostname names."""
    services = compose()["services"]
    for name in DOMAINS:
        service = services[name]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "selfmodel", "health"], name
        command = service["command"]
        assert test[test.index("--cluster") + 1] == command[command.index("--cluster") + 1]
        assert "--name" not in test and service["hostname"] == name


def healthcheck_command() -> list[str]:
    """The exec form of the Dockerfile's HEALTHCHECK CMD (also run by tests/integration)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M)
    assert match, "the Dockerfile has no exec-form HEALTHCHECK CMD"
    return json.loads(match.group(1))  # type: ignore[no-any-return]


# -- promtool ----------------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_compose_prometheus_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _has_kubernetes_sd(tmp_path: Path) -> bool:
    probe = tmp_path / "probe.yml"
    probe.write_text("scrape_configs: [{job_name: p, kubernetes_sd_configs: [{role: pod}]}]\n")
    return _promtool("check", "config", str(probe), cwd=tmp_path).returncode == 0


@needs_promtool
def test_promtool_accepts_the_kubernetes_prometheus_config(tmp_path: Path) -> None:
    """With Kubernetes discovery in this promtool, the file as it is. Debian builds promtool
    without it: then the file with each kubernetes_sd_configs block swapped for a static target,
    so promtool still checks everything else (globals, rule files, every relabelling), and
    test_the_kubernetes_scrape_job_discovers_the_node_pods checks the discovery block."""
    if _has_kubernetes_sd(tmp_path):
        result = _promtool("check", "config", "prometheus.k8s.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        return
    config = load_yaml(PROMETHEUS / "prometheus.k8s.yml")
    jobs = [job for job in config["scrape_configs"] if "kubernetes_sd_configs" in job]
    assert jobs, "prometheus.k8s.yml has no Kubernetes discovery"
    for job in jobs:
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["selfmodel-0.selfmodel.selfmodel:9470"]}]
    (tmp_path / "prometheus.k8s.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for rules in config.get("rule_files", []):
        shutil.copy(PROMETHEUS / rules, tmp_path / rules)
    result = _promtool("check", "config", "prometheus.k8s.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# kubernetes_sd_config as Prometheus documents it: its fields, its roles, and the meta labels a
# pod target carries (role pod).
K8S_SD_FIELDS = {
    "api_server", "role", "kubeconfig_file", "namespaces", "selectors", "attach_metadata",
    "basic_auth", "authorization", "oauth2", "proxy_url", "no_proxy", "proxy_from_environment",
    "proxy_connect_header", "follow_redirects", "enable_http2", "tls_config",
}  # fmt: skip
K8S_SD_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}
POD_META = re.compile(
    r"__meta_kubernetes_(namespace|pod_(name|ip|uid|ready|phase|node_name|host_ip"
    r"|controller_kind|controller_name|container_(init|name|id|image|port_name|port_number"
    r"|port_protocol)|(label|labelpresent|annotation|annotationpresent)_[a-zA-Z0-9_]+))"
)
RELABEL_ACTIONS = {
    "replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop",
    "labelkeep", "lowercase", "uppercase",
}  # fmt: skip


def _label_name(key: str) -> str:
    """A Kubernetes label as Prometheus names it in __meta_kubernetes_pod_label_<name>."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def test_the_kubernetes_scrape_job_discovers_the_node_pods() -> None:
    """Where promtool cannot check Kubernetes discovery: its fields are ones Prometheus knows,
    and its relabelling keeps exactly the pods and port deploy/k8s defines."""
    config = load_yaml(PROMETHEUS / "prometheus.k8s.yml")
    [job] = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    for sd in job["kubernetes_sd_configs"]:
        assert set(sd) <= K8S_SD_FIELDS, set(sd) - K8S_SD_FIELDS
        assert sd["role"] == "pod", sd  # the relabelling below reads pod meta labels
        assert set(sd.get("namespaces", {})) <= {"names", "own_namespace"}
        assert sd["namespaces"]["names"] == [namespace]
    template = statefulset()["spec"]["template"]
    pod_labels = {
        f"__meta_kubernetes_pod_label_{_label_name(k)}": v
        for k, v in template["metadata"]["labels"].items()
    }
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
             for p in c.get("ports", [])}  # fmt: skip
    kept = []
    for rule in job["relabel_configs"]:
        action = rule.get("action", "replace")
        assert action in RELABEL_ACTIONS, rule
        sources = rule.get("source_labels", [])
        for label in sources:
            assert POD_META.fullmatch(label), f"{label} is no meta label of a pod target"
        re.compile(rule.get("regex", "(.*)"))
        if action == "keep":
            [label] = sources
            kept.append(label)
            regex = re.compile(rule["regex"])
            if label.startswith("__meta_kubernetes_pod_label_"):
                assert label in pod_labels, f"the node pods have no label for {label}"
                assert regex.fullmatch(pod_labels[label]), (label, pod_labels[label])
            elif label == "__meta_kubernetes_pod_container_port_name":
                assert [p for p in ports if regex.fullmatch(p)] == ["metrics"], ports
        if action == "replace" and "target_label" in rule:
            assert rule["target_label"] in TARGET_LABELS, rule
    # Only the node pods' metrics port is kept, and every series gets the node's name.
    assert set(kept) == {
        "__meta_kubernetes_pod_label_app_kubernetes_io_name",
        "__meta_kubernetes_pod_container_port_name",
    }
    assert {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "node"} in job[
        "relabel_configs"
    ]


@needs_promtool
def test_alert_scenarios_raise_exactly_the_expected_alerts(tmp_path: Path) -> None:
    """deploy/prometheus/alerts.test.yml against alerts.yml without its annotations, which
    promtool would otherwise compare word for word."""
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(PROMETHEUS / "alerts.test.yml", tmp_path / "alerts.test.yml")
    result = _promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """promtool has no command for one query, so the dashboard's become recording rules."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (where, expr) in enumerate(queries())
        if where.startswith("dashboard")
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_yaml_file_of_deploy_parses() -> None:
    paths = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert len(paths) >= 10
    for path in paths:
        if "secrets" in path.parts:
            continue
        assert list(yaml.safe_load_all(path.read_text())), path
