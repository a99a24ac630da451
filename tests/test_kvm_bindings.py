"""The KVM bindings against the real /dev/kvm."""

from __future__ import annotations

import errno

import pytest

from pyvmm.kvm import Kvm, KvmError, ffi, lib

pytestmark = pytest.mark.usefixtures("kvm")


def test_api_version_and_capabilities() -> None:
    with Kvm() as kvm:
        assert kvm.vcpu_mmap_size >= ffi.sizeof("struct kvm_run")
        assert kvm.check_extension(lib.KVM_CAP_IRQCHIP)
        assert kvm.check_extension(lib.KVM_CAP_USER_MEMORY)
        assert kvm.check_extension(lib.KVM_CAP_MAX_VCPUS) >= 1


def test_supported_cpuid_and_msrs() -> None:
    with Kvm() as kvm:
        functions = {e.function for e in kvm.supported_cpuid()}
        assert {0, 1, 0x40000000} <= functions
        assert 0x10 in kvm.msr_index_list()  # IA32_TSC


def test_vcpu_register_round_trip() -> None:
    with Kvm() as kvm:
        vm = kvm.create_vm()
        try:
            vm.create_irqchip()
            vcpu = vm.create_vcpu(0)
            regs = vcpu.get_regs()
            regs.rbx = 0x1234_5678_9ABC_DEF0
            regs.rip = 0xFFF0
            vcpu.set_regs(regs)
            again = vcpu.get_regs()
            assert (again.rbx, again.rip) == (0x1234_5678_9ABC_DEF0, 0xFFF0)
            assert vcpu.get_mp_state() == lib.KVM_MP_STATE_RUNNABLE
            assert len(vcpu.get_lapic()) == ffi.sizeof("struct kvm_lapic_state")
            assert vcpu.set_msrs({0x174: 0x10}) == 1
            assert vcpu.get_msrs([0x174]) == {0x174: 0x10}
            events = vcpu.get_vcpu_events()
            assert events.exception.injected == 0
            vcpu.close()
            assert vcpu.fd == -1
        finally:
            vm.close()


def test_ioctl_errors_name_the_ioctl_and_errno() -> None:
    with Kvm() as kvm:
        vm = kvm.create_vm()
        try:
            first = vm.create_vcpu(0)
            with pytest.raises(KvmError) as info:
                vm.create_vcpu(0)
            assert info.value.errno == errno.EEXIST
            assert str(info.value) == "KVM_CREATE_VCPU failed: File exists (EEXIST)"
            first.close()
        finally:
            vm.close()
