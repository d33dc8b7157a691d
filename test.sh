#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: installs the tools the tests use
# (apt-get update first, and only when one is missing), then runs every test of the workspace.
# Kernel tests make their own network namespaces and never touch the machine's own firewall,
# routes or interfaces. Arguments go to `cargo test` (e.g. `./test.sh -p kernel`).
set -euo pipefail
cd "$(dirname "$0")"

# nftables: the independent oracle (`nft -f`, `nft list`) the kernel tests compare against.
# iproute2, util-linux (nsenter), dnsutils, netcat-openbsd, curl: real tools for real connections
# in the scratch namespaces. dnsmasq-base: the real upstream resolver the DNS forwarder tests ask.
# tmux: the terminal `leash top` is tested in. python3-prometheus-client: the parser the metrics
# exposition must pass (Debian's `prometheus` package, for promtool, installs 96 MB).
# tcpdump: reads the pcap files `leash log --pcap` writes (and competes in the NFLOG benchmark).
# conntrack: the oracle for leash's ctnetlink dump and delete (`conntrack -L`, `conntrack -D`).
# systemd: `systemd-analyze verify` checks the shipped unit file (it needs no running systemd).
# qemu-system-x86, busybox-static, binutils: the kernel-matrix job (tests/kernel-matrix/run.sh,
# which .ci/run runs after this script) boots Debian 12's 6.1 kernel in qemu with a busybox
# initramfs holding the stripped test binaries.
# leash itself needs none of them at run time.
packages=(
    nftables iproute2 util-linux dnsutils netcat-openbsd curl ca-certificates dnsmasq-base
    tmux python3-prometheus-client tcpdump conntrack systemd qemu-system-x86 busybox-static binutils
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: run as root: the tests need ${missing[*]} installed, and root for the kernel tests" >&2
        exit 3
    fi
    echo "test.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: run as root: the kernel tests make network namespaces and apply rulesets in them" >&2
    exit 3
fi

# With CI set, a kernel test whose prerequisite is missing fails instead of skipping: this script
# installed them all, so nothing may be skipped.
export CI=true
cargo test --workspace --locked "$@"
echo "test.sh: every test passed"
