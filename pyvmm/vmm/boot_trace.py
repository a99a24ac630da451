"""What ``--trace boot``, ``--trace exits`` and ``--stats`` print.

Written for someone learning how a VMM works: each boot step says what pyvmm
did and with which numbers; each VM exit says why the guest stopped and what
it wanted; the statistics say where the exits came from and what handling
them cost. Everything goes to standard error, leaving standard output to
the guest's console.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pyvmm.arch.x86_64 import gdt, paging
from pyvmm.boot import layout
from pyvmm.boot.image import KernelImage
from pyvmm.boot.loader import BootInfo
from pyvmm.errors import UserError
from pyvmm.kvm import lib

TRACE_KINDS = ("boot", "exits")
_EXIT_IO, _EXIT_INTERNAL_ERROR = lib.KVM_EXIT_IO, lib.KVM_EXIT_INTERNAL_ERROR

#: KVM_EXIT_* values by name, for the ones pyvmm can meet.
EXIT_NAMES = {
    getattr(lib, f"KVM_EXIT_{name}"): name
    for name in (
        "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO",
        "IRQ_WINDOW_OPEN", "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS",
        "INTERNAL_ERROR", "SYSTEM_EVENT", "IOAPIC_EOI", "X86_RDMSR", "X86_WRMSR",
    )
}  # fmt: skip

#: Setup-header fields a bzImage's loader reads, with what each one decides.
SETUP_HEADER_MEANING = {
    "setup_sects": "512-byte sectors of real-mode setup code before the kernel proper",
    "syssize": "protected-mode code size in 16-byte units",
    "boot_flag": "0xaa55: a boot sector signature",
    "header": "'HdrS': the boot protocol header is present",
    "version": "boot protocol version",
    "loadflags": "bit 0 LOADED_HIGH: protected-mode code goes above 1 MiB",
    "xloadflags": "bit 0 XLF_KERNEL_64: there is a 64-bit entry at +0x200",
    "relocatable_kernel": "may be loaded at another aligned address",
    "kernel_alignment": "alignment a relocated kernel needs",
    "pref_address": "preferred load address",
    "init_size": "memory the kernel needs from its load address while it starts",
    "cmdline_size": "longest command line",
    "initrd_addr_max": "highest address for the initrd",
    "payload_offset": "compressed kernel, offset in the protected-mode code",
    "payload_length": "compressed kernel, length",
}


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--trace boot,exits``: which traces, each named once."""
    kinds = tuple(dict.fromkeys(k for k in text.split(",") if k))
    if unknown := [k for k in kinds if k not in TRACE_KINDS]:
        raise UserError(f"unknown --trace {unknown[0]!r}: choose from {', '.join(TRACE_KINDS)}")
    return kinds


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 4)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


class BootTrace:
    """Numbered boot steps, each with indented detail lines. False (and
    silent) when tracing is off, so callers skip building the lines."""

    def __init__(self, write: Callable[[str], None] | None) -> None:
        self._write = write
        self._step = 0

    def __bool__(self) -> bool:
        return self._write is not None

    def step(self, title: str, lines: Iterable[str] = ()) -> None:
        if self._write is None:
            return
        self._step += 1
        text = f"boot {self._step:2}. {title}\n" + "".join(f"          {line}\n" for line in lines)
        self._write(text)


# -- describing the boot -----------------------------------------------------


def kvm_lines(api_version: int, mmap_size: int, caps: dict[str, int]) -> list[str]:
    lines = [
        f"KVM_GET_API_VERSION = {api_version}",
        f"KVM_GET_VCPU_MMAP_SIZE = {mmap_size} (each vCPU's struct kvm_run and its I/O data)",
    ]
    lines += [f"KVM_CHECK_EXTENSION(KVM_CAP_{name}) = {value}" for name, value in caps.items()]
    return lines


