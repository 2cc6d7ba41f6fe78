#!/usr/bin/env bash
# Runs inside the Dockerfile's `files` stage (Debian with iptables and
# nftables installed, the agent at /usr/local/bin/ip-masq-agent) and copies
# into DEST only what the agent runs: the agent itself, both
# iptables variants (xtables-nft-multi, xtables-legacy-multi and their
# iptables-*/ip6tables-* names), nft, every xtables extension, the shared
# libraries all of these load (found with ldd, so nothing is listed by hand),
# and the few /etc files iptables reads. The runtime image is DEST copied
# onto `scratch`: no shell, no package manager.
#
# Usage: image-rootfs.sh DEST
set -euo pipefail

dest=${1:?usage: image-rootfs.sh DEST}
multiarch=$(gcc -dumpmachine 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH)
xtables_dir="/usr/lib/$multiarch/xtables"

mkdir -p "$dest"/{usr/sbin,usr/local/bin,"usr/lib/$multiarch",etc,run,tmp,proc,sys,dev}
chmod 1777 "$dest/tmp"
# Debian's merged /usr: the ELF interpreter is looked up as /lib64/ld-linux-….
for dir in bin sbin lib lib64; do
    if [[ -L /$dir ]]; then
        ln -s "usr/$dir" "$dest/$dir"
    fi
done
mkdir -p "$dest/usr/bin" "$dest/usr/lib64"

# A file and, when it is a symlink chain, every link on the way, so that
# sonames and their targets both exist.
copy_path() {
    local path=$1
    while [[ -L $path ]]; do
        mkdir -p "$dest$(dirname "$path")"
        cp -P "$path" "$dest$path"
        local target
        target=$(readlink "$path")
        [[ $target == /* ]] || target="$(dirname "$path")/$target"
        path=$target
    done
    mkdir -p "$dest$(dirname "$path")"
    cp -p "$path" "$dest$path"
}

# Every library `ldd` lists for a file, by the path the loader would open.
copy_libraries() {
    local lib
    ldd "$1" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
        copy_path "$lib"
        # The loader's path under /usr too: merged /usr has both spellings.
        copy_path "$(readlink -f "$lib")"
    done
}

binaries=(/usr/local/bin/ip-masq-agent /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft)
for binary in "${binaries[@]}"; do
    copy_path "$binary"
    copy_libraries "$binary"
done

# The names the agent runs (Variant::binary) and the plain ones an operator
# types (Debian's default alternative: nft).
for family in iptables ip6tables; do
    for tool in "" -save -restore; do
        ln -sf xtables-nft-multi "$dest/usr/sbin/$family-nft$tool"
        ln -sf xtables-legacy-multi "$dest/usr/sbin/$family-legacy$tool"
        ln -sf "$family-nft$tool" "$dest/usr/sbin/$family$tool"
    done
done

# All extensions: rules another component wrote (kube-proxy's, a CNI's) must
# still print in iptables-save, or a save/restore round trip fails.
mkdir -p "$dest$xtables_dir"
for extension in "$xtables_dir"/*.so; do
    copy_path "$extension"
    copy_libraries "$extension"
done

# getprotobyname for `-p tcp`, port and ethertype names in saved rules.
for file in /etc/protocols /etc/services /etc/ethertypes /etc/nsswitch.conf; do
    [[ -e $file ]] && cp -pL "$file" "$dest$file"
done
# nft reads these for mark and realm names; absent files only cost a warning.
[[ -d /etc/iproute2 ]] && cp -a /etc/iproute2 "$dest/etc/"

# Prove the result runs before the image is made of it.
for check in "/usr/local/bin/ip-masq-agent version" "/usr/sbin/iptables-nft --version" \
    "/usr/sbin/iptables-legacy --version" "/usr/sbin/nft --version"; do
    read -r -a words <<<"$check"
    chroot "$dest" "${words[@]}" >/dev/null
done
