# Thin wrappers: the real work lives in cargo, scripts/ and tests/e2e/.
SHELL := /bin/bash
CONF_FILES := $(wildcard conf/*.yaml conf/*.yml)
SLUICE_DEBUG := target/debug/sluice
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# cargo-nextest when installed (it skips doctests: run those with cargo), else cargo test.
CARGO_TEST := $(if $(shell command -v cargo-nextest),cargo nextest run --locked && cargo test --locked --doc,cargo test --locked)

.PHONY: setup deps build run test unit e2e deploy-test validate lint bench bench-load demo release docker

setup: ## system packages + .venv for the e2e suite (idempotent)
	scripts/setup.sh

deps: ## only the system packages a cargo build needs
	scripts/setup.sh system

build: deps
	cargo build --locked

run: ## sluice on conf/sluice.yaml until Ctrl-C; pools without keys served by llmock (scripts/run.sh)
	scripts/run.sh

test: setup lint unit e2e deploy-test

unit: deps
	$(CARGO_TEST)

e2e: setup build
	SLUICE_BIN=$(SLUICE_DEBUG) .venv/bin/pytest -q tests/e2e

deploy-test: setup build ## manifests validated offline, ConfigMaps through `sluice validate`
	SLUICE_BIN=$(SLUICE_DEBUG) .venv/bin/pytest -q tests/deploy

validate: build
	$(SLUICE_DEBUG) validate $(CONF_FILES)

lint: deps
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	# Doc comments' links resolve (public and private items): rustdoc's own check.
	RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib --document-private-items

bench: deps ## criterion micro-benchmarks of the hot paths -> target/criterion
	cargo bench --locked

bench-load: deps ## side-by-side load benchmark -> target/bench/load-latest.md + load-<ts>.json
	scripts/bench_load.sh $(BENCH_LOAD_ARGS)

demo: setup build
	scripts/demo.sh

release: deps
	cargo build --release --locked

docker:
	docker build -f deploy/Dockerfile -t sluice:$(VERSION) .