def kernel_lines(path: object, kernel: KernelImage) -> list[str]:
    lines = [f"{path}: {kernel.kind}, 64-bit entry at {kernel.entry:#x}"]
    hdr = kernel.setup_header
    if hdr is not None:
        lines.append("setup header fields read (Documentation/arch/x86/boot.rst):")
        for name, meaning in SETUP_HEADER_MEANING.items():
            value = getattr(hdr, name)
            shown = hdr.protocol if name == "version" else f"{value:#x}"
            lines.append(f"  {name:<19} {shown:<12} {meaning}")
    limit = kernel.initrd_addr_max + 1
    lines.append(f"command line limit {kernel.cmdline_max} bytes; initrd below {limit:#x}")
    return lines


def memory_lines(slots: Iterable[tuple[int, int, int, int]]) -> list[str]:
    """(slot, guest address, size, host address) per KVM memory slot."""
    return [
        f"slot {slot}: guest {gpa:#012x}-{gpa + size - 1:#012x} ({_size(size)}) "
        f"-> host {host:#x} (mmap MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE: untouched until used)"
        for slot, gpa, size, host in slots
    ]


def acpi_lines(blobs: dict[int, bytes]) -> list[str]:
    def signature(blob: bytes) -> str:
        # Every table starts with its 4-byte signature, the RSDP with "RSD PTR ".
        return blob[: 8 if blob[:4] == b"RSD " else 4].decode("ascii", "replace").rstrip()

    return [f"{a:#07x} {signature(b)} ({len(b)} bytes)" for a, b in sorted(blobs.items())]


def load_lines(boot: BootInfo) -> list[str]:
    lines = []
    what = "protected-mode code" if boot.kernel.kind == "bzImage" else "PT_LOAD segment"
    for seg in boot.kernel.segments:
        bss = seg.mem_size - len(seg.data)
        lines.append(
            f"{what}: {len(seg.data)} bytes at {seg.addr:#x}-{seg.addr + len(seg.data) - 1:#x}"
            + (f", then {bss} zero bytes (BSS)" if bss else "")
        )
    lines.append(f"kernel needs RAM up to {boot.kernel.end:#x}")
    text = boot.cmdline.decode(errors="replace")
    lines.append(f"command line: {len(boot.cmdline)} bytes at {boot.cmdline_addr:#x}: {text!r}")
    if boot.initrd_size:
        lines.append(f"initrd: {boot.initrd_size} bytes at {boot.initrd_addr:#x} (highest fit)")
    else:
        lines.append("initrd: none")
    return lines


def zero_page_lines(boot: BootInfo) -> list[str]:
    lines = [f"struct boot_params at {boot.zero_page:#x} (Documentation/arch/x86/zero-page.rst):"]
    lines += [f"  {name} = {value:#x}" for name, value in boot.zero_page_fields]
    return lines


def e820_lines(boot: BootInfo) -> list[str]:
    return [str(e) for e in boot.e820]


def page_table_lines() -> list[str]:
    pds = paging.IDENTITY_MAPPED // (paging.ENTRIES * paging.PAGE_2M)
    pd_end = layout.PD_ADDR + pds * 4096 - 1
    return [
        f"CR3 -> PML4 at {layout.PML4_ADDR:#x}: entry 0 -> PDPT at {layout.PDPT_ADDR:#x}",
        f"PDPT entries 0-{pds - 1} -> {pds} page directories at {layout.PD_ADDR:#x}-{pd_end:#x}",
        "each PD entry maps a 2 MiB page (PS bit): virtual = physical for "
        f"0-{_size(paging.IDENTITY_MAPPED)}",
        "flags: present | writable; the kernel builds its own tables soon after entry",
    ]


