"""A built machine and its life: start, pause, resume, wait, stop, close.

A :class:`Vmm` owns every descriptor and mapping of one guest (KVM, the VM,
guest RAM, vCPUs, devices) and its threads: one :class:`VcpuRunner` per
vCPU and an idle watch. :mod:`pyvmm.vmm.builder` fills it in; whatever way
it ends, :meth:`Vmm.close` gives everything back, and may be called from any
thread, any number of times.

Ending is one-way: the first :class:`Outcome` given to :meth:`Vmm.stop`
(the guest powered off, a signal, a failure) is how the VM ended. Pausing
is not: :meth:`Vmm.pause` returns once every vCPU is out of ``KVM_RUN`` and
parked, and :meth:`Vmm.resume` lets them go on, as if nothing happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvmm.arch.x86_64 import regs as x86_regs
from pyvmm.devices.bus import Bus
from pyvmm.devices.serial import Serial16550
from pyvmm.kvm import Kvm, Vcpu, Vm, lib
from pyvmm.memory import GuestMemory
from pyvmm.vmm.coalesced import INTERVAL as COALESCED_INTERVAL
from pyvmm.vmm.coalesced import CoalescedRing
from pyvmm.vmm.config import MachineConfig
from pyvmm.vmm.device_manager import DeviceManager
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.exit_log import ExitLog
from pyvmm.vmm.exits import ExitHandler
from pyvmm.vmm.io_thread import IoThread
from pyvmm.vmm.vcpu import VcpuRunner, VcpuStopped

#: How often the idle watch asks whether every vCPU is parked for good.
IDLE_CHECK_SECONDS = 0.5
#: How long a vCPU may take to answer a request before the caller gives up.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Console:
    """Where the UART's output goes: ``write`` takes the bytes the guest
    transmits and never blocks; ``room`` says how many more it can take now."""

    write: Callable[[bytes], None]
    room: Callable[[], int]


def _unbounded() -> int:
    return 1 << 30


def stdout_console() -> Console:
    """Output straight to standard output (tests and examples)."""
    import os

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]

    return Console(write, _unbounded)


class Vmm:
    """One guest machine. Built by :mod:`pyvmm.vmm.builder`."""

    def __init__(
        self,
        config: MachineConfig,
        console: Console,
        trace_out: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.console = console
        #: Where --trace writes (standard error on the command line).
        self.trace_out = trace_out
        self.kvm: Kvm | None = None
        self.vm: Vm | None = None
        self.memory: GuestMemory | None = None
        self.pio = Bus("port I/O")
        self.mmio = Bus("MMIO")
        self.devices: DeviceManager | None = None
        self.com1: Serial16550 | None = None
        self.vcpus: list[Vcpu] = []
        self.handler: ExitHandler | None = None
        #: Writes KVM batched, when any device allows it (the UART's THR).
        self.ring: CoalescedRing | None = None
        #: What completes instructions KVM cannot emulate (PVM hosts).
        self.emulation: Any = None
        #: After a restore: how far (ns) the guest's wall clock is behind.
        self.clock_behind_ns = 0
        #: After a restore: the memory file guest RAM is mapped from.
        self.memory_file: Path | None = None
        #: Serves virtio queues notified by ioeventfd (none without virtio).
        self.io_thread: IoThread | None = None
        self.exit_log: ExitLog | None = None
        if (trace_out is not None and "exits" in config.trace) or config.stats:
            self.exit_log = ExitLog(
                log=trace_out if "exits" in config.trace else None, count=config.stats
            )
        self._runners: list[VcpuRunner] = []
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._ended = threading.Event()
        self._paused = False
        self._closed = False
        self._idle: threading.Thread | None = None
        self._drainer: threading.Thread | None = None

    # -- running ---------------------------------------------------------

    def start(self) -> None:
        """Start every vCPU and the idle watch."""
        assert self.handler is not None and not self._runners
        kick = lib.pyvmm_install_kick_handler()
        if kick < 0:
            raise OSError(-kick, "cannot install the vCPU kick signal handler")
        if self.exit_log is not None:
            self.exit_log.pio, self.exit_log.mmio = self.pio, self.mmio
        self._runners = [
            VcpuRunner(vcpu, self.handler, self.stop, kick, self.exit_log) for vcpu in self.vcpus
        ]
        for runner in self._runners:
            runner.start()
        if self.io_thread is not None:
            self.io_thread.start()
        self._idle = threading.Thread(target=self._watch_idle, name="pyvmm-idle", daemon=True)
        self._idle.start()
        if self.ring is not None:
            self._drainer = threading.Thread(target=self._drain, name="pyvmm-ring", daemon=True)
            self._drainer.start()

    @property
    def outcome(self) -> Outcome | None:
        """How the VM ended, or None while it has not."""
        return self._outcome

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Block until the VM ends (or ``timeout`` passes: then None)."""
        if not self._ended.wait(timeout):
            return None
        self._join()
        return self._outcome

    def stop(self, outcome: Outcome) -> None:
        """End the VM with ``outcome`` (the first one given wins)."""
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome
        self._ended.set()
        for runner in self._runners:
            runner.stop()

    def fail(self, error: BaseException) -> None:
        """A pyvmm thread other than a vCPU's met an error it did not expect."""
        self.stop(Outcome(Ending.VMM_ERROR, f"I/O thread: {type(error).__name__}: {error}"))

    def halt(self) -> None:
        """Stop the vCPUs if they run and wait for them, keeping devices and
        descriptors: what feeds the devices from other threads (console
        input) is stopped after this and before :meth:`close`."""
        if self._runners:
            self.stop(Outcome(Ending.INTERRUPTED, "machine closed"))
            self._join()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def pause(self, timeout: float = REQUEST_TIMEOUT) -> None:
        """Return once every vCPU is out of KVM_RUN and parked (or has stopped)."""
        self._paused = True
        for runner in self._runners:
            runner.pause()
        for runner in self._runners:
            if not runner.wait_paused(timeout):
                raise TimeoutError(f"vCPU {runner.vcpu.id} did not pause in {timeout} s")
        if self.io_thread is not None:
            self.io_thread.pause()  # after the vCPUs: no new notification comes
        if self.ring is not None:
            self.ring.drain()  # every write the guest made has reached its device

    def resume(self) -> None:
        self._paused = False
        if self.io_thread is not None:
            self.io_thread.resume()
        for runner in self._runners:
            runner.resume()

    @property
    def paused(self) -> bool:
        return self._paused

    def on_vcpus(self, fn: Callable[[Vcpu], Any]) -> list[Any]:
        """``fn(vcpu)`` on each vCPU's own thread, in vCPU order."""
        if not self._runners:
            return [fn(vcpu) for vcpu in self.vcpus]
        return [runner.request(fn, REQUEST_TIMEOUT) for runner in self._runners]

    def exit_stats(self) -> str | None:
        """With ``stats``: a table of the exits so far by reason and place."""
        if self.exit_log is None or not self.exit_log.count:
            return None
        table = self.exit_log.table()
        if self.ring is not None:
            table += f"{self.ring.applied:9} writes KVM batched in the coalesced ring (no exit)\n"
        if self.devices is not None and (devices := self.devices.stats()):
            table += "devices:\n" + devices
        return table

    def _drain(self) -> None:
        """Apply batched writes when no exit does (a guest gone idle)."""
        ring = self.ring
        assert ring is not None
        while not self._ended.wait(COALESCED_INTERVAL):
            if ring.pending():
                try:
                    ring.drain()
                except Exception as e:  # a device model that raised: as on a vCPU
                    self.stop(Outcome(Ending.VMM_ERROR, f"{type(e).__name__}: {e}"))
                    return

    # -- the idle watch ----------------------------------------------------

    def _watch_idle(self) -> None:
        """End a guest that can never run again: every vCPU halted with
        interrupts disabled or never started, twice in a row."""
        parked_before = False
        while not self._ended.wait(IDLE_CHECK_SECONDS):
            if self._paused:
                parked_before = False
                continue
            try:
                parked = self.on_vcpus(self._parked)
            except (VcpuStopped, TimeoutError):
                continue
            if all(parked) and parked_before:
                detail = parked[0] if isinstance(parked[0], str) else ""
                self.stop(Outcome(Ending.HALTED, "guest halted with interrupts disabled", detail))
                return
            parked_before = all(parked)

    def _parked(self, vcpu: Vcpu) -> bool | str:
        """Whether ``vcpu`` can only be woken by another running vCPU: halted
        with IF clear (pyvmm sends no NMIs), or an AP never started. With
        --debug the answer is its registers."""
        mp_state = vcpu.get_mp_state()
        if mp_state == lib.KVM_MP_STATE_HALTED:
            parked = not vcpu.get_regs().rflags & x86_regs.RFLAGS_IF
        else:
            parked = mp_state == lib.KVM_MP_STATE_UNINITIALIZED
        if parked and self.config.debug:
            return x86_regs.format_registers(vcpu.get_regs(), vcpu.get_sregs()) or True
        return parked

    # -- teardown --------------------------------------------------------

    def _join(self) -> None:
        for thread in (self._idle, self._drainer):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        for runner in self._runners:
            runner.join()

    def close(self) -> None:
        """Stop the vCPUs and release devices, KVM descriptors and guest
        memory, in that order. Safe from any thread, any number of times: a
        second caller waits for the first to finish."""
        with self._close_lock:
            if self._closed:
                return
            self.halt()
            if self.io_thread is not None:
                self.io_thread.stop()
            if self.devices is not None:
                self.devices.close()
            if self.ring is not None:
                self.ring.close()
            for vcpu in self.vcpus:
                vcpu.close()
            if self.vm is not None:
                self.vm.close()
            if self.io_thread is not None:
                self.io_thread.close()  # its eventfds, now that KVM has let them go
            if self.kvm is not None:
                self.kvm.close()
            if self.memory is not None:
                self.memory.close()
            self._closed = True

    def __enter__(self) -> Vmm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
