#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (from crates.io) used by the integration
# tests and `make broker`, and prints the path of its binary. Idempotent: the build
# (about 15 minutes on two cores) happens once per version and is cached outside the
# checkout, in $IOT_ANOMALY_CACHE (default ~/.cache/iot-anomaly).
#
# $TANSU, when set to an executable, is used as is.
set -euo pipefail

TANSU_VERSION=0.6.0

log() { echo "[setup-tansu] $*" >&2; }

if [[ -n "${TANSU:-}" ]]; then
    if [[ -x "$TANSU" ]]; then
        echo "$TANSU"
        exit 0
    fi
    log "TANSU=$TANSU is not an executable; unset TANSU or point it at a tansu $TANSU_VERSION binary"
    exit 1
fi

cache="${IOT_ANOMALY_CACHE:-$HOME/.cache/iot-anomaly}"
root="$cache/tansu-$TANSU_VERSION"
binary="$root/bin/tansu"

if [[ -x "$binary" && -f "$root/.complete" ]]; then
    echo "$binary"
    exit 0
fi

log "building tansu $TANSU_VERSION into $root; this takes about 15 minutes once"
rm -rf "$root.partial"
mkdir -p "$cache"
# The dynostore feature provides the in-memory storage engine the tests use.
cargo install "tansu@$TANSU_VERSION" --locked --features dynostore --root "$root.partial" >&2
rm -rf "$root"
mv "$root.partial" "$root"
touch "$root/.complete"
log "tansu ready at $binary"
echo "$binary"
