"""What ``--trace boot`` prints: each step of building and booting the
machine, with its numbers.

Written for someone learning how a VMM works: each boot step says what pyvmm
did and with which numbers. Everything goes to standard error, leaving
standard output to the guest's console. (VM exits: :mod:`pyvmm.vmm.exit_log`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from pyvmm.arch.x86_64 import gdt, layout, paging
from pyvmm.boot.image import KernelImage
from pyvmm.boot.loader import BootInfo

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


def vm_lines(vm_fd: int) -> list[str]:
    return [
        f"KVM_CREATE_VM -> VM descriptor {vm_fd}",
        f"KVM_SET_TSS_ADDR {layout.TSS_ADDR:#x}, KVM_SET_IDENTITY_MAP_ADDR "
        f"{layout.IDENTITY_MAP_ADDR:#x} (pages Intel VMX needs, in the MMIO gap)",
        "KVM_CREATE_IRQCHIP: PIC pair, IOAPIC and a LAPIC per vCPU, in the kernel",
        "KVM_CREATE_PIT2: the 8254 timer, in the kernel",
    ]


def memory_lines(
    slots: Iterable[tuple[int, int, int, int]], file_backed: bool = False
) -> list[str]:
    """(slot, guest address, size, host address) per KVM memory slot."""
    how = (
        "mmap of the snapshot's memory file, MAP_PRIVATE: read when touched, copy-on-write"
        if file_backed
        else "mmap MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE: untouched until used"
    )
    return [
        f"slot {slot}: guest {gpa:#012x}-{gpa + size - 1:#012x} ({_size(size)}) "
        f"-> host {host:#x} ({how})"
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


def device_lines(
    devices: Iterable[Any], irq_chip: str, coalesced: Iterable[tuple[int, int, bool]] = ()
) -> list[str]:
    """One line per placed device (vmm.device_manager.Placed): where it lives;
    then the registers whose writes KVM batches."""
    lines = [f"in KVM: {irq_chip}"]
    for placed in devices:
        a = placed.allocation
        where = []
        if a.ports is not None:
            where.append(f"ports {a.ports[0]:#06x}-{a.ports[0] + a.ports[1] - 1:#06x}")
        if a.mmio is not None:
            where.append(f"MMIO {a.mmio.start:#x}-{a.mmio.end - 1:#x}")
        if a.irq is not None:
            where.append(f"IRQ {a.irq}")
        lines.append(f"{placed.key}: {', '.join(where)} ({type(placed.device).__name__})")
    lines.append("anything else: reads all-ones, writes ignored (an empty bus)")
    for addr, size, pio in coalesced:
        place = f"port {addr:#06x}" if pio else f"MMIO {addr:#x}"
        lines.append(
            f"{place} ({size} byte): writes batched by KVM in the coalesced ring, "
            "no exit (KVM_REGISTER_COALESCED_MMIO)"
        )
    return lines


# -- a restore ---------------------------------------------------------------


def snapshot_lines(snap: Any) -> list[str]:
    """What a snapshot (pyvmm.snapshot.format.Snapshot) holds."""
    c = snap.config
    age = time.time() - snap.created
    return [
        f"taken {age:.1f} s ago on a {snap.host.vendor} host"
        + (" that emulates guest kernel mode (PVM)" if snap.host.pvm else ""),
        f"machine: {c.memory >> 20} MiB, {c.cpus} vCPU(s), kernel {c.kernel}",
        f"state checked against state.sha256; {len(snap.devices)} devices: "
        + ", ".join(snap.devices),
    ]


def restored_vcpu_lines(state: Any, away_ns: int = 0) -> list[str]:
    """One restored vCPU (pyvmm.arch.x86_64.state.VcpuState); ``away_ns``:
    how far its TSC was moved on."""
    sizes = ", ".join(f"{name} {len(data)}" for name, data in state.structs.items())
    tsc = (
        f", the TSC moved on by {away_ns / 1e9:.3f} s at {state.tsc_khz} kHz"
        if away_ns and state.tsc_khz
        else ""
    )
    return [
        f"KVM_SET_CPUID2 with its saved {len(state.cpuid)} leaves (when it was created)",
        f"structs (bytes): {sizes}; XSAVE area {len(state.xsave)}; events {len(state.events)}",
        f"{len(state.msrs)} MSRs (KVM_GET_MSR_INDEX_LIST's), after the LAPIC{tsc}",
    ]


def clock_lines(clock_ns: int, behind_ns: int) -> list[str]:
    if not behind_ns:
        return [
            f"KVM_SET_CLOCK {clock_ns} ns, moved on by the time the snapshot spent "
            "on disk (as the TSC was), so the guest's wall clock is right",
            "KVM_KVMCLOCK_CTRL on each vCPU: the guest learns it was stopped",
        ]
    return [
        f"KVM_SET_CLOCK {clock_ns} ns: the guest's clock resumes where it stopped; "
        f"its wall clock is {behind_ns / 1e9:.0f} s behind (too far to jump safely)",
        "KVM_KVMCLOCK_CTRL on each vCPU: the guest learns it was stopped",
    ]
