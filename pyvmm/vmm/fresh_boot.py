"""Booting a freshly assembled machine: what the guest finds at its first
instruction.

With the devices placed, :func:`boot` writes the ACPI tables made from
their declarations, finishes the kernel command line (host quirks, then
the devices' words), loads the kernel, command line, initrd and zero page
(:mod:`pyvmm.boot.loader`), writes the boot GDT and page tables, and sets
each vCPU's MSRs and local APIC and the boot vCPU's registers at the 64-bit
entry point. A restored machine skips all of this.
"""

from __future__ import annotations

from pyvmm.arch.x86_64 import acpi, lapic, layout, msr, regs
from pyvmm.boot import loader
from pyvmm.boot.image import KernelImage
from pyvmm.vmm import boot_trace
from pyvmm.vmm.lifecycle import Vmm


def boot(vmm: Vmm, kernel: KernelImage, initrd: bytes | None, trace: boot_trace.BootTrace) -> None:
    config, memory, devices = vmm.config, vmm.memory, vmm.devices
    assert memory is not None and devices is not None
    fadt = devices.fadt()
    tables = acpi.build(
        layout.ACPI_TABLES_ADDR,
        nr_cpus=config.cpus,
        lapic_addr=layout.LAPIC_ADDR,
        ioapic_addr=layout.IOAPIC_ADDR,
        pm1_evt_port=fadt["pm1_evt_port"],
        pm1_cnt_port=fadt["pm1_cnt_port"],
        devices=devices.aml(),
    )
    for addr, blob in tables.blobs.items():
        memory.write(addr, blob)
    if trace:
        trace.step("write the ACPI tables (arch.x86_64.acpi)", boot_trace.acpi_lines(tables.blobs))

    cmdline = devices.cmdline(config.quirks.guest_cmdline(config.cmdline, config.cpus))
    info = loader.load(memory, kernel, cmdline, initrd, tables.rsdp_addr)
    if trace:
        trace.step(
            "load kernel, command line and initrd (boot.loader.load)", boot_trace.load_lines(info)
        )
        trace.step("fill the zero page (boot.zeropage)", boot_trace.zero_page_lines(info))
        trace.step("the E820 memory map in the zero page (boot.e820)", boot_trace.e820_lines(info))
    regs.write_boot_tables(memory)
    if trace:
        trace.step(
            "identity-mapped page tables (arch.x86_64.paging)", boot_trace.page_table_lines()
        )
        trace.step("the boot GDT (arch.x86_64.gdt)", boot_trace.gdt_lines())

    for vcpu in vmm.vcpus:
        msr.setup_msrs(vcpu)
        vcpu.set_lapic(lapic.virtual_wire(vcpu.get_lapic()))
        if trace:
            trace.step(
                f"set up vCPU {vcpu.id} (arch.x86_64.cpuid, msr, lapic)",
                boot_trace.vcpu_lines(vcpu.id, vcpu.cpuid_count, msr.boot_msrs()),
            )
    boot_cpu = vmm.vcpus[0]
    regs.setup_boot_cpu(boot_cpu, info.entry, info.zero_page)
    if trace:
        trace.step(
            "registers at entry, vCPU 0 (arch.x86_64.regs.setup_boot_cpu)",
            boot_trace.register_lines(boot_cpu.get_regs(), boot_cpu.get_sregs()),
        )
