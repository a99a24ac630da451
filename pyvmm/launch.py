"""What ``pyvmm run`` and ``pyvmm.Machine`` share: turning their options
into a :class:`~pyvmm.vmm.config.MachineConfig`, the default guest included.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from pyvmm.errors import UserError
from pyvmm.vmm.config import HostQuirks, MachineConfig, parse_size


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_size(memory: int | str) -> int:
    """``--memory``: a size in bytes, or text as ``parse_size`` reads it;
    never more than the host has."""
    size = memory if isinstance(memory, int) else parse_size(memory)
    if size > host_memory():
        raise UserError(
            f"--memory {memory} is more than this host's {host_memory() >> 20} MiB of RAM"
        )
    return size


def cpu_count(cpus: int | str) -> int:
    """``--cpus``: a whole number in ASCII digits (the range is checked later)."""
    if isinstance(cpus, int):
        return cpus
    if not re.fullmatch(r"\s*[-+]?[0-9]+\s*", cpus, re.ASCII):
        raise UserError(f"invalid --cpus {cpus!r}: give a whole number")
    return int(cpus)


def make_config(
    kernel: str | os.PathLike[str] | None = None,
    initrd: str | os.PathLike[str] | None = None,
    cmdline: str = "",
    memory: int | str = "512M",
    cpus: int | str = 1,
    guest: str = "auto",
    announce: bool = False,
) -> MachineConfig:
    """A configuration from ``pyvmm run``'s options. Without ``kernel``, the
    default guest (built on first use) with ``cmdline`` added to its own;
    ``announce``: say on standard error which one."""
    size, count = memory_size(memory), cpu_count(cpus)
    quirks = HostQuirks.detect()
    if kernel is None:
        from pyvmm.images import default

        chosen = default.default_guest(guest, pvm_host=quirks.pvm)
        if announce:
            print(f"pyvmm: booting {chosen.description}", file=sys.stderr, flush=True)
        kernel = chosen.kernel
        initrd = initrd if initrd is not None else chosen.initrd
        cmdline = f"{chosen.cmdline} {cmdline}".strip()
    return MachineConfig(
        kernel=kernel, initrd=initrd, cmdline=cmdline, memory=size, cpus=count, quirks=quirks
    )


def add_virtio_devices(
    config: MachineConfig, disks: Sequence[str], nets: Sequence[str], rng: bool
) -> None:
    """``--disk``, ``--net`` and ``--rng`` into ``config`` (UserError, one
    line, for a bad one)."""
    from pyvmm.devices.virtio.blk import DiskConfig
    from pyvmm.devices.virtio.net import NetConfig

    config.disks = tuple(DiskConfig.parse(d) for d in disks)
    config.nets = tuple(NetConfig.parse(n, i) for i, n in enumerate(nets))
    config.rng = rng
