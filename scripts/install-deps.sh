#!/usr/bin/env bash
# Installs the Debian packages that the demo and the kernel tests need:
# iptables (both the nft and the legacy variants), nftables, iproute2 (ip,
# network namespaces), procps (sysctl), and for the telemetry tests curl and
# prometheus (prometheus and promtool), nfacct (the accounting objects
# kube-proxy's captured rules refer to). Idempotent: packages already
# installed are skipped, and nothing is fetched when all are present.
set -euo pipefail

packages=(iptables nftables iproute2 procps curl prometheus nfacct)
commands=(iptables iptables-legacy iptables-nft nft ip sysctl curl prometheus promtool nfacct)

if ! command -v dpkg-query >/dev/null 2>&1; then
    # Not Debian: check the commands themselves and leave installing to the user.
    for cmd in "${commands[@]}"; do
        if ! command -v "$cmd" >/dev/null 2>&1; then
            echo "install-deps: '$cmd' not found; install it with your package manager" >&2
            exit 1
        fi
    done
    exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: ${packages[*]} already installed"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root (sudo make ...) or install them yourself:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: apt-get not found; install these packages yourself: ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

# The tests run their own prometheus inside a network namespace and need only
# the binaries. On a host running systemd, Debian's package also enables and
# starts a system-wide Prometheus (listening on :9090); when this script is
# what installed the package, stop and disable that service again.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
