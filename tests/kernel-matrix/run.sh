#!/usr/bin/env bash
# The kernel-matrix job: runs a documented subset of the kernel tests on Debian 12's own kernel
# (6.1, the newest linux-image-6.1.*-cloud-amd64-unsigned in Debian's archive) in a qemu VM, so
# that behaviour that differs between kernels (element timeout refresh before 6.10, dumps, the
# oracle against nft 1.0.6) is tested on the oldest kernel leash supports, not only on the
# machine's own. .ci/run runs it right after ./test.sh; it exits non-zero when any test fails.
#
# What runs (the plan below; README "Testing" and ARCHITECTURE "Testing" list it too):
#   kernel: nft_apply, nft_elements (DNS set refresh, the refresh probe), nft_limits,
#           nft_carryover, nft_concurrent (dumps under concurrent commits, expression
#           verification), nft_oracle (our batches vs nft 1.0.6, cgroupv2 included)
#   leash integration: apply::, dimensions:: (time windows, limits, cgroups), dns:: (the
#           forwarder against a real dnsmasq), and `leash test` of every example
# Not run there: the unit, parser, snapshot and property tests (kernel-independent), the
# benchmarks, sock_diag/NFLOG/trace/observe tests, `leash top` (tmux), the metrics endpoint, and
# `leash test --measure` (TCG timings mean nothing).
#
# How: the kernel package is fetched with `apt-get download` and unpacked with `dpkg-deb -x`
# (cached under target/kernel-matrix/), the test binaries are the ones `cargo test --no-run`
# builds (the same debug profile ./test.sh uses, so nothing is rebuilt after it), and an
# initramfs holds busybox, the binaries with the shared libraries ldd names, nft, nsenter, bash,
# setpriv, dnsmasq, dig, ip and ss. qemu runs it with TCG (KVM is not usable here); the VM's init
# (tests/kernel-matrix/init) reports on the serial console, which this script parses.
#
# Usage: tests/kernel-matrix/run.sh [--keep] [--timeout SECONDS] [--only REGEX]   (as root, like
# ./test.sh; --only runs the plan entries whose name matches, --keep keeps the initramfs tree)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$ROOT/target/kernel-matrix
TIMEOUT=1800
KEEP=0
ONLY=
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --timeout) TIMEOUT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        *) echo "kernel-matrix: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
t_start=$(date +%s)
say() { echo "kernel-matrix: $*" >&2; }

for tool in qemu-system-x86_64 busybox dpkg-deb apt-get python3 strip nft nsenter setpriv bash dnsmasq dig ip ss; do
    command -v "$tool" >/dev/null || { say "missing $tool (./test.sh installs qemu-system-x86, busybox-static and the rest)"; exit 3; }
done
mkdir -p "$WORK"

