#!/usr/bin/env bash
# Static checks of the deployment files, run by `make test` and `make validate-deploy`.
# No Docker engine, Helm binary or Kubernetes cluster is needed:
#
#   docker-compose.yml     `docker-compose config -q` (v1, from Debian), and the
#                          IOT_ANOMALY__* variables it sets are accepted by the service
#   deploy/prometheus/     `promtool check config`, `check rules`, `test rules`
#   deploy/grafana/        dashboard JSON and provisioning parsed; every metric that the
#                          dashboard and the rules use is registered in src/telemetry.rs
#   k8s/                   rendered with Helm's own template engine (helm-python-sdk from
#                          PyPI) and compared with k8s/rendered/; the manifests checked
#                          with kubernetes-validate; the ConfigMap's config.toml passes
#                          `iot-anomaly config check`
#   Dockerfile             every COPY source exists; the libtorch libraries it copies are
#                          all that the binaries load: the trainer and `config check` run
#                          with only those libraries and must load nothing else from
#                          libtorch
#
# docker-compose is installed system-wide with apt-get when missing (needs root). The
# other tools are installed once into $IOT_ANOMALY_CACHE/deploy-tools-$TOOLS_VERSION
# (default ~/.cache/iot-anomaly): promtool, extracted from Debian's prometheus package
# without installing the server, and a Python virtual environment with
# kubernetes-validate and helm-python-sdk.
#
# Usage: scripts/validate-deploy.sh            run every check
#        scripts/validate-deploy.sh --render-k8s   rewrite k8s/rendered/ from the chart
#
# Needs LIBTORCH (the Makefile exports it) and the debug binaries, which it builds
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump when a pinned version below changes, so the tools are installed again.
TOOLS_VERSION=1
KUBERNETES_VALIDATE_VERSION=1.37.0
HELM_PYTHON_SDK_VERSION=0.2.2
PYYAML_VERSION=6.0.4
# Kubernetes versions the manifests are validated against: an older one still in
# common use and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

