"""What ``--trace exits`` and ``--stats`` print: each VM exit as it happens,
and a table of exits by reason and place when the VM ends.

Each exit says why the guest stopped and what it wanted; the table says
where the exits came from and what handling them cost. With neither option
on, the vCPU loop never calls into this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyvmm.devices.bus import Bus
from pyvmm.kvm import lib

_EXIT_IO = lib.KVM_EXIT_IO
_EXIT_MMIO = lib.KVM_EXIT_MMIO

#: KVM_EXIT_* values by name, for the ones pyvmm can meet.
EXIT_NAMES = {
    getattr(lib, f"KVM_EXIT_{name}"): name
    for name in (
        "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO",
        "IRQ_WINDOW_OPEN", "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS",
        "INTERNAL_ERROR", "SYSTEM_EVENT", "IOAPIC_EOI", "X86_RDMSR", "X86_WRMSR",
    )
}  # fmt: skip


def describe_exit(reason: int, run: Any, page: memoryview) -> tuple[str, str, bytes]:
    """(reason name, where: port or address and direction, data) for an exit."""
    name = EXIT_NAMES.get(reason, f"exit {reason}")
    if reason == lib.KVM_EXIT_IO:
        io = run.io
        out = io.direction == lib.KVM_EXIT_IO_OUT
        start = io.data_offset
        data = bytes(page[start : start + io.size * io.count][:16])
        return name, f"port {io.port:#06x} {'out' if out else 'in'} size {io.size}", data
    if reason == lib.KVM_EXIT_MMIO:
        mmio = run.mmio
        n = min(mmio.len, 8)
        where = f"{'write' if mmio.is_write else 'read'} {mmio.phys_addr:#x} size {mmio.len}"
        return name, where, bytes(mmio.data[0:n])
    return name, "", b""


@dataclass
class _Count:
    exits: int = 0
    handler_ns: int = 0


@dataclass
class ExitLog:
    """Logs exits (rate-limited) and counts them for ``--stats``.

    The log shows the first ``burst`` exits, then at most ``per_second``
    lines each second, with a line saying how many it left out: a boot
    makes hundreds of thousands of exits.
    """

    log: Callable[[str], None] | None = None
    count: bool = False
    #: The buses, to name the device behind each port or MMIO exit.
    pio: Bus | None = None
    mmio: Bus | None = None
    burst: int = 500
    per_second: int = 50
    _counts: dict[tuple[str, str], _Count] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _logged: int = 0
    _window: float = 0.0
    _in_window: int = 0
    _skipped: int = 0

    def record(
        self, vcpu_id: int, packed: int, run: Any, page: memoryview, ns: int, note: str | None
    ) -> None:
        """One exit (as ``pyvmm_run`` returned it) that took ``ns`` to handle;
        ``note``: what the handler said it did."""
        reason = packed & 0xFF
        name, where, data = describe_exit(reason, run, page)
        if reason == _EXIT_IO and self.pio is not None:
            where = f"{where} ({self.pio.owner(run.io.port, run.io.size)})"
        elif reason == _EXIT_MMIO and self.mmio is not None and not note:
            where = f"{where} ({self.mmio.owner(run.mmio.phys_addr, run.mmio.len)})"
        elif note:
            where = note
        with self._lock:
            if self.count:
                c = self._counts.setdefault((name, where), _Count())
                c.exits += 1
                c.handler_ns += ns
            if self.log is not None and self._admit():
                skipped, self._skipped = self._skipped, 0
                shown = f"exit ({skipped} not shown)\n" if skipped else ""
                self.log(
                    f"{shown}exit vCPU {vcpu_id} {name} {where}"
                    + (f" data {data.hex(' ')}" if data else "")
                    + f" ({ns / 1000:.1f} µs)\n"
                )

    def _admit(self) -> bool:
        if self._logged < self.burst:
            self._logged += 1
            return True
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._in_window = now, 0
        if self._in_window < self.per_second:
            self._in_window += 1
            return True
        self._skipped += 1
        return False

    def table(self, limit: int = 25) -> str:
        """Exits by reason and place, most frequent first."""
        with self._lock:
            rows = sorted(self._counts.items(), key=lambda kv: -kv[1].exits)
        total = sum(c.exits for _, c in rows)
        total_ns = sum(c.handler_ns for _, c in rows)
        out = [
            f"{'exits':>9} {'share':>6} {'handler ms':>11} {'µs/exit':>8}  reason and place",
        ]
        shown, rest = rows[:limit], rows[limit:]
        for (name, where), c in shown:
            out.append(
                f"{c.exits:9} {100 * c.exits / max(total, 1):5.1f}% {c.handler_ns / 1e6:11.1f} "
                f"{c.handler_ns / 1000 / c.exits:8.1f}  {name} {where}".rstrip()
            )
        if rest:
            n = sum(c.exits for _, c in rest)
            ns = sum(c.handler_ns for _, c in rest)
            share = 100 * n / max(total, 1)
            out.append(f"{n:9} {share:5.1f}% {ns / 1e6:11.1f} {'':8}  ({len(rest)} other places)")
        per_exit = total_ns / 1000 / max(total, 1)
        out.append(f"{total:9} {'100%':>6} {total_ns / 1e6:11.1f} {per_exit:8.1f}  all exits")
        return "\n".join(out) + "\n"
