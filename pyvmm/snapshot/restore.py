"""Restoring a snapshot: the second way to build a machine.

:func:`build_from_snapshot` reads and checks the state file, assembles the
same machine the snapshot was taken of (:func:`pyvmm.vmm.builder.assemble`,
with each vCPU's saved CPUID and guest RAM mapped privately from the memory
file: nothing is read until the guest touches it), refuses a host whose CPU
lacks what the guest may be using, and sets the VM, each vCPU, the devices
and last the clock to what was saved. No kernel is loaded and nothing is
written into guest memory; :meth:`pyvmm.vmm.lifecycle.Vmm.start` then
resumes the guest where it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pyvmm.arch.x86_64 import cpuid
from pyvmm.arch.x86_64.state import restore_clock, restore_vcpu, restore_vm, time_away
from pyvmm.devices.virtio.console import CommandIO
from pyvmm.kvm import KvmError
from pyvmm.snapshot import store
from pyvmm.snapshot.format import HostInfo, SavedConfig, Snapshot, SnapshotError
from pyvmm.snapshot.take import features, vendor, xsave_size
from pyvmm.vmm import boot_trace
from pyvmm.vmm.builder import assemble
from pyvmm.vmm.config import HostQuirks, MachineConfig
from pyvmm.vmm.lifecycle import Console, Vmm


def config_of(saved: SavedConfig) -> MachineConfig:
    c = saved
    return MachineConfig(
        kernel=c.kernel,
        initrd=c.initrd,
        cmdline=c.cmdline,
        memory=c.memory,
        cpus=c.cpus,
        disks=c.disks,
        nets=c.nets,
        rng=c.rng,
        shares=c.shares,
        # A restored command's streams are pyvmm's (pyvmm run -- CMD sets its own).
        command=CommandIO(None, 1, 2) if c.command else None,
        quirks=HostQuirks.detect(),
    )


def check_wanted(snap: Snapshot, path: Path, memory: int | None, cpus: int | None) -> None:
    """Refuse options that contradict the snapshot (it fixes both)."""
    if memory is not None and memory != snap.config.memory:
        raise SnapshotError(
            f"snapshot {path} has {snap.config.memory >> 20} MiB of memory, not {memory >> 20} MiB"
        )
    if cpus is not None and cpus != snap.config.cpus:
        raise SnapshotError(f"snapshot {path} has {snap.config.cpus} vCPUs, not {cpus}")


def check_host(vmm: Vmm, host: HostInfo, cpus: int, path: Path | str) -> None:
    """The guest may use any CPU feature it was offered: this host must
    offer them all, from the same vendor, with the same XSAVE area.
    ``path``: where the guest comes from, for messages."""
    assert vmm.kvm is not None
    # What pyvmm would offer a guest here (KVM's supported leaves, with the
    # bits pyvmm sets itself: the hypervisor bit, HTT), against what it was offered.
    supported = cpuid.vcpu_cpuid(vmm.kvm.supported_cpuid(), apic_id=0, nr_vcpus=cpus)
    here = vendor(supported)
    if host.vendor and here and host.vendor != here:
        raise SnapshotError(
            f"snapshot {path} was taken on a {host.vendor} CPU; this host has {here}"
        )
    have = features(supported)
    lacking = [
        f"{word} {bits & ~have.get(word, 0):#x}"
        for word, bits in host.features.items()
        if bits & ~have.get(word, 0)
    ]
    if lacking and not host.pvm:  # on PVM the guest sees the host's CPUID anyway
        raise SnapshotError(
            f"snapshot {path} was taken on a host whose CPU differs: this one lacks "
            f"CPUID features {', '.join(lacking)}"
        )
    if host.xsave_size != xsave_size(vmm.kvm):
        raise SnapshotError(
            f"snapshot {path} was taken on a host whose CPU differs (XSAVE area of "
            f"{host.xsave_size} bytes, here {xsave_size(vmm.kvm)})"
        )
    if host.pvm != vmm.config.quirks.pvm:
        kind = "emulates" if host.pvm else "does not emulate"
        raise SnapshotError(
            f"snapshot {path} was taken on a host that {kind} guest kernel mode (PVM); this one "
            "differs"
        )


def build_from_snapshot(
    path: str | os.PathLike[str],
    console: Console,
    trace_out: Callable[[str], None] | None = None,
    memory: int | None = None,
    cpus: int | None = None,
    trace_kinds: tuple[str, ...] = (),
    stats: bool = False,
    debug: bool = False,
    adjust: Callable[[MachineConfig], None] | None = None,
) -> Vmm:
    """A machine ready to resume the snapshot at ``path``; raises
    SnapshotError (a UserError) for a snapshot it cannot use, having
    released whatever it had made. ``memory``/``cpus``: what the caller
    asked for, which must be what the snapshot has. ``adjust`` may change
    the host's side of the devices before they are made (which directory a
    share serves, where a command's streams go), never what the guest sees."""
    path = Path(path)
    trace = boot_trace.BootTrace(trace_out if "boot" in trace_kinds else None)
    snap = store.load(path)
    check_wanted(snap, path, memory, cpus)
    config = config_of(snap.config)
    config.trace, config.stats, config.debug = trace_kinds, stats, debug
    if adjust is not None:
        adjust(config)
    if trace:
        trace.step(
            f"read the snapshot {path} (snapshot.store.load)", boot_trace.snapshot_lines(snap)
        )
    vmm = Vmm(config, console, trace_out)
    fd = store.open_memory(path)
    try:
        assemble(vmm, trace, memory_file=fd, cpuids=[v.cpuid for v in snap.vcpus])
        vmm.memory_file = path / store.MEMORY
        check_host(vmm, snap.host, snap.config.cpus, path)
        restore_state(vmm, snap, trace)
    except KvmError as e:
        vmm.close()
        raise SnapshotError(f"snapshot {path}: KVM refused the saved state: {e}") from None
    except ValueError as e:
        vmm.close()
        raise SnapshotError(f"snapshot {path}: {e}") from None
    except BaseException:
        vmm.close()
        raise
    finally:
        os.close(fd)  # the mappings keep the file
    return vmm


def restore_state(vmm: Vmm, snap: Snapshot, trace: boot_trace.BootTrace) -> None:
    assert vmm.vm is not None and vmm.devices is not None
    restore_vm(vmm.vm, snap.vm)
    if trace:
        trace.step("restore the PICs, the I/O APIC and the PIT (arch.x86_64.state.restore_vm)")
    away = time_away(snap.vm, time.time_ns())
    for vcpu, state in zip(vmm.vcpus, snap.vcpus, strict=True):
        refused = restore_vcpu(vcpu, state, away)
        if refused:
            raise ValueError(f"KVM refused MSRs {', '.join(hex(i) for i in refused)}")
        if trace:
            trace.step(
                f"restore vCPU {vcpu.id} (arch.x86_64.state.restore_vcpu)",
                boot_trace.restored_vcpu_lines(state, away),
            )
    vmm.devices.restore(snap.devices)
    if vmm.emulation is not None:
        vmm.emulation.restore(snap.emulation)
    if trace:
        trace.step("restore the devices (DeviceModel.restore)", [p.key for p in vmm.devices])
    vmm.clock_behind_ns = restore_clock(vmm.vm, snap.vm, time.time_ns())
    for vcpu in vmm.vcpus:
        vcpu.kvmclock_ctrl()  # the guest was stopped: no soft-lockup warnings for it
    if trace:
        trace.step("set the KVM clock (arch.x86_64.state.restore_clock)", boot_trace.clock_lines(
            snap.vm.clock, vmm.clock_behind_ns))  # fmt: skip
