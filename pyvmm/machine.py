"""A virtual machine: wiring KVM, memory, the loaded kernel and devices, and
the run loop that hands each VM exit to a device model.

Boot order, as :meth:`Machine.start` performs it:

1. parse the kernel file (so a bad file fails before KVM is touched);
2. open /dev/kvm, create the VM, its TSS area, in-kernel irqchip and PIT;
3. map guest RAM and register it as memory slots;
4. load kernel, command line, initrd and zero page (``pyvmm.boot.loader``);
5. create the vCPUs: CPUID, MSRs, LAPIC, and long-mode registers on the BSP;
6. attach devices to the port-I/O bus; start one thread per vCPU.

Each vCPU thread loops on KVM_RUN. Port I/O and MMIO exits go to the buses;
anything that ends the guest (reset, triple fault, an error KVM reports)
records a :class:`VmExit` and stops every vCPU.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyvmm import console, trace
from pyvmm.arch.x86_64 import acpi, cpuid, lapic, msr, pvm, regs, xsave
from pyvmm.boot import layout, loader
from pyvmm.boot.loader import BootInfo
from pyvmm.devices import acpi_pm, cmos, i8042, pvpanic, serial
from pyvmm.devices.bus import Bus
from pyvmm.errors import UserError
from pyvmm.kvm import Kvm, KvmError, Vcpu, Vm, lib
from pyvmm.kvm.system import API_VERSION
from pyvmm.memory import GuestMemory

MiB = layout.MiB

#: Smallest --memory accepted: the first megabyte plus room for a kernel.
MIN_MEMORY = 2 * MiB

#: Most vCPUs pyvmm describes: the MADT's processor local APIC entries hold
#: 8-bit xAPIC IDs, and ID 0xFF means "all processors" (ACPI 6.5, 5.2.12.2).
MAX_CPUS = 255

#: The KVM device node.
KVM_DEVICE = "/dev/kvm"

#: How often the main thread checks whether every vCPU is halted for good.
IDLE_CHECK_SECONDS = 0.5

_EXIT_IO, _EXIT_MMIO, _EXIT_INTR = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_INTR

#: Signals a vCPU thread leaves to the main thread.
_MAIN_THREAD_SIGNALS = {
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGPIPE,
    signal.SIGCHLD,
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGUSR1,
    signal.SIGUSR2,
}


class ExitKind(enum.Enum):
    """How a VM ended, with the pyvmm exit status for each (see README)."""

    RESET = ("guest reset", 0)
    POWEROFF = ("guest powered off", 0)
    VMM_ERROR = ("pyvmm failed", 1)
    HALTED = ("guest halted with interrupts disabled", 3)
    TRIPLE_FAULT = ("triple fault", 4)
    PANIC = ("guest kernel panicked", 7)
    EMULATION_FAILURE = ("KVM could not emulate an instruction", 5)
    INTERNAL_ERROR = ("KVM internal error", 6)
    #: Ctrl-A x on the console.
    QUIT = ("quit from the console", 0)
    #: Signals: the usual 128 + signal number.
    HANGUP = ("hung up (SIGHUP)", 128 + signal.SIGHUP)
    INTERRUPTED = ("interrupted", 128 + signal.SIGINT)
    TERMINATED = ("terminated (SIGTERM)", 128 + signal.SIGTERM)

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def summary(self) -> str:
        return self.value[0]


@dataclass(frozen=True)
class VmExit:
    kind: ExitKind
    message: str
    #: Extra lines for --debug: a register dump, a traceback.
    detail: str = ""

    @property
    def status(self) -> int:
        return self.kind.status


@dataclass
class MachineConfig:
    kernel: str | os.PathLike[str]
    initrd: str | os.PathLike[str] | None = None
    cmdline: str = ""
    memory: int = 512 * MiB
    cpus: int = 1
    #: Add register dumps to failure reports.
    debug: bool = False
    #: What to trace on standard error: "boot", "exits" (see pyvmm.trace).
    trace: tuple[str, ...] = ()
    #: Count exits by reason and place, for :meth:`Machine.exit_stats`.
    stats: bool = False


def _stdout_writer(data: bytes) -> None:
    console.write_all(1, data)


def _stderr_writer(text: str) -> None:
    console.write_all(2, text.encode())


@dataclass
class _VcpuState:
    """What the run loop keeps per vCPU besides the KVM object."""

    vcpu: Vcpu
    thread: threading.Thread | None = None
    #: Exits handled so far (not counting kicks).
    exits: int = 0
    #: ``exits`` at the main thread's last idle check.
    seen_exits: int = -1
    #: Idle-check round the vCPU has been asked to examine itself for (0: none).
    probe_round: int = 0
    #: Last round in which it found itself parked for good: halted with IF
    #: clear, or an AP never started. With --debug, its registers then.
    parked_round: int = -1
    parked_detail: str = ""


class Machine:
    """One guest. ``start()`` boots it in background threads; ``wait()`` blocks
    until it ends; ``close()`` releases every descriptor and mapping."""

    def __init__(
        self,
        config: MachineConfig,
        console: Callable[[bytes], None] = _stdout_writer,
        trace_out: Callable[[str], None] = _stderr_writer,
    ) -> None:
        self.config = config
        self._console = console
        self._boot_trace = trace.BootTrace(trace_out if "boot" in config.trace else None)
        self._observer: trace.ExitObserver | None = None
        if "exits" in config.trace or config.stats:
            self._observer = trace.ExitObserver(
                log=trace_out if "exits" in config.trace else None, count=config.stats
            )
        self.kvm: Kvm | None = None
        self.vm: Vm | None = None
        self.memory: GuestMemory | None = None
        self.boot: BootInfo | None = None
        self.pio = Bus("port I/O")
        self.mmio = Bus("MMIO")
        self.com1: serial.Serial16550 | None = None
        self._vcpus: list[_VcpuState] = []
        self._result: VmExit | None = None
        self._result_lock = threading.Lock()
        self._stopped = threading.Event()
        self._kick_signal = 0
        self._probe_round = 0
        self._monitor: threading.Thread | None = None
        self._assist: pvm.EmulationAssist | None = None

    # -- building --------------------------------------------------------

    def _check_config(self) -> None:
        c = self.config
        if c.memory < MIN_MEMORY or c.memory % 4096:
            raise UserError(
                f"--memory must be at least {MIN_MEMORY // MiB} MiB and a multiple of 4 KiB"
            )
        if c.cpus < 1:
            raise UserError("--cpus must be at least 1")

    def build(self) -> None:
        """Check the configuration, read the kernel and build the VM without
        running it. Raises UserError on bad input, having released whatever
        it had made."""
        if self.vm is not None:
            return
        self._check_config()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Build the VM (unless :meth:`build` already did) and start its vCPUs."""
        self.build()
        self._start_threads()

    def _build(self) -> None:
        c = self.config
        t = self._boot_trace
        kernel = loader.load_kernel_file(c.kernel, limit=c.memory)
        if t:
            t.step(
                "read the kernel (boot.loader.load_kernel_file)",
                trace.kernel_lines(c.kernel, kernel),
            )
        initrd = None
        if c.initrd is not None:
            initrd = loader.read_input_file(c.initrd, "initrd", limit=c.memory)

        self.kvm = kvm = _open_kvm(KVM_DEVICE)
        caps = {}
        for name in ("IRQCHIP", "PIT2", "USER_MEMORY", "IMMEDIATE_EXIT", "SET_TSS_ADDR"):
            caps[name] = kvm.check_extension(getattr(lib, f"KVM_CAP_{name}"))
            if not caps[name]:
                raise UserError(f"this host's KVM lacks KVM_CAP_{name}, which pyvmm needs")
        caps["MAX_VCPUS"] = kvm.check_extension(lib.KVM_CAP_MAX_VCPUS)
        caps["NR_VCPUS"] = kvm.check_extension(lib.KVM_CAP_NR_VCPUS)
        caps["SET_IDENTITY_MAP_ADDR"] = kvm.check_extension(lib.KVM_CAP_SET_IDENTITY_MAP_ADDR)
        if t:
            t.step(
                f"open {KVM_DEVICE} (kvm.Kvm) and check what it can do",
                trace.kvm_lines(API_VERSION, kvm.vcpu_mmap_size, caps),
            )
        max_vcpus = caps["MAX_VCPUS"] or caps["NR_VCPUS"]
        if c.cpus > max_vcpus:
            raise UserError(f"--cpus {c.cpus} is more than KVM allows here ({max_vcpus})")
        if c.cpus > MAX_CPUS:
            raise UserError(f"--cpus {c.cpus} is more than pyvmm supports ({MAX_CPUS})")

        self.vm = vm = kvm.create_vm()
        vm.set_tss_addr(layout.TSS_ADDR)
        if caps["SET_IDENTITY_MAP_ADDR"]:
            vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)  # port 0x61 handled in the kernel too
        if t:
            t.step("create the VM (kvm.Vm)", [
                f"KVM_CREATE_VM -> VM descriptor {vm.fd}",
                f"KVM_SET_TSS_ADDR {layout.TSS_ADDR:#x}, KVM_SET_IDENTITY_MAP_ADDR "
                f"{layout.IDENTITY_MAP_ADDR:#x} (pages Intel VMX needs, in the MMIO gap)",
                "KVM_CREATE_IRQCHIP: PIC pair, IOAPIC and a LAPIC per vCPU, in the kernel",
                "KVM_CREATE_PIT2: the 8254 timer, in the kernel",
            ])  # fmt: skip

        try:
            self.memory = memory = GuestMemory(c.memory)
        except OSError as e:
            raise UserError(
                f"cannot map {c.memory >> 20} MiB of guest RAM: {e.strerror or e}"
            ) from None
        memory.register(vm)
        if t:
            t.step(
                f"map {c.memory >> 20} MiB of guest RAM (memory.GuestMemory), "
                "KVM_SET_USER_MEMORY_REGION per slot",
                trace.memory_lines(memory.slots()),
            )
        cmdline = c.cmdline
        if pvm.host_is_pvm():
            # Guest kernel mode is emulated here: steer the kernel clear of what
            # the emulator cannot do, and carry out what it refuses anyway.
            cmdline = pvm.guest_cmdline(cmdline)
            self._assist = pvm.EmulationAssist(
                memory, xsave.Layout.from_cpuid(kvm.supported_cpuid())
            )
        tables = acpi.build(
            layout.ACPI_TABLES_ADDR,
            nr_cpus=c.cpus,
            lapic_addr=layout.LAPIC_ADDR,
            ioapic_addr=layout.IOAPIC_ADDR,
            pm1_evt_port=acpi_pm.EVT_PORT,
            pm1_cnt_port=acpi_pm.CNT_PORT,
            pvpanic_port=pvpanic.PORT,
        )
        for addr, blob in tables.blobs.items():
            memory.write(addr, blob)
        if t:
            t.step("write the ACPI tables (arch.x86_64.acpi)", trace.acpi_lines(tables.blobs))
        self.boot = boot = loader.load(memory, kernel, cmdline, initrd, tables.rsdp_addr)
        if t:
            t.step(
                "load kernel, command line and initrd (boot.loader.load)", trace.load_lines(boot)
            )
            t.step("fill the zero page (boot.zeropage)", trace.zero_page_lines(boot))
            t.step("the E820 memory map in the zero page (boot.e820)", trace.e820_lines(boot))
        regs.write_boot_tables(memory)
        if t:
            t.step("identity-mapped page tables (arch.x86_64.paging)", trace.page_table_lines())
            t.step("the boot GDT (arch.x86_64.gdt)", trace.gdt_lines())

        supported = kvm.supported_cpuid()
        for vcpu_id in range(c.cpus):
            vcpu = vm.create_vcpu(vcpu_id)
            self._vcpus.append(_VcpuState(vcpu))
            leaves = cpuid.vcpu_cpuid(supported, apic_id=vcpu_id, nr_vcpus=c.cpus)
            vcpu.set_cpuid2(leaves)
            msr.setup_msrs(vcpu)
            vcpu.set_lapic(lapic.virtual_wire(vcpu.get_lapic()))
            if t:
                t.step(
                    f"create vCPU {vcpu_id} (KVM_CREATE_VCPU; arch.x86_64.cpuid, msr, lapic)",
                    trace.vcpu_lines(vcpu_id, len(leaves), msr.boot_msrs()),
                )
            if vcpu_id == 0:
                regs.setup_boot_cpu(vcpu, boot.entry, boot.zero_page)
                if t:
                    t.step(
                        "registers at entry, vCPU 0 (arch.x86_64.regs.setup_boot_cpu)",
                        trace.register_lines(vcpu.get_regs(), vcpu.get_sregs()),
                    )
            # Other vCPUs stay in KVM's wait-for-SIPI state until the guest starts them.

        self._add_devices()
        if t:
            t.step(
                "attach devices to the port-I/O bus (devices/)",
                trace.device_lines(self.pio.ranges(), "PIC, IOAPIC, LAPIC, PIT"),
            )

    def _add_devices(self) -> None:
        vm = self.vm
        assert vm is not None
        self.com1 = add_legacy_devices(self.pio, self._console, vm.set_irq_line, self.stop)
        if self._observer is not None:
            self._observer.port_owner = self._port_owner
            if self._assist is not None:
                self._observer.emulated = self._assist.last_handled

    def _port_owner(self, port: int, size: int) -> str:
        """Which device model answers a port, for traces (KVM's own are not on the bus)."""
        hit = self.pio.find(port, size)
        return type(hit[0]).__name__ if hit is not None else "no device model"

    # -- running ---------------------------------------------------------

    def _start_threads(self) -> None:
        self._kick_signal = lib.pyvmm_install_kick_handler()
        if self._kick_signal < 0:
            raise OSError(-self._kick_signal, "cannot install the vCPU kick signal handler")
        for state in self._vcpus:
            state.thread = threading.Thread(
                target=self._vcpu_thread, args=(state,), name=f"vcpu{state.vcpu.id}", daemon=True
            )
        for state in self._vcpus:
            assert state.thread is not None
            state.thread.start()
        self._monitor = threading.Thread(target=self._watch_idle, name="idle-monitor", daemon=True)
        self._monitor.start()

    def wait(self, timeout: float | None = None) -> VmExit | None:
        """Block until the guest ends (or ``timeout`` passes: then None)."""
        if not self._stopped.wait(timeout):
            return None
        self._join_threads()
        return self._result

    def _watch_idle(self) -> None:
        """Monitor thread: periodically look for a guest that can never run again."""
        while not self._stopped.wait(IDLE_CHECK_SECONDS):
            self._probe_idle_vcpus()

    def run(self) -> VmExit:
        """Boot, run to the end and release everything."""
        try:
            self.start()
            try:
                result = self.wait()
            except KeyboardInterrupt:
                self.stop(VmExit(ExitKind.INTERRUPTED, "interrupted"))
                result = self.wait()
            assert result is not None
            return result
        finally:
            self.close()

    def exit_stats(self) -> str | None:
        """With ``stats``: a table of the exits so far by reason and port or
        address, with the time spent handling them."""
        if self._observer is None or not self._observer.count:
            return None
        return self._observer.table()

    def stop(self, result: VmExit) -> None:
        """End the guest with ``result`` (the first reason given wins)."""
        with self._result_lock:
            if self._result is None:
                self._result = result
        self._stopped.set()
        for state in self._vcpus:
            self._kick(state)

    def _kick(self, state: _VcpuState) -> None:
        """Make the vCPU's KVM_RUN return now, or as soon as it is entered."""
        if state.vcpu.fd < 0:
            return
        state.vcpu.run_struct.immediate_exit = 1
        thread = state.thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may have just finished
                signal.pthread_kill(thread.ident, self._kick_signal)

    def _probe_idle_vcpus(self) -> None:
        """Ask vCPUs that have not exited lately whether they are parked for
        good. When every vCPU was parked in the last round and none has
        exited since, nothing can ever wake the guest again: end it."""
        last = self._probe_round
        if last and all(s.parked_round == last and s.exits == s.seen_exits for s in self._vcpus):
            detail = self._vcpus[0].parked_detail
            self.stop(VmExit(ExitKind.HALTED, "guest halted with interrupts disabled", detail))
            return
        self._probe_round += 1
        for state in self._vcpus:
            if state.exits == state.seen_exits:
                state.probe_round = self._probe_round
                self._kick(state)
            state.seen_exits = state.exits

    def _vcpu_thread(self, state: _VcpuState) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
        try:
            self._run_vcpu(state)
        except Exception as e:
            self.stop(
                VmExit(
                    ExitKind.VMM_ERROR,
                    f"vCPU {state.vcpu.id}: {type(e).__name__}: {e}",
                    traceback.format_exc(),
                )
            )

    def _run_vcpu(self, state: _VcpuState) -> None:
        """KVM_RUN, hand the exit to its handler, again, until the VM stops.
        With --trace exits or --stats each exit is also timed and recorded."""
        vcpu = state.vcpu
        stopped = self._stopped
        dispatch = self._dispatch
        observer = self._observer
        if observer is None:
            while not stopped.is_set():
                dispatch(state, vcpu.run())
            return
        clock = time.perf_counter_ns
        while not stopped.is_set():
            reason = vcpu.run()
            start = clock()
            dispatch(state, reason)
            observer.record(vcpu.id, reason, vcpu.run_struct, vcpu.run_page, clock() - start)

    def _dispatch(self, state: _VcpuState, reason: int) -> None:
        vcpu = state.vcpu
        if reason == _EXIT_IO:
            state.exits += 1
            self._handle_io(vcpu)
        elif reason == _EXIT_MMIO:
            state.exits += 1
            mmio_access(self.mmio, vcpu.run_struct.mmio)
        elif reason == _EXIT_INTR:
            vcpu.run_struct.immediate_exit = 0
            probe, state.probe_round = state.probe_round, 0
            if probe and not self._stopped.is_set():
                self._check_parked(state, probe)
        else:
            state.exits += 1
            self._handle_other_exit(state, reason)

    def _handle_io(self, vcpu: Vcpu) -> None:
        io = vcpu.run_struct.io
        port_io(
            self.pio,
            io.direction == lib.KVM_EXIT_IO_OUT,
            io.port,
            io.size,
            io.count,
            vcpu.run_page,
            io.data_offset,
        )

    def _check_parked(self, state: _VcpuState, probe_round: int) -> None:
        """Runs on the vCPU's own thread after a probe kick."""
        vcpu = state.vcpu
        mp_state = vcpu.get_mp_state()
        if mp_state == lib.KVM_MP_STATE_HALTED:
            # Only an interrupt could wake it, and IF=0 masks them (pyvmm sends no NMIs).
            parked = not vcpu.get_regs().rflags & regs.RFLAGS_IF
        else:
            # An AP the guest never started can only be woken by a running vCPU.
            parked = mp_state == lib.KVM_MP_STATE_UNINITIALIZED
        if parked:
            if self.config.debug:
                state.parked_detail = regs.format_registers(vcpu.get_regs(), vcpu.get_sregs())
            state.parked_round = probe_round

    def _handle_other_exit(self, state: _VcpuState, reason: int) -> None:
        vcpu = state.vcpu
        run = vcpu.run_struct
        if reason == lib.KVM_EXIT_HLT:
            self.stop(self._failure(state, ExitKind.HALTED, "guest halted"))
        elif reason == lib.KVM_EXIT_SHUTDOWN:
            self.stop(self._failure(state, ExitKind.TRIPLE_FAULT, "guest triple fault"))
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            why = run.fail_entry.hardware_entry_failure_reason
            self.stop(
                self._failure(
                    state,
                    ExitKind.INTERNAL_ERROR,
                    f"KVM could not enter the guest (reason {why:#x})",
                )
            )
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            if internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION:
                self._emulation_failure(state)
            else:
                words = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
                what = f"KVM internal error {internal.suberror} (data: {words or 'none'})"
                self.stop(self._failure(state, ExitKind.INTERNAL_ERROR, what))
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            event = run.system_event.type
            if event == lib.KVM_SYSTEM_EVENT_RESET:
                self.stop(VmExit(ExitKind.RESET, "guest reset"))
            elif event == lib.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.stop(VmExit(ExitKind.POWEROFF, "guest powered off"))
            else:
                self.stop(self._failure(state, ExitKind.INTERNAL_ERROR, f"system event {event}"))
        else:
            self.stop(self._failure(state, ExitKind.INTERNAL_ERROR, f"unexpected VM exit {reason}"))

    def _emulation_failure(self, state: _VcpuState) -> None:
        """KVM could not emulate an instruction. Where guest kernel mode is
        emulated (PVM) pyvmm may resolve it and the vCPU just runs on."""
        vcpu = state.vcpu
        if self._assist is not None:
            unhandled = self._assist.handle(vcpu)
            if unhandled is None:
                return
            what = f"KVM could not emulate an {unhandled}"
        else:
            insn = vcpu.emulation_failure_insn()
            shown = insn.hex(" ") if insn else "bytes not reported"
            what = (
                f"KVM could not emulate the instruction at rip {vcpu.get_regs().rip:#x} ({shown})"
            )
        self.stop(self._failure(state, ExitKind.EMULATION_FAILURE, what))

    def _failure(self, state: _VcpuState, kind: ExitKind, message: str) -> VmExit:
        """A VmExit for a guest failure; with --debug it carries the registers."""
        detail = ""
        if self.config.debug:
            try:
                vcpu = state.vcpu
                detail = regs.format_registers(vcpu.get_regs(), vcpu.get_sregs())
            except KvmError as e:
                detail = f"(registers unavailable: {e})"
        return VmExit(kind, f"vCPU {state.vcpu.id}: {message}", detail)

    # -- teardown --------------------------------------------------------

    def _join_threads(self) -> None:
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
        for state in self._vcpus:
            if state.thread is not None and state.thread is not threading.current_thread():
                while state.thread.is_alive():
                    self._kick(state)
                    state.thread.join(0.1)

    def close(self) -> None:
        """Stop the vCPUs and release KVM descriptors and guest memory, in that order."""
        if self._vcpus and any(s.thread is not None and s.thread.is_alive() for s in self._vcpus):
            self.stop(VmExit(ExitKind.INTERRUPTED, "machine closed"))
            self._join_threads()
        for state in self._vcpus:
            state.vcpu.close()
        self._vcpus.clear()
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_legacy_devices(
    pio: Bus,
    console_out: Callable[[bytes], None],
    set_irq_line: Callable[[int, bool], None],
    stop: Callable[[VmExit], None],
) -> serial.Serial16550:
    """Put the PC devices pyvmm models on the port-I/O bus; returns COM1.
    ``stop`` ends the VM (reset, power-off, panic)."""
    com1 = serial.Serial16550(console_out, irq=lambda level: set_irq_line(serial.COM1_IRQ, level))
    pio.insert(serial.COM1_PORT, serial.PORT_COUNT, com1)
    pio.insert(
        i8042.DATA_PORT,
        i8042.PORT_SPAN,
        i8042.I8042(on_reset=lambda: stop(VmExit(ExitKind.RESET, "guest reset"))),
    )
    pio.insert(cmos.INDEX_PORT, cmos.PORT_COUNT, cmos.CmosRtc())
    pio.insert(
        pvpanic.PORT,
        pvpanic.PORT_COUNT,
        pvpanic.PvPanic(on_panic=lambda: stop(VmExit(ExitKind.PANIC, "guest kernel panicked"))),
    )
    pio.insert(
        acpi_pm.EVT_PORT,
        acpi_pm.PORT_COUNT,
        acpi_pm.AcpiPm(on_poweroff=lambda: stop(VmExit(ExitKind.POWEROFF, "guest powered off"))),
    )
    return com1


