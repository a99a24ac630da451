"""A KVM virtual machine file descriptor: memory slots, interrupt controllers, vCPUs."""

from __future__ import annotations

import os

from pyvmm.kvm.ioctl import ffi, ioctl, ioctl_val
from pyvmm.kvm.vcpu import Vcpu

__all__ = ["Vm"]


class Vm:
    """The VM file descriptor returned by KVM_CREATE_VM."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self._vcpu_mmap_size = vcpu_mmap_size

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (some answers depend on the VM)."""
        return ioctl_val(self.fd, "KVM_CHECK_EXTENSION", cap)

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back ``size`` bytes of guest RAM with host memory."""
        region = ffi.new(
            "struct kvm_userspace_memory_region *",
            {
                "slot": slot,
                "flags": flags,
                "guest_phys_addr": guest_phys_addr,
                "memory_size": size,
                "userspace_addr": userspace_addr,
            },
        )
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region)

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space Intel VMX needs for real mode."""
        ioctl_val(self.fd, "KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for VMX's unrestricted-guest identity map."""
        ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", ffi.new("__u64 *", addr))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC pair, IOAPIC and a local APIC per vCPU."""
        ioctl(self.fd, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2: in-kernel i8254 timer (ports 0x40-0x43) and port 0x61."""
        ioctl(self.fd, "KVM_CREATE_PIT2", ffi.new("struct kvm_pit_config *", {"flags": flags}))

    def set_irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive a GSI of the in-kernel PIC/IOAPIC high or low."""
        # A fresh struct per call: device threads may raise lines concurrently.
        line = ffi.new("struct kvm_irq_level *", {"irq": irq, "level": 1 if level else 0})
        ioctl(self.fd, "KVM_IRQ_LINE", line)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU, then map its ``struct kvm_run``."""
        fd = ioctl_val(self.fd, "KVM_CREATE_VCPU", vcpu_id)
        try:
            return Vcpu(fd, vcpu_id, self._vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