# --- the kernel --------------------------------------------------------------------------------
deb=$(ls "$WORK"/linux-image-6.1.*-cloud-amd64-unsigned_*.deb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$deb" ]; then
    find_pkg() {
        apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' 2>/dev/null |
            awk '{print $1}' | sort -V | tail -1
    }
    pkg=$(find_pkg)
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(find_pkg)
    fi
    [ -n "$pkg" ] || { say "no linux-image-6.1.*-cloud-amd64-unsigned package found"; exit 3; }
    say "downloading $pkg"
    (cd "$WORK" && apt-get download -q "$pkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" >&2 || true)
    deb=$(ls "$WORK"/linux-image-6.1.*-cloud-amd64-unsigned_*.deb | sort -V | tail -1)
fi
kdir=$WORK/$(basename "$deb" .deb)
if [ ! -d "$kdir" ]; then
    dpkg-deb -x "$deb" "$kdir.tmp"
    mv "$kdir.tmp" "$kdir"
fi
kver=$(ls "$kdir/lib/modules" | head -1)
vmlinuz=$kdir/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || { say "no kernel image in $deb"; exit 3; }
if [ ! -f "$kdir/lib/modules/$kver/modules.dep" ]; then
    busybox depmod -b "$kdir" "$kver"
fi
say "kernel $kver"

# --- the test binaries -------------------------------------------------------------------------
say "building the test binaries (cargo test --no-run)"
cargo test --locked --no-run --message-format=json -p kernel -p leash >"$WORK/build.json" 2>"$WORK/build.log" || {
    cat "$WORK/build.log" >&2
    exit 3
}
# target name -> executable, and the leash binary the integration tests run.
python3 - "$WORK/build.json" >"$WORK/binaries" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if m["profile"]["test"]:
        kind = "test" if "test" in t["kind"] else "unit"
    else:
        kind = "bin" if "bin" in t["kind"] else "other"
    print(kind, t["name"], m["executable"])
EOF
exe() { awk -v k="$1" -v n="$2" '$1 == k && $2 == n {print $3}' "$WORK/binaries" | tail -1; }

# name, directory the test runs in, binary, arguments. Integration tests that only measure or
# need a terminal are left out (see the header).
integration=$(exe test integration)
plan=$(cat <<EOF
kernel/nft_apply $ROOT/crates/kernel $(exe test nft_apply) --test-threads=2
kernel/nft_elements $ROOT/crates/kernel $(exe test nft_elements) --test-threads=2
kernel/nft_limits $ROOT/crates/kernel $(exe test nft_limits) --test-threads=2
kernel/nft_carryover $ROOT/crates/kernel $(exe test nft_carryover) --test-threads=2
kernel/nft_concurrent $ROOT/crates/kernel $(exe test nft_concurrent) --test-threads=1
kernel/nft_oracle $ROOT/crates/kernel $(exe test nft_oracle) --test-threads=2
leash/apply $ROOT/crates/leash $integration --test-threads=2 apply::
leash/dimensions $ROOT/crates/leash $integration --test-threads=1 dimensions::
leash/dns $ROOT/crates/leash $integration --test-threads=1 dns:: --skip ten_thousand --skip the_shipped_unit
leash/test_cmd $ROOT/crates/leash $integration --test-threads=1 test_cmd::every_example_passes_leash_test
EOF
)
if [ -n "$ONLY" ]; then
    plan=$(echo "$plan" | awk -v re="$ONLY" '$1 ~ re')
    [ -n "$plan" ] || { say "--only $ONLY matches nothing in the plan"; exit 2; }
fi
leash_bin=$(exe bin leash)
for b in $(echo "$plan" | awk '{print $3}') "$leash_bin"; do
    [ -x "$b" ] || { say "test binary missing: $b"; exit 3; }
done

# --- the initramfs ------------------------------------------------------------------------------
rd=$WORK/initramfs
rm -rf "$rd" "$WORK/initrd.cpio"
mkdir -p "$rd"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,kmatrix,lib/modules}
cp "$(command -v busybox)" "$rd/bin/busybox"
cp tests/kernel-matrix/init "$rd/init"
chmod 755 "$rd/init"
# Copies an ELF file to the same path inside the initramfs, with every library it loads.
copy_elf() {
    local src=$1 dst=${2:-$1}
    mkdir -p "$rd$(dirname "$dst")"
    cp -L "$src" "$rd$dst"
    ldd "$src" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | while read -r lib; do
        [ -e "$rd$lib" ] && continue
        mkdir -p "$rd$(dirname "$lib")"
        cp -L "$lib" "$rd$lib"
    done
}
# The test binaries, stripped of debug info (a few hundred MB otherwise, all in the VM's RAM), at
# the paths cargo gave them: the integration tests find the leash binary (CARGO_BIN_EXE_leash)
# and the examples (CARGO_MANIFEST_DIR/../../examples) by absolute path.
for b in $(echo "$plan" | awk '{print $3}' | sort -u) "$leash_bin"; do
    copy_elf "$b"
    strip --strip-debug "$rd$b"
done
mkdir -p "$rd$ROOT/crates/kernel" "$rd$ROOT/crates/leash"
cp -r examples "$rd$ROOT/examples"
for t in nft nsenter setpriv bash dnsmasq dig ip ss; do
    p=$(command -v "$t" || true)
    [ -n "$p" ] && copy_elf "$p" "/usr/bin/$t"