log() { echo "[validate-deploy] $*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

cache="${IOT_ANOMALY_CACHE:-$HOME/.cache/iot-anomaly}"
tools="$cache/deploy-tools-$TOOLS_VERSION"

apt_install() {
    # A fresh machine may have stale package lists, so update once on failure.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2; }
}

install_tools() {
    if ! command -v docker-compose >/dev/null; then
        if [[ $(id -u) -ne 0 ]]; then
            fail "docker-compose is missing; install Debian's package (sudo apt-get install --no-install-recommends docker-compose) and run again"
        fi
        log "installing docker-compose (v1) with apt-get"
        apt_install docker-compose || fail "apt-get could not install docker-compose"
    fi

    if [[ -f "$tools/.complete" ]]; then
        return
    fi
    log "installing promtool, kubernetes-validate and helm-python-sdk into $tools (once)"
    # Built in place, because a virtual environment's scripts contain its absolute
    # path. The marker file written last marks the install as finished.
    rm -rf "$tools"
    mkdir -p "$tools/download"

    # promtool ships in Debian's prometheus package; extract it instead of installing
    # (and starting) a Prometheus server.
    (cd "$tools/download" && apt-get download prometheus >&2) \
        || { apt-get update -q >&2 && (cd "$tools/download" && apt-get download prometheus >&2); } \
        || fail "apt-get download prometheus failed"
    dpkg -x "$tools"/download/prometheus_*.deb "$tools/prometheus"
    rm -rf "$tools/download"

    python3 -m venv "$tools/venv"
    "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "helm-python-sdk==$HELM_PYTHON_SDK_VERSION" \
        "PyYAML==$PYYAML_VERSION" >&2
    touch "$tools/.complete"
    log "tools ready in $tools"
}

install_tools
python="$tools/venv/bin/python"
promtool="$tools/prometheus/usr/bin/promtool"
helper=("$python" scripts/validate_deploy.py)

if [[ "${1:-}" == "--render-k8s" ]]; then
    "${helper[@]}" render-k8s --write
    exit 0
fi

[[ -n "${LIBTORCH:-}" ]] || fail "LIBTORCH is not set; run through make, or export LIBTORCH=\$(scripts/setup-libtorch.sh)"
scorer=target/debug/iot-anomaly
trainer=target/debug/iot-anomaly-train
if [[ ! -x $scorer || ! -x $trainer ]]; then
    log "building the debug binaries"
    cargo build --workspace --bins --quiet
fi

work="$cache/validate-deploy.$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

log "docker-compose.yml"
docker-compose -f docker-compose.yml config -q
"${helper[@]}" compose-env >"$work/compose-env"
mapfile -t compose_env <"$work/compose-env"
env "${compose_env[@]}" "$scorer" config show --config config/default.toml >/dev/null \
    || fail "the service rejects the IOT_ANOMALY__* variables of docker-compose.yml: ${compose_env[*]}"

log "Prometheus configuration and rules"
"$promtool" check config deploy/prometheus/prometheus.yml >&2
"$promtool" check rules deploy/prometheus/rules.yml >&2
"$promtool" test rules deploy/prometheus/rules.test.yml >&2

log "Grafana dashboard and metric names"
"${helper[@]}" dashboard
"${helper[@]}" metric-names

log "Kubernetes chart and manifests"
"${helper[@]}" render-k8s
"${helper[@]}" k8s-variants "$work/k8s"
for version in "${KUBERNETES_VERSIONS[@]}"; do
    # The ServiceMonitor is left out: kubernetes-validate has no schema for this
    # custom resource (it warns and passes it); k8s-variants checked it instead.
    "$tools/venv/bin/kubernetes-validate" --kubernetes-version "$version" --strict --quiet \
        k8s/rendered/iot-anomaly.yaml "$work/k8s/variant.yaml" >&2 \
        || fail "kubernetes-validate rejected the manifests for Kubernetes $version"
done

log "Dockerfile and its runtime libraries"
"${helper[@]}" dockerfile "$LIBTORCH" "$scorer" "$trainer" >"$work/runtime-libs"
mapfile -t runtime_libs <"$work/runtime-libs"
libtorch_root="$(cd "$LIBTORCH/.." && pwd -P)"
runtime="$work/libtorch"
for lib in "${runtime_libs[@]}"; do
    mkdir -p "$runtime/$(dirname "$lib")"
    # Hard links keep this cheap; libtorch_cpu.so alone is over 400 MB.
    ln "$libtorch_root/$lib" "$runtime/$lib" 2>/dev/null || cp "$libtorch_root/$lib" "$runtime/$lib"
done
# LD_LIBRARY_PATH wins over the binaries' runpath (the full libtorch), and
# libtorch_cpu.so finds the CUDA runtime through $ORIGIN, so everything loads from the
# copy unless something outside the Dockerfile's list is needed.
run_with_image_libs() {
    LD_LIBRARY_PATH="$runtime/torch/lib" LD_DEBUG=libs LD_DEBUG_OUTPUT="$work/ld" "$@"
}
run_with_image_libs "$trainer" --config config/anoml-iot.toml --out "$work/model" --epochs 2 >"$work/train.log" 2>&1 \
    || { cat "$work/train.log" >&2; fail "iot-anomaly-train failed with the image's libraries"; }
IOT_ANOMALY__MODEL__DIR="$work/model" run_with_image_libs "$scorer" config check --config "$work/k8s/config.toml" >&2 \
    || fail "the chart's config.toml failed iot-anomaly config check"
grep -q "calling init: $runtime/torch/lib/libtorch_cpu.so" "$work"/ld.* \
    || fail "the check did not load libtorch_cpu.so from its copy in $runtime; see $work/ld.*"
if grep -h "calling init: $libtorch_root/" "$work"/ld.*; then
    fail "the binaries loaded the libraries above from libtorch, which the Dockerfile does not copy"
fi

log "all deployment checks passed"
