"""Taking a snapshot of a running machine.

:func:`take` pauses every vCPU (each returns from ``KVM_RUN`` after an
``immediate_exit``, so no port or MMIO access is left half done), reads
each vCPU's state on its own thread, then the VM's, the devices' and the
PVM emulation's, writes it all with guest memory (:mod:`pyvmm.snapshot.store`),
and lets the guest run on: it never notices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvmm.arch.x86_64.state import save_vcpu, save_vm
from pyvmm.kvm import CpuidEntry, Kvm, lib
from pyvmm.snapshot import store
from pyvmm.snapshot.format import HostInfo, SavedConfig, Snapshot
from pyvmm.vmm.lifecycle import Vmm

#: The CPUID registers whose feature bits a guest may rely on, by name:
#: (leaf, sub-leaf, register).
FEATURE_WORDS = {
    "1.ecx": (0x1, 0, "ecx"),
    "1.edx": (0x1, 0, "edx"),
    "7.ebx": (0x7, 0, "ebx"),
    "7.ecx": (0x7, 0, "ecx"),
    "7.edx": (0x7, 0, "edx"),
    "d.eax": (0xD, 0, "eax"),
    "80000001.ecx": (0x80000001, 0, "ecx"),
    "80000001.edx": (0x80000001, 0, "edx"),
}


@dataclass(frozen=True)
class Taken:
    """What :func:`take` did, for messages and ``--trace``."""

    path: Path
    memory_written: int
    paused_seconds: float


def vendor(cpuid: list[CpuidEntry]) -> str:
    """The CPU vendor string of CPUID leaf 0 ("GenuineIntel", "AuthenticAMD")."""
    leaf0 = next((e for e in cpuid if e.function == 0), None)
    if leaf0 is None:
        return ""
    return b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx)).decode(
        "ascii", "replace"
    )


def features(cpuid: list[CpuidEntry]) -> dict[str, int]:
    out = {}
    for name, (leaf, sub, reg) in FEATURE_WORDS.items():
        entry = next((e for e in cpuid if e.function == leaf and e.index == sub), None)
        if entry is not None:
            out[name] = getattr(entry, reg)
    return out


def xsave_size(kvm: Kvm) -> int:
    """Bytes of the XSAVE area KVM hands out (KVM_CAP_XSAVE2; 4096 before it)."""
    return kvm.check_extension(lib.KVM_CAP_XSAVE2) or 4096


def capture(vmm: Vmm, extra: dict[str, Any] | None = None) -> Snapshot:
    """Everything but guest memory, from a paused machine."""
    assert vmm.kvm is not None and vmm.vm is not None and vmm.devices is not None
    indices = vmm.kvm.msr_index_list()
    size = xsave_size(vmm.kvm)
    vcpus = vmm.on_vcpus(lambda vcpu: save_vcpu(vcpu, indices, size))
    c = vmm.config
    return Snapshot(
        config=SavedConfig.of(c),
        host=HostInfo(
            vendor=vendor(vcpus[0].cpuid),
            pvm=c.quirks.pvm,
            xsave_size=size,
            features=features(vcpus[0].cpuid),
        ),
        vm=save_vm(vmm.vm),
        vcpus=vcpus,
        devices=vmm.devices.state(),
        emulation=vmm.emulation.state() if vmm.emulation is not None else {},
        created=time.time(),
        extra=dict(extra or {}),
    )


def take(
    vmm: Vmm, path: Path, extra: dict[str, Any] | None = None, keep_paused: bool = False
) -> Taken:
    """Snapshot ``vmm`` into ``path`` (which must not exist). The guest is
    paused meanwhile and runs on afterwards (unless it was paused before, or
    ``keep_paused``: a guest about to be stopped must not print what its
    snapshot's clones will print again); on failure (SnapshotError) nothing
    is left at ``path``."""
    assert vmm.memory is not None
    was_paused = vmm.paused
    started = time.monotonic()
    vmm.pause()
    try:
        snap = capture(vmm, extra)
        written = store.save(Path(path), snap, vmm.memory, vmm.memory_file)
    finally:
        paused = time.monotonic() - started
        if not was_paused and not keep_paused:
            vmm.resume()
    return Taken(Path(path), written, paused)
