# observe — the commands people, CI and benchmarks use.
#   make run     start PostgreSQL + Redis (private, under .data/) and observe in the foreground
#   make test    start the services and run every test of the workspace
.PHONY: run test services services-stop build check fmt clippy clean-test-dbs bench-ingest bench-monitors bench-queries

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

# Ingest throughput, latency, CPU and RSS against a fresh observe_bench database (see
# benches/ingest.rs). Knobs: BENCH_CONCURRENCY (256), BENCH_SECS (15), BENCH_THREADS (2),
# BENCH_BATCH (100), BENCH_COPY_ROWS (500000), BENCH_COPY_CHUNK (10000); OBSERVE__INGEST__*
# variables are passed to the server.
bench-ingest: services
	$(CARGO) build --release --bin observe
	@set -a; . ./.env; set +a; RUST_LIB_BACKTRACE=0 $(CARGO) bench --bench ingest

# 10,000 uptime monitors at a 1-minute interval on one observe, against a local target server
# that answers some checks slowly and fails a share of them (see benches/monitors.rs): checks
# due vs done, lateness, incidents, CPU, RSS, rows/s, on a fresh observe_bench_monitors
# database. Knobs: BENCH_MONITORS (10000), BENCH_SECS (200; at least 180 for a result),
# BENCH_CREATE_CONCURRENCY (32); OBSERVE__MONITORS__* variables are passed to the server.
bench-monitors: services
	$(CARGO) build --release --bin observe
	@set -a; . ./.env; set +a; RUST_LIB_BACKTRACE=0 $(CARGO) bench --bench monitors

# The read routes over one project with 10 million events, 1 million API requests, 100,000
# errors and 1 million metric points over 90 days (see benches/queries.rs): the Aggregator's
# time, a tick over one hour of 100,000 events, p50/p95 of every read at 24 h, 30 d and 90 d
# next to the same answer computed from raw rows, observe's peak RSS. Knobs: BENCH_EVENTS,
# BENCH_REQUESTS, BENCH_ERRORS, BENCH_METRICS, BENCH_TICK_EVENTS, BENCH_READS.
bench-queries: services
	$(CARGO) build --release --bin observe
	@set -a; . ./.env; set +a; RUST_LIB_BACKTRACE=0 $(CARGO) bench --bench queries

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: fmt clippy test
