#!/usr/bin/env bash
# The classic ip-masq-agent failure and its fix, on a throw-away network built
# from network namespaces that this script creates and always deletes.
#
#   pod  10.40.0.2 --- 10.40.0.1  node  10.10.0.1 --- 10.10.0.2  vpc (routes 10.40.0.0/14 back via node)
#                                       10.11.0.1 --- 10.11.0.2  vpn (knows only its own /24)
#
# The agent runs inside the node namespace. Nothing here touches the host's own
# network namespace: every ip/iptables/sysctl command runs under
# `ip netns exec`, and only namespaces this run created are deleted.
#
# Environment:
#   IP_MASQ_AGENT  agent binary   (default: $CARGO_TARGET_DIR or target/, then debug/ip-masq-agent)
#   NETCHECK       probe binary   (default: same directory, examples/netcheck)
#   IPTABLES_MODE  nft | legacy   (default: nft; passed as --iptables-mode)
# Needs root, iproute2, iptables, procps and coreutils `timeout`.
set -euo pipefail

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root_dir/target}
agent=${IP_MASQ_AGENT:-$target_dir/debug/ip-masq-agent}
netcheck=${NETCHECK:-$target_dir/debug/examples/netcheck}
mode=${IPTABLES_MODE:-nft}
port=8080
prefix="imq-demo-$$"
pod_ns="$prefix-pod"
node_ns="$prefix-node"
vpc_ns="$prefix-vpc"
vpn_ns="$prefix-vpn"

created_ns=()
server_pids=()
work_dir=""
failures=0
checks=0
agent_output=""

