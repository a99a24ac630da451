"""One thread per vCPU: it runs the vCPU, handles its exits, and does what
the rest of pyvmm asks of it.

A vCPU is in one of three states (:class:`VcpuState`): running (in or
around ``KVM_RUN``), paused (out of ``KVM_RUN``, parked on a condition
variable) or stopped (its thread has ended). Everything else that must
touch the vCPU (read its registers for a snapshot, look whether it is
halted for good, pause it) is a *request*: a function queued for the vCPU's
own thread, which a *kick* makes it notice. KVM's vCPU ioctls belong to the
thread that runs the vCPU, and a vCPU that is between an exit and the next
``KVM_RUN`` may hold an access half done (an ``in`` whose value is not yet
in the guest's register); both are why requests run there, after
``KVM_RUN`` has returned with ``immediate_exit`` set, which KVM documents as
the way to complete pending operations without running the guest.

A kick sets ``immediate_exit`` in ``struct kvm_run`` and sends the thread a
signal whose handler does nothing: a thread inside ``KVM_RUN`` returns at
once (EINTR), one outside returns from its next ``KVM_RUN`` at once.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pyvmm.kvm import Vcpu, lib
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.exits import EXIT_INTR, RUN_PIO, ExitHandler

#: Signals a vCPU thread leaves to the main thread.
MAIN_THREAD_SIGNALS = {
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


class VcpuState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class ExitObserver(Protocol):
    """Sees every exit when ``--trace exits`` or ``--stats`` is on."""

    def record(
        self, vcpu_id: int, packed: int, run: Any, page: memoryview, ns: int, note: str | None
    ) -> None: ...


class Request:
    """A function to run on the vCPU's thread, and its result."""

    def __init__(self, fn: Callable[[Vcpu], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self, vcpu: Vcpu) -> None:
        try:
            self.result = self.fn(vcpu)
        except BaseException as e:  # handed to the caller, not lost in the thread
            self.error = e
        self.done.set()


class VcpuStopped(RuntimeError):
    """A request reached a vCPU whose thread has ended."""


class VcpuRunner:
    """Runs one vCPU on its own thread. ``on_error`` ends the VM when exit
    handling fails."""

    def __init__(
        self,
        vcpu: Vcpu,
        handler: ExitHandler,
        on_error: Callable[[Outcome], None],
        kick_signal: int,
        observer: ExitObserver | None = None,
    ) -> None:
        self.vcpu = vcpu
        self.handler = handler
        self._on_error = on_error
        self._kick_signal = kick_signal
        self._observer = observer
        self.state = VcpuState.CREATED
        self._cond = threading.Condition()
        self._requests: deque[Request] = deque()
        self._pause = False
        self._stop = False
        self.thread: threading.Thread | None = None

    # -- asked from other threads ----------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread, name=f"vcpu{self.vcpu.id}", daemon=True)
        self.state = VcpuState.RUNNING
        self.thread.start()

    def kick(self) -> None:
        """Make the vCPU's KVM_RUN return now, or as soon as it is entered."""
        if self.vcpu.fd < 0:
            return
        self.vcpu.run_struct.immediate_exit = 1
        thread = self.thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may have just finished
                signal.pthread_kill(thread.ident, self._kick_signal)

    def request(self, fn: Callable[[Vcpu], Any], timeout: float | None = None) -> Any:
        """Run ``fn(vcpu)`` on the vCPU's thread and return its result (or
        raise its exception). Before the thread starts and after it ends,
        ``fn`` runs here: nothing else uses the vCPU then."""
        req = Request(fn)
        with self._cond:
            running = self.state in (VcpuState.RUNNING, VcpuState.PAUSED)
            if running:
                self._requests.append(req)
                self._cond.notify_all()
        if not running:
            req.run(self.vcpu)
        else:
            self.kick()
            if not req.done.wait(timeout):
                raise TimeoutError(f"vCPU {self.vcpu.id} did not answer in {timeout} s")
        if req.error is not None:
            raise req.error
        return req.result

    def pause(self) -> None:
        """Ask the vCPU to park; :meth:`wait_paused` waits until it has."""
        with self._cond:
            self._pause = True
        self.kick()

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Whether the vCPU is parked (or stopped) within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.state in (VcpuState.PAUSED, VcpuState.STOPPED, VcpuState.CREATED),
                timeout,
            )

    def resume(self) -> None:
        with self._cond:
            self._pause = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self.kick()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end, kicking it meanwhile; whether it did."""
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while thread.is_alive():
            self.kick()
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return False
            thread.join(left)
        return True

    # -- on the vCPU's thread ----------------------------------------------

    def _thread(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
        try:
            while self._service():
                if self._observer is None:
                    run_lean(self.vcpu, self.handler)
                else:
                    run_observed(self.vcpu, self.handler, self._observer)
        except Exception as e:
            self._on_error(
                Outcome(
                    Ending.VMM_ERROR,
                    f"vCPU {self.vcpu.id}: {type(e).__name__}: {e}",
                    traceback.format_exc(),
                )
            )
        finally:
            with self._cond:
                self.state = VcpuState.STOPPED
                self._cond.notify_all()
            for req in self._take_requests():  # nobody will run them now
                req.error = VcpuStopped(f"vCPU {self.vcpu.id} has stopped")
                req.done.set()

    def _take_requests(self) -> list[Request]:
        with self._cond:
            taken = list(self._requests)
            self._requests.clear()
            return taken

    def _service(self) -> bool:
        """After a kick: run requests, park while paused, and say whether to
        go on running (False: stop)."""
        self.vcpu.run_struct.immediate_exit = 0
        while True:
            for req in self._take_requests():
                req.run(self.vcpu)
            with self._cond:
                if self._stop:
                    return False
                if self._requests:
                    continue
                if not self._pause:
                    self.state = VcpuState.RUNNING
                    self._cond.notify_all()
                    return True
                if self.state is not VcpuState.PAUSED:
                    self.state = VcpuState.PAUSED
                    self._cond.notify_all()
                self._cond.wait()


def run_lean(vcpu: Vcpu, handler: ExitHandler) -> None:
    """KVM_RUN and each exit's handler until a kick: nothing else per exit.
    A single port access, the common exit, never leaves this loop."""
    run, fd, run_struct, page = lib.pyvmm_run, vcpu.fd, vcpu.run_struct, vcpu.run_page
    port, handle = handler.port, handler.handle
    while True:
        packed = run(fd, run_struct)
        if packed & RUN_PIO:
            port(packed, page)
        elif packed == EXIT_INTR:
            return
        else:
            handle(vcpu, packed)


def run_observed(vcpu: Vcpu, handler: ExitHandler, observer: ExitObserver) -> None:
    """The same, with each exit timed and shown to the observer."""
    run, fd, run_struct, page = lib.pyvmm_run, vcpu.fd, vcpu.run_struct, vcpu.run_page
    handle, clock = handler.handle, time.perf_counter_ns
    while True:
        packed = run(fd, run_struct)
        if packed == EXIT_INTR:
            return
        start = clock()
        note = handle(vcpu, packed)
        observer.record(vcpu.id, packed, run_struct, page, clock() - start, note)