def port_io(
    bus: Bus, out: bool, port: int, size: int, count: int, page: memoryview, offset: int
) -> None:
    """Carry out a port I/O exit: ``count`` accesses of ``size`` bytes (more
    than one for ``rep outs``/``rep ins``), their data in ``page`` (the
    vCPU's kvm_run mapping) from ``offset``."""
    end = offset + size * count
    if not 0 <= offset <= end <= len(page):
        raise RuntimeError(f"KVM put port I/O data outside kvm_run ({offset:#x}+{end - offset})")
    if count == 1:  # the common case: one in or out
        if out:
            bus.write(port, bytes(page[offset:end]))
        else:
            page[offset:end] = bus.read(port, size)
        return
    if out:
        for i in range(offset, end, size):
            bus.write(port, bytes(page[i : i + size]))
    else:
        for i in range(offset, end, size):
            page[i : i + size] = bus.read(port, size)


def mmio_access(bus: Bus, mmio: Any) -> None:
    """Carry out an MMIO exit described by kvm_run's ``mmio`` member; its
    data array holds at most 8 bytes, whatever length KVM reports."""
    length = min(mmio.len, len(mmio.data))
    if mmio.is_write:
        bus.write(mmio.phys_addr, bytes(mmio.data[0:length]))
    else:
        data = bus.read(mmio.phys_addr, length)
        for i in range(length):
            mmio.data[i] = data[i]


def _open_kvm(path: str) -> Kvm:
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
