#!/usr/bin/env python3
"""Static checks of the deployment files, called by scripts/validate-deploy.sh.

Runs with the tool virtual environment that script creates: it needs PyYAML and
helm-python-sdk (Helm's own template engine behind a C library; no helm binary).

Subcommands:
  render-k8s [--write]   render k8s/ with the default values and compare the result with
                         k8s/rendered/iot-anomaly.yaml (--write replaces that file)
  k8s-variants DIR       render non-default values into DIR for kubernetes-validate,
                         check the ServiceMonitor against the Service, and write the
                         ConfigMap's config.toml to DIR/config.toml
  dashboard              parse the Grafana dashboard and provisioning files
  metric-names           every iot_anomaly_* metric in the dashboard and the rules is
                         registered in src/telemetry.rs
  dockerfile LIBTORCH BINARY...
                         every COPY source exists, and every libtorch library the
                         binaries load is copied into the runtime stage. Prints the
                         copied libraries relative to the libtorch root.
  compose-env            print the IOT_ANOMALY__* variables the compose services set,
                         one NAME=VALUE a line
"""

import json
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "k8s"
RENDERED = CHART / "rendered" / "iot-anomaly.yaml"
RELEASE = "iot-anomaly"
NAMESPACE = "iot-anomaly"
DASHBOARD = ROOT / "deploy/grafana/dashboards/iot-anomaly.json"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "deploy/grafana/provisioning/dashboards/iot-anomaly.yml"
RULES = ROOT / "deploy/prometheus/rules.yml"
TELEMETRY = ROOT / "src/telemetry.rs"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
# libtorch directory in the Dockerfile's build stage (its IOT_ANOMALY_CACHE).
IMAGE_LIBTORCH_ROOT = "/opt/iot-anomaly/libtorch-2.13.0"

# The order `helm template` prints kinds in (Helm's InstallOrder, for the kinds this
# chart has); hooks such as the trainer Job come last.
KIND_ORDER = [
    "PodDisruptionBudget",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Job",
    "ServiceMonitor",
]


class CheckFailed(Exception):
    pass


def render_chart(values=None):
    """Renders the chart; returns (template path, manifest text) pairs in kind order."""
    import helm_python as helm

    lint = helm.lint(str(CHART))
    if lint["errors"] or any(m["severity"] >= 3 for m in lint["messages"]):
        raise CheckFailed(f"helm lint k8s: {lint}")
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    documents = []
    for path, text in manifests.items():
        text = text.strip()
        if not text or not path.endswith(".yaml"):
            continue
        kind = yaml.safe_load(text)["kind"]
        if kind not in KIND_ORDER:
            raise CheckFailed(f"{path}: kind {kind} is missing from KIND_ORDER in {__file__}")
        documents.append((KIND_ORDER.index(kind), path, text))
    documents.sort()
    return [(path, text) for _, path, text in documents]


def as_stream(documents):
    header = (
        "# The k8s/ chart rendered with its default values (release iot-anomaly, namespace\n"
        "# iot-anomaly), for clusters without Helm. Regenerate with `make render-k8s`;\n"
        "# `make test` fails when this file and the chart disagree.\n"
    )
    body = "".join(f"---\n# Source: {path}\n{text}\n" for path, text in documents)
    return header + body


def render_k8s(args):
    rendered = as_stream(render_chart())
    if args[:1] == ["--write"]:
        RENDERED.parent.mkdir(exist_ok=True)
        RENDERED.write_text(rendered)
        print(f"wrote {RENDERED.relative_to(ROOT)}")
        return
    current = RENDERED.read_text() if RENDERED.exists() else ""
    if current != rendered:
        import difflib

        diff = difflib.unified_diff(
            current.splitlines(True),
            rendered.splitlines(True),
            str(RENDERED.relative_to(ROOT)),
            "helm render of k8s/",
        )
        sys.stderr.writelines(diff)
        raise CheckFailed(
            f"{RENDERED.relative_to(ROOT)} differs from the rendered chart; run `make render-k8s`"
        )
    print(f"{RENDERED.relative_to(ROOT)} matches the chart rendered by Helm's engine")


