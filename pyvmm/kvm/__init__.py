"""Thin bindings to the Linux KVM API. No policy lives here: the machine
decides what to create and how to set it up.

Kvm (/dev/kvm) -> Vm (KVM_CREATE_VM) -> Vcpu (KVM_CREATE_VCPU).
"""

from pyvmm.kvm.ioctl import KvmError, ffi, lib
from pyvmm.kvm.system import CpuidEntry, Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

__all__ = ["CpuidEntry", "Kvm", "KvmError", "Vcpu", "Vm", "ffi", "lib"]
