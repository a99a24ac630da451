"""What to build: the machine's configuration, checked, and the host's quirks.

Everything here is plain data and pure checks, shared by ``pyvmm run`` and
the Python API, so both refuse the same input with the same words.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pyvmm.arch.x86_64 import pvm
from pyvmm.devices.virtio.blk import DiskConfig
from pyvmm.devices.virtio.console import CommandIO
from pyvmm.devices.virtio.fs import ShareConfig
from pyvmm.devices.virtio.net import NetConfig
from pyvmm.errors import UserError

MiB = 1 << 20

#: Smallest --memory accepted: the first megabyte plus room for a kernel.
MIN_MEMORY = 2 * MiB

#: Most vCPUs pyvmm describes: the MADT's processor local APIC entries hold
#: 8-bit xAPIC IDs, and ID 0xFF means "all processors" (ACPI 6.5, 5.2.12.2).
MAX_CPUS = 255

#: What --trace can show.
TRACE_KINDS = ("boot", "exits", "migration", "virtio")

_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# ASCII digits only (str.isdigit and \d also take other scripts' digits); a
# unit letter may be followed by B or iB; a lone B means bytes.
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([KMGT])(?:i?B)?|(B))?\s*", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int:
    """A memory size: a whole number with an optional K, M, G or T suffix
    (binary units, optionally followed by B or iB), or B for bytes; a bare
    number means MiB, as in QEMU."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise UserError(f"invalid memory size {text!r}: use a number with K, M, G or T, e.g. 512M")
    unit = 1 if m.group(3) else _UNITS[(m.group(2) or "").upper()]
    size = int(m.group(1)) * unit
    if size == 0:
        raise UserError("memory size must be greater than 0")
    return size


def parse_trace(text: str) -> tuple[str, ...]:
    """``--trace boot,exits``: which traces, each named once."""
    kinds = tuple(dict.fromkeys(k for k in text.split(",") if k))
    if unknown := [k for k in kinds if k not in TRACE_KINDS]:
        raise UserError(f"unknown --trace {unknown[0]!r}: choose from {', '.join(TRACE_KINDS)}")
    return kinds


@dataclass(frozen=True)
class HostQuirks:
    """What this host's KVM needs from pyvmm beyond the KVM API: on a host
    that emulates guest kernel mode (PVM), guest command-line words that
    steer Linux clear of what the emulator cannot do, and pyvmm completing
    the instructions it refuses anyway (:mod:`pyvmm.arch.x86_64.pvm`).
    Found once, when the configuration is made."""

    pvm: bool = False

    @classmethod
    def detect(cls) -> HostQuirks:
        return cls(pvm=pvm.host_is_pvm())

    def guest_cmdline(self, cmdline: str, cpus: int) -> str:
        return pvm.guest_cmdline(cmdline, cpus) if self.pvm else cmdline


@dataclass
class MachineConfig:
    """A machine to build."""

    kernel: str | os.PathLike[str]
    initrd: str | os.PathLike[str] | None = None
    cmdline: str = ""
    memory: int = 512 * MiB
    cpus: int = 1
    #: Add register dumps to failure reports.
    debug: bool = False
    #: What to trace on standard error: "boot", "exits", "migration", "virtio".
    trace: tuple[str, ...] = ()
    #: Count exits by reason and place (``--stats``).
    stats: bool = False
    #: virtio-blk disks (``--disk``), in the order the guest sees them (vda, vdb, ...).
    disks: tuple[DiskConfig, ...] = ()
    #: virtio-net cards (``--net``): eth0, eth1, ...
    nets: tuple[NetConfig, ...] = ()
    #: A virtio-rng device (``--rng``).
    rng: bool = False
    #: Host directories shared with the guest (``--share``), virtio-fs.
    shares: tuple[ShareConfig, ...] = ()
    #: ``pyvmm run -- CMD``: where the command's streams go on the host
    #: (virtio-console ports).
    command: CommandIO | None = None
    quirks: HostQuirks = field(default_factory=HostQuirks.detect)

    def check(self) -> None:
        """Refuse sizes no machine can have (KVM's own limits: :meth:`check_cpus`)."""
        if self.memory < MIN_MEMORY or self.memory % 4096:
            raise UserError(
                f"--memory must be at least {MIN_MEMORY // MiB} MiB and a multiple of 4 KiB"
            )
        if self.cpus < 1:
            raise UserError("--cpus must be at least 1")

    def check_cpus(self, kvm_limit: int) -> None:
        """--cpus against what KVM allows here, then what the MADT can describe."""
        if self.cpus > kvm_limit:
            raise UserError(f"--cpus {self.cpus} is more than KVM allows here ({kvm_limit})")
        if self.cpus > MAX_CPUS:
            raise UserError(f"--cpus {self.cpus} is more than pyvmm supports ({MAX_CPUS})")