def k8s_variants(args):
    out = pathlib.Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    variant = {
        "autoscaling": {"enabled": False},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "modelVolume": {"create": False, "existingClaim": "models"},
        "trainer": {"enabled": False},
        "extraEnv": [{"name": "IOT_ANOMALY__SCORING__MAX_BATCH", "value": "256"}],
    }
    documents = [yaml.safe_load(text) for _, text in render_chart(variant)]
    by_kind = {doc["kind"]: doc for doc in documents}

    # kubernetes-validate ships no schema for this custom resource, so check what
    # the Prometheus Operator needs to find the pods: the selector must match the
    # Service's labels and the endpoint must name one of its ports.
    monitor, service = by_kind["ServiceMonitor"], by_kind["Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    labels = service["metadata"]["labels"]
    if any(labels.get(key) != value for key, value in selector.items()):
        raise CheckFailed(f"ServiceMonitor selector {selector} does not match Service labels {labels}")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        if endpoint["port"] not in port_names:
            raise CheckFailed(f"ServiceMonitor port {endpoint['port']} is not a Service port {port_names}")
    if monitor["apiVersion"] != "monitoring.coreos.com/v1":
        raise CheckFailed(f"ServiceMonitor apiVersion {monitor['apiVersion']}")
    if "replicas" not in by_kind["Deployment"]["spec"]:
        raise CheckFailed("with autoscaling disabled the Deployment must set replicas")
    print("ServiceMonitor selects the metrics Service and names its port")

    others = [doc for doc in documents if doc["kind"] != "ServiceMonitor"]
    (out / "variant.yaml").write_text(yaml.safe_dump_all(others, sort_keys=False))
    configmap = next(doc for doc in documents if doc["kind"] == "ConfigMap")
    (out / "config.toml").write_text(configmap["data"]["config.toml"])


def dashboard(_args):
    data = json.loads(DASHBOARD.read_text())
    datasource_uids = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    if not providers or not all(p["options"]["path"] for p in providers):
        raise CheckFailed(f"{DASHBOARD_PROVIDERS}: no dashboard path")
    ids = [panel["id"] for panel in data["panels"]]
    if len(ids) != len(set(ids)):
        raise CheckFailed(f"{DASHBOARD}: duplicate panel ids {ids}")
    for panel in data["panels"]:
        title = panel.get("title", panel["id"])
        if panel["datasource"]["uid"] not in datasource_uids:
            raise CheckFailed(f"panel {title!r}: data source {panel['datasource']} is not provisioned")
        if not panel.get("targets"):
            raise CheckFailed(f"panel {title!r} has no query")
        for target in panel["targets"]:
            if not target.get("expr", "").strip():
                raise CheckFailed(f"panel {title!r}: empty query {target.get('refId')}")
            if target["expr"].count("(") != target["expr"].count(")"):
                raise CheckFailed(f"panel {title!r}: unbalanced parentheses in {target['expr']}")
    print(f"dashboard: {len(ids)} panels, data sources provisioned")


def registered_metrics():
    """Names registered in src/telemetry.rs, with histogram series suffixes."""
    source = TELEMETRY.read_text()
    names = set()
    pattern = r'(counter_vec|histogram|IntGauge::new|IntCounter::new|Opts::new)\(\s*"([a-z0-9_]+)"'
    for constructor, name in re.findall(pattern, source):
        full = "iot_anomaly_" + name
        names.add(full)
        if constructor == "histogram":
            names.update(full + suffix for suffix in ("_bucket", "_sum", "_count"))
    if not names:
        raise CheckFailed(f"no metric registrations found in {TELEMETRY}")
    return names


def metric_names(_args):
    registered = registered_metrics()
    for path in (DASHBOARD, RULES):
        used = set(re.findall(r"\biot_anomaly_[a-z0-9_]+", path.read_text()))
        unknown = sorted(used - registered)
        if unknown:
            raise CheckFailed(f"{path.relative_to(ROOT)} uses metrics that src/telemetry.rs does not register: {unknown}")
        print(f"{path.relative_to(ROOT)}: {len(used)} metric names, all registered")


def dockerfile(args):
    libtorch = pathlib.Path(args[0]).resolve()
    binaries = args[1:]
    local_root = libtorch.parent

    copied = set()
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY":
            continue
        options = [w for w in words[1:] if w.startswith("--")]
        paths = [w for w in words[1:] if not w.startswith("--")]
        sources = paths[:-1]
        if "--from=build" in options:
            for source in sources:
                if source.startswith(IMAGE_LIBTORCH_ROOT + "/"):
                    relative = source[len(IMAGE_LIBTORCH_ROOT) + 1 :]
                    if not (local_root / relative).is_file():
                        raise CheckFailed(f"Dockerfile copies {source}, but {local_root / relative} does not exist")
                    copied.add(relative)
        elif not options:
            for source in sources:
                if source != "." and not (ROOT / source).exists():
                    raise CheckFailed(f"Dockerfile copies {source}, which is not in the repository")

    needed = set()
    for binary in binaries:
        output = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
        for match in re.finditer(r"=> (\S+)", output):
            path = pathlib.Path(match.group(1)).resolve()
            if local_root in path.parents:
                needed.add(str(path.relative_to(local_root)))

    missing = sorted(needed - copied)
    if missing:
        raise CheckFailed(f"the binaries load {missing} from libtorch, but the Dockerfile does not copy them")
    print(f"Dockerfile: copies the {len(needed)} libtorch libraries the binaries load", file=sys.stderr)
    # stdout: the copied libraries, relative to the libtorch root, for the caller to
    # lay out the runtime stage's library directories.
    sys.stdout.write("".join(f"{path}\n" for path in sorted(copied)))


def compose_env(_args):
    compose = yaml.safe_load(COMPOSE.read_text())
    seen = set()
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for name, value in environment.items():
            if name.startswith("IOT_ANOMALY__") and (name, value) not in seen:
                seen.add((name, value))
                print(f"{name}={value}")


COMMANDS = {
    "render-k8s": render_k8s,
    "k8s-variants": k8s_variants,
    "dashboard": dashboard,
    "metric-names": metric_names,
    "dockerfile": dockerfile,
    "compose-env": compose_env,
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    except CheckFailed as error:
        print(f"FAILED: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