done
# nft's and dig's own data (nft reads nothing else; dnsmasq needs its user).
cp /etc/passwd /etc/group "$rd/etc/"
# nft resolves protocol and service names (`ipv6-icmp`, `http`) through these.
cp /etc/protocols /etc/services "$rd/etc/"
[ -f /etc/nsswitch.conf ] && cp /etc/nsswitch.conf "$rd/etc/"
echo "127.0.0.1 localhost" >"$rd/etc/hosts"
: >"$rd/etc/resolv.conf"
# The modules: netfilter, veth and what they depend on, and the list init loads.
mods=$kdir/lib/modules/$kver
mkdir -p "$rd/lib/modules/$kver"
cp "$mods"/modules.* "$rd/lib/modules/$kver/"
(cd "$mods" && find kernel/net kernel/lib kernel/crypto kernel/drivers/net/veth.ko -name '*.ko*' 2>/dev/null) |
    while read -r m; do
        mkdir -p "$rd/lib/modules/$kver/$(dirname "$m")"
        cp "$mods/$m" "$rd/lib/modules/$kver/$m"
    done
cat >"$rd/kmatrix/modules" <<'EOF'
veth
nf_tables
nft_ct
nft_limit
nft_connlimit
nft_reject_inet
nft_socket
nft_log
nft_redir
nft_nat
nft_chain_nat
nfnetlink_log
nf_conntrack
nf_nat
nft_objref
nft_hash
nft_numgen
nf_conntrack_netlink
tcp_diag
udp_diag
inet_diag
EOF
echo "$plan" >"$rd/kmatrix/plan"
(cd "$rd" && find . | busybox cpio -o -H newc >"$WORK/initrd.cpio" 2>/dev/null)
size=$(du -m "$WORK/initrd.cpio" | cut -f1)
t_built=$(date +%s)
say "initramfs ${size} MB, built in $((t_built - t_start)) s"

# --- the VM --------------------------------------------------------------------------------------
log=$WORK/console.log
say "booting $kver under qemu (TCG), console in $log"
set +e
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp 2 -m 3072 \
    -nographic -no-reboot -nic none \
    -kernel "$vmlinuz" -initrd "$WORK/initrd.cpio" \
    -append "console=ttyS0 panic=-1 oops=panic quiet loglevel=3" </dev/null | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
t_end=$(date +%s)
[ "$KEEP" = 1 ] || rm -rf "$rd"

# --- the verdict ---------------------------------------------------------------------------------
tr -d '\r' <"$log" >"$log.txt"
python3 - "$log.txt" "$qemu_rc" "$((t_end - t_built))" "$((t_end - t_start))" <<'EOF'
import re, sys
log, qemu_rc, vm_s, all_s = open(sys.argv[1], errors="replace").read(), int(sys.argv[2]), sys.argv[3], sys.argv[4]
kernel = re.search(r"KMATRIX-KERNEL (\S+)", log)
ends = re.findall(r"KMATRIX-END (\S+) rc=(\d+) seconds=(\d+)", log)
begins = re.findall(r"KMATRIX-BEGIN (\S+)", log)
passed = sum(int(n) for n in re.findall(r"test result: \w+\. (\d+) passed", log))
failed = sum(int(n) for n in re.findall(r"test result: \w+\. \d+ passed; (\d+) failed", log))
problems = []
if not kernel:
    problems.append("the VM did not boot to init")
if "KMATRIX-DONE" not in log:
    problems.append(f"the VM did not finish (qemu exit {qemu_rc}; timeout?)")
for name, rc, s in ends:
    print(f"kernel-matrix: {name}: exit {rc} in {s} s", file=sys.stderr)
    if rc != "0":
        problems.append(f"{name} failed (exit {rc})")
for name in begins:
    if name not in [e[0] for e in ends]:
        problems.append(f"{name} did not finish")
if passed == 0:
    problems.append("no test ran")
print(f"kernel-matrix: kernel {kernel.group(1) if kernel else '?'}; VM {vm_s} s, whole job {all_s} s", file=sys.stderr)
for p in problems:
    print(f"kernel-matrix: FAILED: {p}", file=sys.stderr)
print(f"kernel-matrix: {passed} passed, {failed} failed")
sys.exit(1 if problems or failed else 0)
EOF
