"""The smallest guest: a few instructions that print "hello" through an
``out`` to port 0x3f8, run with pyvmm's KVM bindings and nothing else (no
kernel, no device models: every port access comes straight back here).

    python examples/hello.py
"""

import sys

from pyvmm.arch.x86_64 import cpuid, regs
from pyvmm.kvm import Kvm, lib
from pyvmm.memory import GuestMemory, Range

CODE = 0x100000  # guest-physical (and, identity-mapped, virtual) address of the code
GUEST = (
    b"\x48\x8d\x35\x0c\x00\x00\x00"  # lea rsi, [rip + 12]: the message, after hlt
    b"\xb9\x06\x00\x00\x00"  # mov ecx, 6: its length
    b"\x66\xba\xf8\x03"  # mov dx, 0x3f8: COM1's data port
    b"\xf3\x6e"  # rep outsb: write [rsi] to port dx, ecx times
    b"\xf4"  # hlt
    b"hello\n"
)


def main() -> None:
    with Kvm() as kvm, GuestMemory([Range(0, 4 << 20)]) as memory:
        vm = kvm.create_vm()  # KVM_CREATE_VM: no irqchip, so HLT exits to us too
        memory.register(vm)  # the 4 MiB of RAM become memory slot 0
        regs.write_boot_tables(memory)  # a GDT and page tables for 64-bit mode
        memory.write(CODE, GUEST)
        vcpu = vm.create_vcpu(0)  # KVM_CREATE_VCPU, and its kvm_run page mapped
        vcpu.set_cpuid2(cpuid.vcpu_cpuid(kvm.supported_cpuid(), apic_id=0, nr_vcpus=1))
        regs.setup_boot_cpu(vcpu, entry=CODE, zero_page=0)  # long mode, RIP = CODE
        printed = b""
        while True:
            reason = vcpu.run()  # KVM_RUN: the guest runs until it needs us
            if reason == lib.KVM_EXIT_IO:
                io = vcpu.run_struct.io  # which port, which way, how many bytes
                start = io.data_offset  # the bytes are in the kvm_run page
                data = bytes(vcpu.run_page[start : start + io.size * io.count])
                print(f"exit: out to port {io.port:#x}, {io.count} byte(s): {data!r}")
                printed += data
            elif reason == lib.KVM_EXIT_HLT:
                print(f"exit: hlt. The guest printed: {printed.decode()}", end="")
                break
            else:
                sys.exit(f"unexpected exit {reason}")
        vcpu.close()
        vm.close()


if __name__ == "__main__":
    main()