def gdt_lines() -> list[str]:
    return [
        f"GDT at {layout.GDT_ADDR:#x}, IDT at {layout.IDT_ADDR:#x} "
        "(limit 0: no interrupts until the kernel loads its own)",
        f"{gdt.BOOT_CS:#04x} __BOOT_CS: {gdt.CODE64.encode():#018x} code, execute/read, "
        "L=1 (64-bit)",
        f"{gdt.BOOT_DS:#04x} __BOOT_DS: {gdt.DATA.encode():#018x} data, read/write, flat 4 GiB",
        f"{gdt.BOOT_TSS:#04x} TSS:       {gdt.TSS.encode():#018x} 64-bit TSS (busy): "
        "TR must hold one",
    ]


def vcpu_lines(vcpu_id: int, cpuid_entries: int, msrs: dict[int, int]) -> list[str]:
    lines = [f"vCPU {vcpu_id}: KVM_SET_CPUID2 with {cpuid_entries} leaves (APIC ID {vcpu_id})"]
    lines += [f"  MSR {index:#010x} = {value:#x}" for index, value in msrs.items()]
    lines.append("  LAPIC: LINT0 = ExtINT (the PIC's output), LINT1 = NMI (virtual wire mode)")
    return lines


def register_lines(regs: Any, sregs: Any) -> list[str]:
    return [
        f"RIP {regs.rip:#x} (the 64-bit entry)  RSI {regs.rsi:#x} (the zero page)  "
        f"RSP {regs.rsp:#x}",
        f"RFLAGS {regs.rflags:#x} (IF clear)",
        f"CR0 {sregs.cr0:#x} (PE, PG, ...)  CR3 {sregs.cr3:#x}  CR4 {sregs.cr4:#x} (PAE)  "
        f"EFER {sregs.efer:#x} (LME, LMA)",
        f"CS {sregs.cs.selector:#x} (L={sregs.cs.l})  DS/ES/SS {sregs.ds.selector:#x}  "
        f"GDT {sregs.gdt.base:#x}+{sregs.gdt.limit + 1}",
    ]


def device_lines(ranges: Iterable[tuple[int, int, object]], irq_chip: str) -> list[str]:
    lines = [f"in KVM: {irq_chip}"]
    lines += [f"ports {start:#06x}-{end - 1:#06x}: {type(d).__name__}" for start, end, d in ranges]
    lines.append("anything else: reads all-ones, writes ignored (an empty bus)")
    return lines


# -- exits -------------------------------------------------------------------


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
class ExitObserver:
    """Logs exits (rate-limited) and counts them for ``--stats``.

    The log shows the first ``burst`` exits, then at most ``per_second``
    lines each second, with a line saying how many it left out: a boot
    makes hundreds of thousands of exits.
    """

    log: Callable[[str], None] | None = None
    count: bool = False
    #: Names what answers a port (the machine sets it once devices exist).
    port_owner: Callable[[int, int], str] | None = None
    #: Names the instruction pyvmm just completed for KVM (PVM hosts).
    emulated: Callable[[], str] | None = None
    burst: int = 500
    per_second: int = 50
    _counts: dict[tuple[str, str], _Count] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _logged: int = 0
    _window: float = 0.0
    _in_window: int = 0
    _skipped: int = 0

    def record(
        self, vcpu_id: int, reason: int, run: Any, page: memoryview, handler_ns: int
    ) -> None:
        name, where, data = describe_exit(reason, run, page)
        if reason == _EXIT_IO and self.port_owner is not None:
            where = f"{where} ({self.port_owner(run.io.port, run.io.size)})"
        elif reason == _EXIT_INTERNAL_ERROR and self.emulated is not None:
            where = f"emulation: {self.emulated()}"
        with self._lock:
            if self.count:
                c = self._counts.setdefault((name, where), _Count())
                c.exits += 1
                c.handler_ns += handler_ns
            if self.log is not None and self._admit():
                skipped, self._skipped = self._skipped, 0
                note = f"exit ({skipped} not shown)\n" if skipped else ""
                self.log(
                    f"{note}exit vCPU {vcpu_id} {name} {where}"
                    + (f" data {data.hex(' ')}" if data else "")
                    + f" ({handler_ns / 1000:.1f} µs)\n"
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
