# ip-masq-agent image: `make image`, or `docker build -t ip-masq-agent:TAG .`
# Two stages: the release build, then a small Debian runtime with both
# iptables variants, so that --iptables-mode=auto can pick the one the node
# uses. The builder and the runtime are the same Debian release (bookworm), so
# the binary's glibc matches.

FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build needs (.dockerignore keeps nothing else in the context).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin ip-masq-agent

FROM debian:bookworm-slim
# iptables: iptables-nft*, iptables-legacy*, ip6tables* (both variants);
# nftables: nft, for looking at the node's ruleset from inside the pod.
# Not pinned (hadolint DL3008): bookworm keeps iptables at 1.8.9, and an exact
# Debian version disappears from the mirror at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ip-masq-agent /usr/local/bin/ip-masq-agent
# Runs as root (UID 0), with the DaemonSet granting only NET_ADMIN and NET_RAW:
# a non-root UID would get those capabilities in its bounding set but not in
# its effective set (Kubernetes sets no ambient capabilities), so neither the
# agent nor the iptables binaries it runs could change the host's nat table;
# iptables-legacy also takes the host's /run/xtables.lock, which root owns.
# The DaemonSet keeps it contained otherwise: not privileged, no privilege
# escalation, read-only root filesystem, RuntimeDefault seccomp.
ENTRYPOINT ["/usr/local/bin/ip-masq-agent"]
