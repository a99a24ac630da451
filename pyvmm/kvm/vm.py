"""A KVM virtual machine file descriptor: memory slots, interrupt controllers, vCPUs."""

from __future__ import annotations

import os
from typing import Any

from pyvmm.kvm.ioctl import ffi, get_struct, ioctl, ioctl_val, lib, set_struct
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

    # -- saved state -----------------------------------------------------

    def get_irqchip(self, chip_id: int) -> bytes:
        """KVM_GET_IRQCHIP: one of the PICs or the I/O APIC as struct bytes."""
        return get_struct(self.fd, "KVM_GET_IRQCHIP", "struct kvm_irqchip", {"chip_id": chip_id})

    def set_irqchip(self, data: bytes) -> None:
        set_struct(self.fd, "KVM_SET_IRQCHIP", "struct kvm_irqchip", data)

    def get_pit2(self) -> bytes:
        return get_struct(self.fd, "KVM_GET_PIT2", "struct kvm_pit_state2")

    def set_pit2(self, data: bytes) -> None:
        set_struct(self.fd, "KVM_SET_PIT2", "struct kvm_pit_state2", data)

    def get_clock(self) -> tuple[int, int, int]:
        """KVM_GET_CLOCK: (kvmclock ns, flags, host CLOCK_REALTIME ns when
        the flags have KVM_CLOCK_REALTIME)."""
        data = ffi.new("struct kvm_clock_data *")
        ioctl(self.fd, "KVM_GET_CLOCK", data)
        return int(data.clock), int(data.flags), int(data.realtime)

    def set_clock(self, clock: int, realtime: int = 0) -> None:
        """KVM_SET_CLOCK. With ``realtime`` (host CLOCK_REALTIME ns when
        ``clock`` was read), KVM advances the clock by the host time since:
        the KVM_CLOCK_REALTIME flag (KVM API, 4.115)."""
        flags = lib.KVM_CLOCK_REALTIME if realtime else 0
        data = ffi.new(
            "struct kvm_clock_data *", {"clock": clock, "flags": flags, "realtime": realtime}
        )
        ioctl(self.fd, "KVM_SET_CLOCK", data)

    # -- dirty pages -----------------------------------------------------

    def get_dirty_log(self, slot: int, bitmap: Any) -> None:
        """KVM_GET_DIRTY_LOG into ``bitmap`` (a cffi buffer, one bit per page)."""
        log = ffi.new("struct kvm_dirty_log *", {"slot": slot, "dirty_bitmap": bitmap})
        ioctl(self.fd, "KVM_GET_DIRTY_LOG", log)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap: Any) -> None:
        """KVM_CLEAR_DIRTY_LOG (with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 on)."""
        log = ffi.new(
            "struct kvm_clear_dirty_log *",
            {
                "slot": slot,
                "first_page": first_page,
                "num_pages": num_pages,
                "dirty_bitmap": bitmap,
            },
        )
        ioctl(self.fd, "KVM_CLEAR_DIRTY_LOG", log)

    def enable_cap(self, cap: int, arg0: int = 0) -> None:
        ioctl(
            self.fd,
            "KVM_ENABLE_CAP",
            ffi.new("struct kvm_enable_cap *", {"cap": cap, "args": [arg0]}),
        )

    # -- notifications without exits ---------------------------------------

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        size: int,
        pio: bool = False,
        deassign: bool = False,
        datamatch: int | None = None,
    ) -> None:
        """KVM_IOEVENTFD: a guest write of ``size`` bytes at ``addr`` (of the
        value ``datamatch``, if given) signals eventfd ``fd`` inside KVM
        instead of exiting to pyvmm."""
        flags = (lib.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (
            lib.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0
        )
        init = {"addr": addr, "len": size, "fd": fd, "flags": flags}
        if datamatch is not None:
            init["flags"] |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
            init["datamatch"] = datamatch
        ioctl(self.fd, "KVM_IOEVENTFD", ffi.new("struct kvm_ioeventfd *", init))

    def irqfd(self, fd: int, gsi: int, resample_fd: int = -1, deassign: bool = False) -> None:
        """KVM_IRQFD: signalling eventfd ``fd`` raises GSI ``gsi`` inside KVM.
        With ``resample_fd`` the line is level-triggered: KVM lowers it when
        the guest acknowledges it and signals ``resample_fd``."""
        flags = lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        init = {"fd": fd, "gsi": gsi, "flags": flags}
        if resample_fd >= 0 and not deassign:
            init["flags"] |= lib.KVM_IRQFD_FLAG_RESAMPLE
            init["resamplefd"] = resample_fd
        ioctl(self.fd, "KVM_IRQFD", ffi.new("struct kvm_irqfd *", init))

    def register_coalesced(self, addr: int, size: int, pio: bool) -> None:
        """KVM_REGISTER_COALESCED_MMIO: writes to [addr, addr+size) (ports,
        with ``pio``) go to the coalesced ring instead of exiting."""
        zone = ffi.new("struct kvm_coalesced_mmio_zone *", {"addr": addr, "size": size})
        # ``pio`` shares a union with padding, which cffi cannot name: it is
        # the u32 after ``size`` (struct kvm_coalesced_mmio_zone in <linux/kvm.h>).
        ffi.buffer(zone)[12:16] = int(pio).to_bytes(4, "little")
        ioctl(self.fd, "KVM_REGISTER_COALESCED_MMIO", zone)

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
