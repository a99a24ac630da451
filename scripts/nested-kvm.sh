#!/usr/bin/env bash
# scripts/nested-kvm.sh [--timeout SECONDS] CMD [ARGS...]
#
# Runs CMD with a /dev/kvm of hardware-style KVM (kvm_amd: SVM with nested
# paging), on a host that has none (a PVM host, a machine without VT-x or
# AMD-V): inside an L1 Linux that QEMU emulates with TCG as an AMD CPU. L1
# sees this machine's / read-only under a tmpfs overlay (what CMD writes is
# lost, but this repository, its virtualenv and the image cache are there at
# the same paths), and CMD runs in the current directory.
#
# Exit status: CMD's. 124: the time limit (--timeout, or $NESTED_TIMEOUT,
# default 3600 s) passed. 125: the rig itself failed: QEMU could not start,
# or L1 hung or its kernel panicked three times (either is tried again: L1
# under TCG does so now and then, whatever runs in it), so CMD never ran to
# its end. Either is said on one line, with L1's last console lines.
#
# Needs root the first time (apt-get install qemu-system-x86 busybox-static);
# L1's kernel and initramfs are built once into $PYVMM_CACHE/nested (by
# default ~/.cache/pyvmm/nested). Env: NESTED_MEMORY (8G), NESTED_CPUS (2),
# NESTED_CPU (EPYC-Rome,+svm,+npt: QEMU's "max" hung or crashed L1 in 4 of 9
# runs), NESTED_TCG_THREAD (multi: one TCG thread per vCPU; with "single"
# a boot of Debian's kernel in L1 took over 300 s instead of 40). With
# "multi", L1's kernel now and then overflows its stack in its exception
# entry (about once in ten minutes of the Linux tests): L1 is tried up to
# three times. CMD gets PYVMM_* variables passed on, and PYVMM_RIG_QEMU, QEMU's
# version, for tests that meet its known defects.
set -euo pipefail

limit=${NESTED_TIMEOUT:-3600}
if [ "${1:-}" = --timeout ]; then
    limit=$2
    shift 2
