# ip-masq-agent image: `make image` (podman or docker), or by hand:
#   docker build -t ip-masq-agent:TAG .
# Three stages: the release build; a Debian stage that collects iptables (nft
# and legacy), nft and their libraries (scripts/image-rootfs.sh); and the
# runtime, `scratch` plus those files and the binary. The builder and the
# Debian stage must be the same Debian release, so the binary's glibc is the
# one it runs with.
#
# Base images are build args so that any registry, or none, works:
#   BUILDER_IMAGE  a Rust toolchain (>= 1.85, edition 2024) on Debian bookworm
#   DEBIAN_IMAGE   Debian bookworm; iptables and nftables are installed with
#                  apt-get unless the image already has them
# Without a reachable registry, scripts/image-base.sh makes both locally
# (debootstrap, the host's toolchain) and `make image` passes them.

ARG BUILDER_IMAGE=docker.io/library/rust:1-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
# Everything Cargo.toml names: the benches are declared targets, so cargo
# refuses the manifest without their files even when building only the bin.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# CARGO_NET_OFFLINE=true when the crates come from a mounted registry (make
# image with podman mounts the host's, fetched with `cargo fetch --locked`).
ARG CARGO_NET_OFFLINE=false
# Symbols stripped: the binary is most of the image, and backtraces of a
# panic still name the code (abort messages carry the location).
ENV CARGO_NET_OFFLINE=${CARGO_NET_OFFLINE} \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin ip-masq-agent \
    && install -D -m 0755 target/release/ip-masq-agent /out/usr/local/bin/ip-masq-agent

FROM ${DEBIAN_IMAGE} AS files
# Not pinned (hadolint DL3008): bookworm keeps iptables at 1.8.9, and an exact
# Debian version disappears from the mirror at the next point release.
# hadolint ignore=DL3008
RUN if ! command -v xtables-nft-multi >/dev/null || ! command -v xtables-legacy-multi >/dev/null \
        || ! command -v nft >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends iptables nftables \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# The agent is here too so that ldd finds the libraries it loads (libgcc_s).
COPY --from=build /out/usr/local/bin/ip-masq-agent /usr/local/bin/ip-masq-agent
COPY scripts/image-rootfs.sh /usr/local/sbin/image-rootfs.sh
RUN bash /usr/local/sbin/image-rootfs.sh /rootfs

FROM scratch
COPY --from=files /rootfs/ /
# Runs as root (UID 0), with the DaemonSet granting only NET_ADMIN and NET_RAW:
# a non-root UID would get those capabilities in its bounding set but not in
# its effective set (Kubernetes sets no ambient capabilities), so neither the
# agent nor the iptables binaries it runs could change the host's nat table;
# iptables-legacy also takes the host's /run/xtables.lock, which root owns.
# The DaemonSet keeps it contained otherwise: not privileged, no privilege
# escalation, read-only root filesystem, RuntimeDefault seccomp.
ENTRYPOINT ["/usr/local/bin/ip-masq-agent"]