say() { printf '%s\n' "$*"; }
step() { printf '\n=== %s\n' "$*"; }
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local status=$?
    set +e
    for pid in "${server_pids[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for ns in "${created_ns[@]}"; do
        ip netns delete "$ns"
    done
    if [[ ${#created_ns[@]} -gt 0 ]]; then
        say "cleanup: deleted namespaces ${created_ns[*]}"
    fi
    [[ -n $work_dir ]] && rm -rf -- "$work_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command inside one of our namespaces.
in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

preflight() {
    [[ $(id -u) -eq 0 ]] || die "needs root for network namespaces: run 'sudo make demo'"
    case $mode in
    nft | legacy) ;;
    *) die "IPTABLES_MODE must be nft or legacy, not '$mode'" ;;
    esac
    local cmd
    for cmd in ip "iptables-$mode" "iptables-$mode-save" sysctl timeout; do
        command -v "$cmd" >/dev/null 2>&1 ||
            die "'$cmd' not found: run 'sudo bash scripts/install-deps.sh'"
    done
    [[ -x $agent ]] || die "agent binary '$agent' not found: run 'cargo build --bins' or set IP_MASQ_AGENT"
    [[ -x $netcheck ]] || die "probe '$netcheck' not found: run 'cargo build --examples' or set NETCHECK"
}

add_ns() {
    ip netns add "$1"
    created_ns+=("$1")
    in_ns "$1" ip link set lo up
}

# Links node's interface $2 to interface eth0 of namespace $1, with the node
# side at $3 and the other side at $4 (both /24 or as given).
link_to_node() {
    local peer_ns=$1 node_if=$2 node_addr=$3 peer_addr=$4
    in_ns "$node_ns" ip link add "$node_if" type veth peer name eth0 netns "$peer_ns"
    in_ns "$node_ns" ip addr add "$node_addr" dev "$node_if"
    in_ns "$node_ns" ip link set "$node_if" up
    in_ns "$peer_ns" ip addr add "$peer_addr" dev eth0
    in_ns "$peer_ns" ip link set eth0 up
}

build_network() {
    local ns
    for ns in "$pod_ns" "$node_ns" "$vpc_ns" "$vpn_ns"; do
        add_ns "$ns"
    done
    link_to_node "$pod_ns" to-pod 10.40.0.1/24 10.40.0.2/24
    link_to_node "$vpc_ns" to-vpc 10.10.0.1/24 10.10.0.2/24
    link_to_node "$vpn_ns" to-vpn 10.11.0.1/24 10.11.0.2/24
    in_ns "$node_ns" sysctl -q -w net.ipv4.ip_forward=1
    in_ns "$pod_ns" ip route add default via 10.40.0.1
    # The VPC knows the pod range; the VPN peer knows only its own /24.
    in_ns "$vpc_ns" ip route add 10.40.0.0/14 via 10.10.0.1
}

# Starts `netcheck serve` in namespace $1 on address $2 and waits (bounded)
# until it listens.
start_server() {
    local ns=$1 addr=$2 log="$work_dir/serve-$1.log"
    # Started directly (not via in_ns) so that $! is the server itself.
    ip netns exec "$ns" "$netcheck" serve "$addr:$port" --timeout 120 >"$log" 2>&1 &
    server_pids+=("$!")
    local _
    for _ in $(seq 50); do
        grep -q '^listening on' "$log" && return 0
        sleep 0.1
    done
    cat "$log" >&2
    die "netcheck serve in $ns did not start within 5 s"
}

# Connects from the pod to $1 and prints what the server saw (or `timeout`).
probe() {
    in_ns "$pod_ns" timeout 10 "$netcheck" connect "$1:$port" --timeout 2 2>&1 || true
}

# expect DEST WANT WHY: the pod connects to DEST; WANT is the source address
# the server must report, or `timeout`.
expect() {
    local dest=$1 want=$2 why=$3 got
    got=$(probe "$dest")
    checks=$((checks + 1))
    if [[ $got == "$want" ]]; then
        say "  ok    pod -> $dest: $got   ($why)"
    else
        say "  FAIL  pod -> $dest: got '$got', want '$want'   ($why)"
        failures=$((failures + 1))
    fi
}

# Runs the agent in the node namespace; its output (logs included) is shown
# indented and kept in $agent_output.
agent_run() {
    say "  \$ ip netns exec node ip-masq-agent $* --iptables-mode=$mode"
    local status=0
    agent_output=$(in_ns "$node_ns" timeout 30 "$agent" "$@" --iptables-mode="$mode" 2>&1) || status=$?
    [[ -z $agent_output ]] || printf '%s\n' "$agent_output" | sed 's/^/    /'
    [[ $status -eq 0 ]] || die "ip-masq-agent $1 failed (exit $status)"
}

show_nat() {
    say "  \$ ip netns exec node iptables-$mode-save -t nat"
    in_ns "$node_ns" "iptables-$mode-save" -t nat | sed -e '/^#/d' -e 's/^/    /'
}

# Writes config text to $config_dir the way kubelet projects a ConfigMap:
# a timestamped directory, an atomically swapped ..data symlink, and a
# symlink from the key to ..data/<key>.
write_configmap_volume() {
    local text=$1 ts
    ts="..$(date -u +%Y_%m_%d_%H_%M_%S.%N)"
    mkdir -p "$config_dir/$ts"
    printf '%s\n' "$text" >"$config_dir/$ts/ip-masq-agent"
    ln -s "$ts" "$config_dir/..data_tmp"
    mv -T "$config_dir/..data_tmp" "$config_dir/..data"
    [[ -L $config_dir/ip-masq-agent ]] || ln -s ..data/ip-masq-agent "$config_dir/ip-masq-agent"
}

main() {
    preflight
    work_dir=$(mktemp -d)
    config_dir="$work_dir/etc-config"
    mkdir -p "$config_dir"
    config="$config_dir/ip-masq-agent"

    step "setup: namespaces $prefix-{pod,node,vpc,vpn}"
    build_network
    start_server "$vpc_ns" 10.10.0.2
    start_server "$vpn_ns" 10.11.0.2
    say "  pod 10.40.0.2 -> node (forwards) -> vpc 10.10.0.2 (has a route back to 10.40.0.0/14)"
    say "                                  -> vpn 10.11.0.2 (no route back to pods)"
    say "  each peer runs 'netcheck serve', which answers with the source address it sees"

    step "(a) no agent: traffic leaves with the pod's address"
    expect 10.10.0.2 10.40.0.2 "the VPC routes pod addresses back"
    expect 10.11.0.2 timeout "the VPN peer cannot answer a pod address: the original incident"

    step "(b) agent with the built-in defaults (no ConfigMap): 10.0.0.0/8 is never masqueraded"
    agent_run sync --config "$config"
    show_nat
    expect 10.11.0.2 timeout "the VPN range falls inside 10.0.0.0/8, so it still leaves unmasqueraded"

    step "(c) agent with the VPN config: masquerade everything but the pods and the VPC"
    local vpn_config
    vpn_config='# pods and the VPC see each other directly; everything else,
# including the VPN range 10.11.0.0/24, is masqueraded behind the node.
nonMasqueradeCIDRs:
  - 10.40.0.0/14   # pods
  - 10.10.0.0/24   # VPC
resyncInterval: 60s'
    write_configmap_volume "$vpn_config"
    say "  ConfigMap volume (as kubelet lays it out):"
    find "$config_dir" -mindepth 1 \( -type l -printf '    %P -> %l\n' \) -o -printf '    %P\n' | sort
    sed 's/^/    | /' "$config"
    agent_run sync --config "$config"
    show_nat
    expect 10.11.0.2 10.11.0.1 "masqueraded: the VPN peer sees the node and can answer"
    expect 10.10.0.2 10.40.0.2 "not masqueraded: the VPC still sees the pod"
    say "  sync again: the kernel already matches, so nothing is written"
    agent_run sync --config "$config" -v=2
    checks=$((checks + 1))
    if [[ $agent_output == *unchanged* ]]; then
        say "  ok    the agent reports the rules unchanged"
    else
        say "  FAIL  no 'unchanged' in the agent's log"
        failures=$((failures + 1))
    fi

    step "(d) clean up: 'cleanup' removes the jump and the chain, then the namespaces go"
    agent_run cleanup
    checks=$((checks + 1))
    if in_ns "$node_ns" "iptables-$mode-save" -t nat | grep -q -e 'IP-MASQ-AGENT' -e 'ip-masq-agent'; then
        say "  FAIL  rules of the agent are still in the node's nat table"
        show_nat
        failures=$((failures + 1))
    else
        say "  ok    no IP-MASQ-AGENT chain or jump left in the node's nat table"
    fi

    step "result"
    if [[ $failures -gt 0 ]]; then
        say "  $failures of $checks checks FAILED"
        exit 1
    fi
    say "  all $checks checks passed"
}

main "$@"
