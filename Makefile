# observe — the commands people, CI and benchmarks use.
#   make run     start PostgreSQL + Redis (private, under .data/) and observe in the foreground
#   make test    start the services and run every test of the workspace
.PHONY: run test services services-stop build check fmt clippy clean-test-dbs

SHELL := /bin/bash
CARGO ?= cargo

services:
	@scripts/services.sh

services-stop:
	@scripts/services.sh stop

build:
	$(CARGO) build --release --bin observe

run: services build
	@set -a; . ./.env; set +a; exec ./target/release/observe serve

test: services
	@scripts/test.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: fmt clippy test
