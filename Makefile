# ip-masq-agent developer targets. `make help` lists them.
# `make test` is the one test command (CI runs it through .ci/run); it ends
# with cargo-nextest so that the last line printed is the whole suite's summary.

CARGO ?= cargo
FUZZ_TARGETS := config_bytes duration flags
FUZZ_SECONDS ?= 20
CONTAINER_ENGINE ?= docker
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
.DEFAULT_GOAL := build

.PHONY: help build deps lint test demo bench-reload bench-api bench-scale bench-node fuzz-smoke render image clean

help:
	@echo "build       cargo build (agent and examples)"
	@echo "test        install test packages, fmt + clippy, then every test with cargo-nextest (needs root)"
	@echo "lint        cargo fmt --check and clippy with warnings denied"
	@echo "demo        the VPN failure and its fix, in throw-away network namespaces (needs root)"
	@echo "bench-reload ConfigMap swap to rules live: median/p99 vs upstream's resync wait (needs root; SWAPS=N MODE=legacy)"
	@echo "bench-api    API server sends a modified ConfigMap to rules live (--configmap; needs root; SWAPS=N MODE=legacy)"
	@echo "bench-scale 64..50 000 CIDRs, iptables vs nftables: apply, change, memory, new-connection rate (needs root; SIZES=... BACKENDS=...)"
	@echo "bench-node  empty vs busy node (kube-proxy's rules for 5 000 Services): sync, CPU, memory, startup (needs root; MODE=... UPSTREAM_IP_MASQ_AGENT=...)"
	@echo "fuzz-smoke  each fuzz target for $(FUZZ_SECONDS) s (needs the nightly toolchain)"
	@echo "render      print the rules for the built-in defaults"
	@echo "image       build the container image ip-masq-agent:$(VERSION) (needs a container engine)"
	@echo "clean       cargo clean"

build:
	$(CARGO) build --bins --examples

deps:
	bash scripts/install-deps.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Spelled out in order (not as prerequisites) so `make -j` cannot reorder it.
# The examples are built first: the e2e suite runs netcheck as a real program.
test:
	bash scripts/install-deps.sh
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest
	$(CARGO) build --bins --examples
	$(CARGO) nextest run --lib --bins --tests --examples --no-fail-fast

demo:
	bash scripts/install-deps.sh
	$(CARGO) build --bins --examples
	bash scripts/demo.sh

# Reload latency, release build, in a throw-away network namespace. Knobs (environment
# or make variables): SWAPS (60), MODE (nft|legacy), UPSTREAM_RESYNC_SECONDS (60),
# IP_MASQ_AGENT (binary), AGENT_V and AGENT_LOG (agent's -v and kept log), VERBOSE=1.
bench-reload:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "bench-reload needs root (network namespaces, iptables): sudo make bench-reload" >&2; \
		echo '(if sudo cannot find cargo: sudo env "PATH=$$PATH" make bench-reload)' >&2; \
		exit 1; \
	fi
	$(CARGO) build --release --bins
	$(CARGO) bench --bench reload

# The same with the config through the Kubernetes API (--configmap): an in-process
# API server in the namespace sends each modified ConfigMap; same knobs.
bench-api:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "bench-api needs root (network namespaces, iptables): sudo make bench-api" >&2; \
		echo '(if sudo cannot find cargo: sudo env "PATH=$$PATH" make bench-api)' >&2; \
		exit 1; \
	fi
	$(CARGO) build --release --bins
	SOURCE=api $(CARGO) bench --bench reload

# List size vs apply time, one-CIDR change, kernel and agent memory and the
# new-connection rate through a router namespace, both backends in one run; release
# build, throw-away network namespaces. Knobs (environment or make variables):
# SIZES (64,1000,10000,50000), BACKENDS (iptables,nftables), REPEAT (3), CHANGES (5),
# RATE_RUNS (5), FLOOD_SECONDS (2), MODE (nft|legacy, the iptables backend's),
# IP_MASQ_AGENT (binary), VERBOSE=1.
bench-scale:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "bench-scale needs root (network namespaces, iptables, nft): sudo make bench-scale" >&2; \
		echo '(if sudo cannot find cargo: sudo env "PATH=$$PATH" make bench-scale)' >&2; \
		exit 1; \
	fi
	$(CARGO) build --release --bins
	$(CARGO) bench --bench scale

# An empty node namespace vs a busy one (what kube-proxy in iptables mode writes
# for 5 000 Services): first and unchanged sync, CPU per resync, peak memory of the
# agent and its tools, startup; both backends in one run, release build. Knobs:
# MODE (nft|legacy), REPEAT (3), RESYNCS (10), SERVICES (5000), IP_MASQ_AGENT,
# UPSTREAM_IP_MASQ_AGENT (the upstream binary, measured beside), VERBOSE=1.
bench-node:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "bench-node needs root (network namespaces, iptables, nft): sudo make bench-node" >&2; \
		echo '(if sudo cannot find cargo: sudo env "PATH=$$PATH" make bench-node)' >&2; \
		exit 1; \
	fi
	$(CARGO) build --release --bins
	$(CARGO) bench --bench node

fuzz-smoke:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	for target in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run "$$target" -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# No config file at that path means the built-in defaults.
render:
	$(CARGO) run --quiet -- render --config /nonexistent/ip-masq-agent

# `docker info` fails when only the client is installed (no engine answers).
image:
	@if $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
		echo "$(CONTAINER_ENGINE) build -t ip-masq-agent:$(VERSION) ."; \
		$(CONTAINER_ENGINE) build -t ip-masq-agent:$(VERSION) .; \
	else \
		echo "make image: no container engine answers ('$(CONTAINER_ENGINE) info' failed); nothing built" >&2; \
		exit 1; \
	fi

clean:
	$(CARGO) clean
