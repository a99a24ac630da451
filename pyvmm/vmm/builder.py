"""Assembling a machine: KVM, the VM, guest memory, devices and vCPUs.

Two ways in, sharing every step but the last:

- :func:`build_for_boot`: read the kernel (so that a bad file fails before
  KVM is touched), assemble the machine, then boot it fresh
  (:mod:`pyvmm.vmm.fresh_boot`: ACPI tables, kernel, command line, page
  tables, registers);
- :func:`pyvmm.vmm.restore.build_from_snapshot`: assemble the same machine
  from a snapshot's configuration, with guest memory mapped from its file,
  and set every vCPU, VM and device to the saved state instead.

Order matters: the VM and its interrupt controllers, then guest RAM, then
the vCPUs (each with its CPUID), then the devices, which must all be placed
before anything that describes them to the guest is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pyvmm.arch.x86_64 import cpuid, layout, xsave
from pyvmm.boot import loader
from pyvmm.devices.bus import Bus
from pyvmm.devices.virtio.mmio import Reg, VirtioMmio
from pyvmm.errors import UserError
from pyvmm.kvm import CpuidEntry, Kvm, KvmError, lib
from pyvmm.kvm.system import API_VERSION
from pyvmm.memory import GuestMemory
from pyvmm.vmm import boot_trace, fresh_boot
from pyvmm.vmm.coalesced import CoalescedRing
from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.device_manager import (
    DeviceManager,
    PcEvents,
    add_pc_devices,
    add_virtio_devices,
)
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.exits import ExitHandler
from pyvmm.vmm.io_thread import IoThread, irqfd_pulse
from pyvmm.vmm.lifecycle import Console, Vmm

#: The KVM device node.
KVM_DEVICE = "/dev/kvm"

#: Capabilities pyvmm cannot do without.
REQUIRED_CAPS = ("IRQCHIP", "PIT2", "USER_MEMORY", "IMMEDIATE_EXIT", "SET_TSS_ADDR")


def build_for_boot(
    config: MachineConfig, console: Console, trace_out: Callable[[str], None] | None = None
) -> Vmm:
    """A machine ready to boot ``config``'s kernel; raises UserError on bad
    input, having released whatever it had made."""
    config.check()
    trace = boot_trace.BootTrace(trace_out if "boot" in config.trace else None)
    kernel = loader.load_kernel_file(config.kernel, limit=config.memory)
    if trace:
        trace.step(
            "read the kernel (boot.loader.load_kernel_file)",
            boot_trace.kernel_lines(config.kernel, kernel),
        )
    initrd = None
    if config.initrd is not None:
        initrd = loader.read_input_file(config.initrd, "initrd", limit=config.memory)
    vmm = Vmm(config, console, trace_out)
    try:
        assemble(vmm, trace)
        fresh_boot.boot(vmm, kernel, initrd, trace)
    except BaseException:
        vmm.close()
        raise
    return vmm


def assemble(
    vmm: Vmm,
    trace: boot_trace.BootTrace,
    memory_file: int | None = None,
    cpuids: list[list[CpuidEntry]] | None = None,
) -> None:
    """Everything but the guest's contents: KVM, the VM, RAM (anonymous, or
    mapped privately from ``memory_file``), vCPUs with their CPUID (made
    from what KVM supports, or ``cpuids``, one table per vCPU), devices."""
    config = vmm.config
    vmm.kvm = kvm = open_kvm(KVM_DEVICE)
    caps = {name: kvm.check_extension(getattr(lib, f"KVM_CAP_{name}")) for name in REQUIRED_CAPS}
    for name, value in caps.items():
        if not value:
            raise UserError(f"this host's KVM lacks KVM_CAP_{name}, which pyvmm needs")
    caps["MAX_VCPUS"] = kvm.check_extension(lib.KVM_CAP_MAX_VCPUS)
    caps["NR_VCPUS"] = kvm.check_extension(lib.KVM_CAP_NR_VCPUS)
    caps["SET_IDENTITY_MAP_ADDR"] = kvm.check_extension(lib.KVM_CAP_SET_IDENTITY_MAP_ADDR)
    if trace:
        trace.step(
            f"open {KVM_DEVICE} (kvm.Kvm) and check what it can do",
            boot_trace.kvm_lines(API_VERSION, kvm.vcpu_mmap_size, caps),
        )
    config.check_cpus(caps["MAX_VCPUS"] or caps["NR_VCPUS"])

    vmm.vm = vm = kvm.create_vm()
    vm.set_tss_addr(layout.TSS_ADDR)
    if caps["SET_IDENTITY_MAP_ADDR"]:
        vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
    vm.create_irqchip()
    vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)  # port 0x61 handled in the kernel too
    if trace:
        trace.step("create the VM (kvm.Vm)", boot_trace.vm_lines(vm.fd))

    try:
        vmm.memory = memory = GuestMemory(layout.ram_ranges(config.memory), memory_file)
    except OSError as e:
        raise UserError(
            f"cannot map {config.memory >> 20} MiB of guest RAM: {e.strerror or e}"
        ) from None
    memory.register(vm)
    if trace:
        trace.step(
            f"map {config.memory >> 20} MiB of guest RAM (memory.GuestMemory), "
            "KVM_SET_USER_MEMORY_REGION per slot",
            boot_trace.memory_lines(memory.slots(), memory.file_backed),
        )

    supported = kvm.supported_cpuid()
    emulation = None
    if config.quirks.pvm:
        from pyvmm.arch.x86_64.pvm_emulation import EmulationAssist

        emulation = EmulationAssist(memory, xsave.Layout.from_cpuid(supported))
        vmm.emulation = emulation
    vmm.pio, vmm.mmio = Bus("port I/O"), Bus("MMIO")
    vmm.handler = ExitHandler(vmm.pio, vmm.mmio, vmm.stop, emulation, config.debug)
    for vcpu_id in range(config.cpus):
        vcpu = vm.create_vcpu(vcpu_id)
        vmm.vcpus.append(vcpu)
        if cpuids is not None:
            vcpu.set_cpuid2(cpuids[vcpu_id])
        else:
            vcpu.set_cpuid2(cpuid.vcpu_cpuid(supported, apic_id=vcpu_id, nr_vcpus=config.cpus))
        # Other vCPUs stay in KVM's wait-for-SIPI state until the guest starts them.

    vmm.devices = DeviceManager(vmm.pio, vmm.mmio, vm.set_irq_line)
    events = PcEvents(
        reset=lambda: vmm.stop(Outcome(Ending.RESET, "guest reset")),
        poweroff=lambda: vmm.stop(Outcome(Ending.POWEROFF, "guest powered off")),
        panic=lambda: vmm.stop(Outcome(Ending.PANIC, "guest kernel panicked")),
    )
    vmm.com1 = add_pc_devices(vmm.devices, vmm.console.write, vmm.console.room, events)
    virtio_trace = vmm.trace_out if "virtio" in config.trace else None
    add_virtio_devices(vmm.devices, memory, config, virtio_trace)
    coalesced = vmm.devices.coalesced if kvm.check_extension(lib.KVM_CAP_COALESCED_PIO) else []
    for addr, size, pio in coalesced:
        vm.register_coalesced(addr, size, pio)
    if coalesced:
        vmm.ring = CoalescedRing(vmm.vcpus[0], vmm.pio, vmm.mmio)
        vmm.handler.use_ring(vmm.ring)
    wired = wire_virtio(vmm)
    if trace:
        trace.step(
            "place the devices (vmm.device_manager)",
            boot_trace.device_lines(vmm.devices, "PIC, IOAPIC, LAPIC, PIT", coalesced) + wired,
        )


def wire_virtio(vmm: Vmm) -> list[str]:
    """The I/O thread for the virtio devices: each queue's notifications by
    KVM_IOEVENTFD and each device's interrupt by KVM_IRQFD where KVM has
    them (else an MMIO exit and KVM_IRQ_LINE, on the vCPU), and each host
    descriptor (a network link) watched; returns trace lines."""
    assert vmm.vm is not None and vmm.devices is not None and vmm.kvm is not None
    devices = [p for p in vmm.devices if isinstance(p.device, VirtioMmio)]
    if not devices:
        return []
    eventfds = all(vmm.kvm.check_extension(c) for c in (lib.KVM_CAP_IOEVENTFD, lib.KVM_CAP_IRQFD))
    vmm.io_thread = io = IoThread(vmm.fail)
    lines = []
    for placed in devices:
        device = placed.device
        assert isinstance(device, VirtioMmio)
        mmio, gsi = placed.allocation.mmio, placed.allocation.irq
        assert mmio is not None and gsi is not None
        host = device.backend.host_fd()
        if host is not None:
            io.add(host, functools.partial(_host_ready, device, io, host), eventfd=False)
            device.notified = functools.partial(io.watch, host, True)
        if not eventfds:
            continue
        on_vcpu = device.backend.notify_on_vcpu
        if not on_vcpu:
            for offset, size, index in device.notify_points():
                fd = io.eventfd()
                vmm.vm.ioeventfd(fd, mmio.start + offset, size, datamatch=index)
                io.add(fd, functools.partial(_notify, device, index))
            device.uses_ioeventfd = True
        irq = io.eventfd()
        vmm.vm.irqfd(irq, gsi)
        device.edge = irqfd_pulse(irq)
        how = "an exit, served on the vCPU" if on_vcpu else "ioeventfd, served by the I/O thread"
        lines.append(
            f"{placed.key}: QueueNotify {mmio.start + Reg.QUEUE_NOTIFY:#x} by {how} "
            f"({len(device.queues)} queues), IRQ {gsi} by irqfd"
        )
    return lines


def _host_ready(device: VirtioMmio, io: IoThread, fd: int) -> None:
    with device.lock:  # ordered with a notification that watches it again
        if not device.host_ready():
            io.watch(fd, False)  # until the driver notifies a queue again


def _notify(device: VirtioMmio, index: int) -> None:
    with device.lock:
        device.notify(index)


def open_kvm(path: str) -> Kvm:
    """Open /dev/kvm, explaining the usual reasons it fails."""
    try:
        return Kvm(path)
    except FileNotFoundError:
        raise UserError(
            f"{path} does not exist: KVM is not available (load kvm_intel or kvm_amd, "
            "or enable virtualization in the firmware)"
        ) from None
    except PermissionError:
        raise UserError(
            f"no permission to open {path}: add your user to the 'kvm' group "
            "(sudo usermod -aG kvm $USER, then log in again)"
        ) from None
    except KvmError as e:
        raise UserError(f"{path} does not behave as KVM: {e}") from None
    except OSError as e:
        raise UserError(f"cannot open {path}: {e.strerror or e}") from None
