#!/usr/bin/env bash
# Makes the two local base images the Dockerfile builds on when no public
# image registry can be reached, and prints the build args that select them:
#
#   localhost/ip-masq-agent-debian:SUITE   debootstrap --variant=minbase of Debian
#                                          SUITE with iptables, nftables, gcc and
#                                          libc6-dev, imported with `ENGINE import`
#   localhost/ip-masq-agent-rust:VERSION   that image plus this machine's Rust
#                                          toolchain (rustc, cargo, std) at
#                                          /usr/local/rust
#
# Why the host's toolchain: the crate is edition 2024 (Rust >= 1.85) and
# Debian's rustc is older (bookworm: 1.63), and rustup cannot download inside
# a container here. The toolchain is the one `rustc` resolves to in this
# repository, so the image builds with the compiler the tests ran with.
#
# An image that already exists is kept (delete it to remake it). With a
# registry, skip this script and pass BUILDER_IMAGE/DEBIAN_IMAGE yourself.
#
# Environment: ENGINE (podman), SUITE (bookworm), DEBIAN_MIRROR (the Debian
# mirror apt uses on this machine, else http://deb.debian.org/debian),
# IMAGE_WORK (a scratch directory, default: a fresh one under /var/tmp).
set -euo pipefail

ENGINE=${ENGINE:-podman}
SUITE=${SUITE:-bookworm}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "image-base: $*" >&2; }

# The mirror apt on this machine uses for SUITE's main component: deb822
# stanzas (*.sources) or one-line entries (sources.list, *.list).
apt_mirror() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (uris != "" && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main /) {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                uris = ""; suites = ""; comps = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0 }
            END { if (!found) flush() }
        ' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        awk -v suite="$SUITE" '$1 == "deb" && $0 !~ /\[/ && $3 == suite && / main( |$)/ { print $2 }' "$file"
    done
}

mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}

debian_image="localhost/ip-masq-agent-debian:$SUITE"
sysroot=$(rustc --print sysroot)
rust_version=$(rustc --version | awk '{print $2}')
rust_image="localhost/ip-masq-agent-rust:$rust_version"

exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

work=${IMAGE_WORK:-}
cleanup_work() { [[ -n ${work_made:-} ]] && rm -rf "$work_made"; }
trap cleanup_work EXIT
if [[ -z $work ]]; then
    work=$(mktemp -d /var/tmp/ip-masq-agent-image.XXXXXX)
    work_made=$work
fi

if exists "$debian_image"; then
    log "$debian_image exists"
else
    command -v debootstrap >/dev/null || { log "debootstrap not found (apt-get install debootstrap)"; exit 1; }
    log "debootstrap --variant=minbase $SUITE from $mirror"
    debootstrap --variant=minbase --include=iptables,nftables,gcc,libc6-dev \
        "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" --numeric-owner -c . | "$ENGINE" import - "$debian_image" >/dev/null
    log "imported $debian_image"
fi

if exists "$rust_image"; then
    log "$rust_image exists"
else
    context="$work/rust-context"
    mkdir -p "$context/rust"
    # Hard links when the toolchain is on the same filesystem: no 600 MB copy.
    for dir in bin lib; do
        cp -al "$sysroot/$dir" "$context/rust/$dir" 2>/dev/null || cp -a "$sysroot/$dir" "$context/rust/$dir"
    done
    cat >"$context/Containerfile" <<EOF
FROM $debian_image
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    CARGO_HOME=/usr/local/cargo
LABEL org.opencontainers.image.description="Debian $SUITE minbase with rustc $rust_version (copied from the build machine)"
EOF
    pull=()
    [[ $ENGINE == podman ]] && pull=(--pull=never)
    "$ENGINE" build "${pull[@]}" -t "$rust_image" -f "$context/Containerfile" "$context" >"$work/rust-build.log" 2>&1 \
        || { tail -n 20 "$work/rust-build.log" >&2; exit 1; }
    log "built $rust_image from $sysroot"
fi

echo "--build-arg=BUILDER_IMAGE=$rust_image --build-arg=DEBIAN_IMAGE=$debian_image"
