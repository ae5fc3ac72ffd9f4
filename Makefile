# iot-anomaly: `make demo` for a first run, `make test` for the test suite.
#
# libtorch comes from scripts/setup-libtorch.sh (downloads once into
# ~/.cache/iot-anomaly); set LIBTORCH to use a libtorch 2.13.0 you already have.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ifeq ($(LIBTORCH),)
LIBTORCH := $(shell scripts/setup-libtorch.sh)
endif
ifeq ($(LIBTORCH),)
$(error libtorch set-up failed; see the messages above, or set LIBTORCH to a libtorch 2.13.0 directory)
endif
export LIBTORCH
export LIBTORCH_CXX11_ABI := 1

RELEASE := target/release

.PHONY: help build demo train test validate-deploy render-k8s broker fuzz skab fmt clean-models \
	bench bench-stages bench-e2e model

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

build: ## Build the service and the trainer (release)
	cargo build --release --workspace

demo: build ## Train if needed, then replay AnoML-IoT through an in-process Kafka cluster
	$(RELEASE)/iot-anomaly demo --config config/anoml-iot.toml

train: build ## Retrain models/anoml-iot from data/anoml-iot.csv
	$(RELEASE)/iot-anomaly-train --config config/anoml-iot.toml --out models/anoml-iot

model: build
	@test -f models/anoml-iot/model.json || $(RELEASE)/iot-anomaly-train --config config/anoml-iot.toml --out models/anoml-iot

RUNS ?= 5
BENCH_ARGS ?=
bench: bench-stages bench-e2e ## Criterion benches, then the end-to-end benchmark (see docs/benchmarks.md)

bench-stages: model ## Criterion benches of parsing, windows and inference
	cargo bench --bench stages

bench-e2e: model ## End-to-end benchmark against tansu: RUNS runs, medians in target/bench/e2e.json
	IOT_ANOMALY_TANSU="$$(scripts/setup-tansu.sh)" $(RELEASE)/iot-anomaly-bench run --runs $(RUNS) --memory-devices 100000 $(BENCH_ARGS)

test: ## Formatting, clippy, every test and the deployment checks (installs tools once)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	IOT_ANOMALY_TANSU="$$(scripts/setup-tansu.sh)" cargo test --workspace
	scripts/validate-deploy.sh

validate-deploy: ## Check Dockerfile, compose, Prometheus, Grafana and k8s files offline
	scripts/validate-deploy.sh

render-k8s: ## Rewrite k8s/rendered/ from the chart in k8s/
	scripts/validate-deploy.sh --render-k8s

broker: ## Run a local tansu broker on 127.0.0.1:9092 with the three topics
	scripts/run-broker.sh

FUZZ_CASES ?= 500000
fuzz: ## Property-test the record parser with FUZZ_CASES random inputs per property
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release --test parser_properties

SKAB_DATA ?= ../shared/data/skab
SKAB_OUT ?= target/skab
skab: build ## Run the SKAB benchmark on SKAB_DATA (writes $(SKAB_OUT)/report.json)
	@test -d "$(SKAB_DATA)" || { echo "SKAB data not found at $(SKAB_DATA): download the data/ folder of github.com/waico/SKAB and run make skab SKAB_DATA=DIR" >&2; exit 1; }
	mkdir -p $(SKAB_OUT)
	$(RELEASE)/iot-anomaly-train benchmark skab --data "$(SKAB_DATA)" --config config/skab.toml --report $(SKAB_OUT)/report.json --scores-out $(SKAB_OUT)/scores.csv

fmt: ## Format the code
	cargo fmt --all

clean-models: ## Delete trained checkpoints under models/
	find models -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
