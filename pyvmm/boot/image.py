"""What the loader learned from a kernel file, before anything is written to RAM."""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.boot.zeropage import SetupHeader
from pyvmm.errors import UserError


class KernelFormatError(UserError):
    """The kernel file is not something pyvmm can boot; the message says why."""


@dataclass(frozen=True)
class Segment:
    """Bytes to place at a guest-physical address, followed by zeros up to ``mem_size``."""

    addr: int
    data: bytes
    mem_size: int

    @property
    def end(self) -> int:
        return self.addr + self.mem_size


@dataclass(frozen=True)
class KernelImage:
    """A parsed kernel: where its pieces go and how it wants to be started."""

    kind: str  # "ELF" or "bzImage"
    entry: int  # guest-physical address of the 64-bit entry point
    segments: tuple[Segment, ...]
    #: The setup header to copy into the zero page (bzImage only).
    setup_header: SetupHeader | None
    #: Longest command line the kernel accepts, without the terminating NUL.
    cmdline_max: int
    #: Highest address the initrd may occupy (its last byte).
    initrd_addr_max: int
    #: Bytes the kernel occupies from its first segment once running (bzImage: init_size).
    footprint: int

    @property
    def start(self) -> int:
        return min(s.addr for s in self.segments)

    @property
    def end(self) -> int:
        """First address above everything the kernel needs."""
        return max(max(s.end for s in self.segments), self.start + self.footprint)