fi
if [ $# -eq 0 ]; then
    echo "usage: $0 [--timeout SECONDS] CMD [ARGS...]" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
cache=${PYVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pyvmm}
rig=$cache/nested
started=$(date +%s)
say() { echo "nested-kvm: $*" >&2; }
fail() { say "$1"; exit "${2:-125}"; }

# 1. QEMU and a static busybox, from Debian.
if ! command -v qemu-system-x86_64 >/dev/null || ! [ -x /bin/busybox ]; then
    [ "$(id -u)" = 0 ] || fail "needs: sudo apt-get install qemu-system-x86 busybox-static"
    say "installing qemu-system-x86 and busybox-static"
    ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends qemu-system-x86 busybox-static >/dev/null ||
        fail "apt-get install qemu-system-x86 busybox-static failed"
fi
qemu_version=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p')

# 2. L1's kernel: Debian's generic one (kvm_amd, 9p and overlayfs as modules).
package=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
[ -n "$package" ] || fail "apt knows no linux-image-amd64 (run apt-get update)"
release=${package#linux-image-}
l1=$rig/$release
if ! [ -f "$l1/vmlinuz" ]; then
    say "fetching L1's kernel $release"
    mkdir -p "$rig"
    tmp=$(mktemp -d "$rig/.kernel.XXXXXX")
    (cd "$tmp" && apt-get download -q "$package-unsigned" >/dev/null && dpkg-deb -x ./*.deb x) ||
        { rm -rf "$tmp"; fail "cannot fetch $package-unsigned"; }
    mkdir -p "$tmp/l1"
    mv "$tmp/x/boot/vmlinuz-$release" "$tmp/l1/vmlinuz"
    mv "$tmp/x/lib/modules/$release" "$tmp/l1/modules"
    rm -rf "$l1"
    mv "$tmp/l1" "$l1"
    rm -rf "$tmp"
fi

# 3. L1's initramfs: busybox, the modules /init loads (dependencies first:
# 9p and overlay for the host's files, kvm_amd, tun for the network tests),
# /init; made again when the init script or the module list changes.
l1_modules="virtio_pci 9pnet_virtio 9p overlay kvm_amd tun"
key=$( (cat "$here/nested/l1-init"; echo "$l1_modules") | sha256sum | cut -c1-12)
initrd=$l1/initrd-$key.cpio
if ! [ -f "$initrd" ]; then
    say "building L1's initramfs"
    root=$(mktemp -d "$l1/.initramfs.XXXXXX")
    mkdir -p "$root/bin" "$root/modules" "$root/proc" "$root/sys" "$root/dev"
    cp /bin/busybox "$root/bin/"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    : > "$root/modules.order"
    # shellcheck disable=SC2086 # a list of module names
    for m in $(python3 "$here/nested/modules.py" "$l1/modules" $l1_modules); do
        name=$(basename "$m")
        case "$name" in
        *.ko) cp "$l1/modules/$m" "$root/modules/$name" ;;
        *.ko.xz) xz -dc "$l1/modules/$m" > "$root/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$l1/modules/$m" > "$root/modules/${name%.zst}"; name=${name%.zst} ;;
        esac
        echo "$name" >> "$root/modules.order"
    done
    install -m 755 "$here/nested/l1-init" "$root/init"
    (cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$root"
fi

# 4. The job: CMD in this directory, with a clean environment.
work=$(mktemp -d /tmp/nested-kvm.XXXXXX)
trap 'rm -rf "$work"' EXIT
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
    echo "cd $(quote "$PWD") || exit 125"
    printf 'exec env -i HOME=/root TERM=dumb LANG=C.UTF-8'
    printf ' PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    printf ' PYVMM_RIG_QEMU=%s' "$(quote "$qemu_version")"
    while IFS='=' read -r name value; do
        printf ' %s=%s' "$name" "$(quote "$value")"
    done < <(env | grep -E '^PYVMM_[A-Z_]*=' || true)
    for arg in "$@"; do printf ' %s' "$(quote "$arg")"; done
    echo
} > "$work/job.sh"

# 5. Boot L1 and watch it: a heartbeat older than $hang seconds means L1 hung.
hang=90
# L1 is a test fixture: speculation mitigations protect nothing there, and
# the return thunk for SRSO on the emulated EPYC overflowed L1's kernel
# stack under TCG ("stack guard page was hit" in srso_return_thunk).
l1_mitigations="mitigations=off"
boot_l1() {
    rm -f "$work/status" "$work/heartbeat" "$work/started"
    : > "$work/console.log"
    qemu-system-x86_64 \
        -accel "tcg,thread=${NESTED_TCG_THREAD:-multi},tb-size=1024" \
        -cpu "${NESTED_CPU:-EPYC-Rome,+svm,+npt}" -M q35 \
        -smp "${NESTED_CPUS:-2}" -m "${NESTED_MEMORY:-8G}" \
        -nographic -no-reboot -nic none -serial stdio -monitor none \
        -kernel "$l1/vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet loglevel=3 $l1_mitigations rig.job=$work/job.sh rig.out=$work" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$work,mount_tag=rigout,security_model=none,multidevs=remap" \
        </dev/null 2>>"$work/console.log" > >(tee -a "$work/console.log") &
    qemu=$!
}
# Seconds since L1 wrote the time to $1 (since it booted, before the first
# write); a file caught half-written counts as just written.
age() {
    local then
    then=$(cat "$1" 2>/dev/null || echo "$booted")
    case "$then" in '' | *[!0-9]*) echo 0 ;; *) echo $(($(date +%s) - then)) ;; esac
}
tail_of_l1() {
    say "L1's last console lines:"
    tail -n 20 "$work/console.log" | sed 's/^/  | /' >&2
}

for attempt in 1 2 3; do
    say "booting L1 (kvm_amd under QEMU $qemu_version, TCG), attempt $attempt"
    booted=$(date +%s)
    boot_l1
    outcome=running
    while kill -0 "$qemu" 2>/dev/null; do
        sleep 2
        if [ $(($(date +%s) - started)) -ge "$limit" ]; then
            outcome=timeout
        elif [ "$(age "$work/heartbeat")" -ge "$hang" ]; then
            outcome=hung
        else
            continue
        fi
        kill "$qemu" 2>/dev/null || true
        sleep 1
        kill -9 "$qemu" 2>/dev/null || true
        break
    done
    wait "$qemu" 2>/dev/null || true
    if [ "$outcome" = timeout ]; then
        tail_of_l1
        fail "timed out after $limit s ($([ -f "$work/started" ] && echo "CMD was running" || echo "L1 never ran CMD"))" 124
    fi
    if [ "$outcome" = hung ]; then
        tail_of_l1
        say "L1 hung (no heartbeat for $hang s)"
        continue
    fi
    if [ -f "$work/status" ]; then
        status=$(cat "$work/status")
        say "CMD ended with status $status after $(($(date +%s) - booted)) s in L1"
        exit "$status"
    fi
    tail_of_l1
    if grep -q "Kernel panic" "$work/console.log"; then
        say "L1's kernel panicked"
        continue
    fi
    fail "L1 ended without running CMD to its end (QEMU failed?)"
done
fail "L1 hung or panicked three times"
