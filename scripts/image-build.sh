#!/usr/bin/env bash
# `make image`: builds the agent's image from CONTEXT (default: the
# repository, filtered by .dockerignore) as TAG, offline when it can.
#
# Usage: image-build.sh [CONTEXT [TAG]]
# Environment:
#   ENGINE          podman (default) or docker
#   BUILDER_IMAGE, DEBIAN_IMAGE
#                   base images (see the Dockerfile); when both are unset,
#                   scripts/image-base.sh makes local ones (debootstrap and
#                   the host's Rust toolchain) and they are used
#   EXTRA_BUILD_ARGS  more arguments for `ENGINE build`
#
# With podman the host's cargo registry ($CARGO_HOME/registry, after
# `cargo fetch --locked`) is mounted into the build and cargo runs with
# --offline, so the build needs no network. docker build cannot mount a host
# directory: its builder downloads the crates itself (--locked either way).
# podman runs with `--runtime runc` (crun fails on hybrid cgroup hosts) and
# ulimits no higher than this shell's own (and capped, see limit()).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
context=${1:-$repo}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
tag=${2:-ip-masq-agent:$version}
ENGINE=${ENGINE:-podman}

log() { echo "image-build: $*" >&2; }

if ! "$ENGINE" info >/dev/null 2>&1; then
    log "no container engine answers ('$ENGINE info' failed); install podman (apt-get install podman buildah runc) or set ENGINE=docker"
    exit 1
fi

# The Dockerfile is the repository's: the engine reads it even where the
# context leaves it out (as .dockerignore does).
args=(build -t "$tag" -f "$repo/Dockerfile")
if [[ -z ${BUILDER_IMAGE:-} && -z ${DEBIAN_IMAGE:-} ]]; then
    read -r -a base_args < <(ENGINE=$ENGINE bash "$repo/scripts/image-base.sh")
    args+=("${base_args[@]}")
    # Local images only: podman would otherwise ask a registry for localhost/….
    [[ $ENGINE == podman ]] && args+=(--pull=never)
else
    args+=(--build-arg "BUILDER_IMAGE=${BUILDER_IMAGE:?set both BUILDER_IMAGE and DEBIAN_IMAGE}")
    args+=(--build-arg "DEBIAN_IMAGE=${DEBIAN_IMAGE:?set both BUILDER_IMAGE and DEBIAN_IMAGE}")
fi

# The smaller of this shell's limit and CAP: runc on these machines refuses an
# nproc above 32768 even where the shell's own limit is higher.
limit() { if [[ $1 == unlimited || $1 -gt $2 ]]; then echo "$2"; else echo "$1"; fi; }

if [[ $ENGINE == podman ]]; then
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    (cd "$repo" && cargo fetch --locked --quiet)
    args+=(--runtime runc
        --ulimit "nofile=$(limit "$(ulimit -n)" 65536):$(limit "$(ulimit -n)" 65536)"
        --ulimit "nproc=$(limit "$(ulimit -u)" 32768):$(limit "$(ulimit -u)" 32768)"
        --volume "$cargo_home/registry:/usr/local/cargo/registry"
        --build-arg CARGO_NET_OFFLINE=true)
fi
# shellcheck disable=SC2206 # word splitting is the point of EXTRA_BUILD_ARGS
args+=(${EXTRA_BUILD_ARGS:-} "$context")

log "$ENGINE ${args[*]}"
"$ENGINE" "${args[@]}"
size=$("$ENGINE" image inspect --format '{{.Size}}' "$tag")
log "built $tag: $size bytes ($((size / 1048576)) MiB) uncompressed"
