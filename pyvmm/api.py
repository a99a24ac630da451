"""The Python API for driving a guest from tests and scripts.

    with pyvmm.Machine(memory="256M") as vm:
        vm.start()
        result = vm.run("uname -r", timeout=300)
        assert result.status == 0

A :class:`Machine` boots in background threads; its console output is
collected as it arrives (:attr:`Machine.console`) and its input is fed
through the UART like typed keys. :meth:`Machine.run` runs one shell command
in the guest's shell and returns its output and exit status. Every wait has a
timeout, and a timeout raises :class:`GuestTimeout` with the last console
lines in its message. Machines are independent: several can run at once in
one process.
"""

from __future__ import annotations

import codecs
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pyvmm import console as console_io
from pyvmm import console_backends
from pyvmm import machine as vmm
from pyvmm.errors import UserError
from pyvmm.trace import parse_kinds as trace_kinds

#: What the default guest's /init prints once userspace runs.
READY = r"pyvmm guest: Linux \S+, up [0-9.]+ s"
#: How often a waiter looks at a console line still being printed.
RECHECK_SECONDS = 0.05
#: How many console lines a timeout error shows.
TAIL_LINES = 20
DEFAULT_TIMEOUT = 600.0


class ConsoleText:
    """The console as text, built as it arrives: UTF-8 decoded incrementally,
    CR LF turned into LF, joined only when read. (Decoding and joining the
    whole console for each byte the UART delivers cost about a second of CPU
    over a Linux boot.)"""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chunks: list[str] = []
        self._held_cr = False  # a CR at the end of the data so far: CR LF may follow
        self._joined = ""
        #: Characters so far (a held CR not counted).
        self.length = 0

    def add(self, data: bytes) -> None:
        chunk = self._decoder.decode(data)
        if self._held_cr:
            chunk = "\r" + chunk
        self._held_cr = chunk.endswith("\r")
        if self._held_cr:
            chunk = chunk[:-1]
        chunk = chunk.replace("\r\n", "\n")
        if chunk:
            self._chunks.append(chunk)
            self.length += len(chunk)

    def text(self) -> str:
        if self._chunks:
            self._joined += "".join(self._chunks)
            self._chunks.clear()
        return self._joined


class GuestTimeout(TimeoutError):
    """A wait on the guest ran out of time; the message ends with its console."""


class GuestExited(RuntimeError):
    """The guest ended while something was still waiting on it."""


@dataclass(frozen=True)
class RunResult:
    output: str
    status: int
    duration: float


def _parse_memory(memory: int | str) -> int:
    if isinstance(memory, int):
        return memory
    from pyvmm.cli import parse_size  # the same rules as --memory

    return parse_size(memory)


class Machine:
    """One guest, driven from Python. Keyword arguments mirror ``pyvmm run``;
    without ``kernel`` the default guest is used. ``extra_files`` maps host
    paths to guest paths to add to the initramfs (built on the fly, cached
    by content)."""

    def __init__(
        self,
        config: vmm.MachineConfig | None = None,
        *,
        kernel: str | os.PathLike[str] | None = None,
        initrd: str | os.PathLike[str] | None = None,
        cmdline: str = "",
        memory: int | str = "512M",
        cpus: int = 1,
        guest: str = "auto",
        trace: str = "",
        stats: bool = False,
        console_log: str | os.PathLike[str] | None = None,
        extra_files: dict[str | os.PathLike[str], str] | None = None,
        ready: str = READY,
    ) -> None:
        if config is None:
            config = self._default_config(kernel, initrd, cmdline, memory, cpus, guest)
        config.trace = config.trace or trace_kinds(trace)
        config.stats = config.stats or stats
        if extra_files:
            from pyvmm.images import extra

            if config.initrd is None:
                raise UserError("extra_files needs an initramfs to add them to")
            config.initrd = extra.with_files(Path(config.initrd), extra_files)
        self.config = config
        self.ready = ready
        self._log_path = console_log
        self._log_fd = -1
        self._output = ConsoleText()
        self._lock = threading.Condition()
        self._vm = vmm.Machine(config, console=self._on_output)
        self._input_r, self._input_w = os.pipe()
        self._pump: console_io.InputPump | None = None
        self._result: vmm.VmExit | None = None
        self._waiter: threading.Thread | None = None
        self._shell_ready = False

    @staticmethod
    def _default_config(
        kernel: str | os.PathLike[str] | None,
        initrd: str | os.PathLike[str] | None,
        cmdline: str,
        memory: int | str,
        cpus: int,
        guest: str,
    ) -> vmm.MachineConfig:
        if kernel is None:
            from pyvmm.arch.x86_64 import pvm
            from pyvmm.images import default

            g = default.default_guest(guest, pvm_host=pvm.host_is_pvm())
            kernel = g.kernel
            initrd = initrd if initrd is not None else g.initrd
            cmdline = f"{g.cmdline} {cmdline}".strip()
        return vmm.MachineConfig(
            kernel=kernel, initrd=initrd, cmdline=cmdline, memory=_parse_memory(memory), cpus=cpus
        )

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Machine:
        """Boot in the background and return at once. On bad input
        (UserError) nothing is left open."""
        try:
            self._vm.build()  # bad input fails here, before the log file is created
            if self._log_path is not None:
                # The same check and message as --console-log: a bad path is a UserError.
                self._log_fd = console_backends.open_log(Path(self._log_path))
            self._vm.start()
        except BaseException:
            self.close()
            raise
        com1 = self._vm.com1
        assert com1 is not None
        self._pump = console_io.InputPump(
            self._input_r, com1, com1.rx_space, escapes=False, on_action=lambda a: None
        )
        self._pump.start()
        self._waiter = threading.Thread(target=self._wait_end, name="pyvmm-api-wait", daemon=True)
        self._waiter.start()
        return self

    def _wait_end(self) -> None:
        result = self._vm.wait()
        with self._lock:
            self._result = result
            self._lock.notify_all()

    def exit_stats(self) -> str | None:
        """With ``stats=True``: the table ``pyvmm run --stats`` prints."""
        return self._vm.exit_stats()

    @property
    def exit_status(self) -> int | None:
        """pyvmm's exit status for how the guest ended (see README), or None
        while it runs."""
        with self._lock:
            return self._result.status if self._result is not None else None

    @property
    def exit(self) -> vmm.VmExit | None:
        with self._lock:
            return self._result

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the guest to end by itself; its exit status."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._result is not None, timeout):
                raise GuestTimeout(self._timeout_message(f"the guest did not end in {timeout} s"))
            assert self._result is not None
            return self._result.status

    def shutdown(self, timeout: float = 60.0) -> int:
        """Power the guest off from its shell, or stop it if it will not go
        within ``timeout``; returns the exit status."""
        if self.exit_status is None and self._shell_ready:
            self.send("poweroff -f\n")
            try:
                return self.wait(timeout)
            except GuestTimeout:
                pass
        self.close()
        status = self.exit_status
        return status if status is not None else vmm.ExitKind.INTERRUPTED.status

    def close(self) -> None:
        """Stop the guest if it still runs and release everything."""
        self._vm.close()
        if self._waiter is not None:
            self._waiter.join(timeout=10)
        if self._pump is not None:
            self._pump.stop()
            self._pump = None
        for fd in (self._input_r, self._input_w):
            if fd >= 0:
                os.close(fd)
        self._input_r = self._input_w = -1
        with self._lock:  # output may still arrive from a vCPU thread
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- console ---------------------------------------------------------

    def _on_output(self, data: bytes) -> None:
        with self._lock:
            self._output.add(data)
            if self._log_fd >= 0:
                console_io.write_all(self._log_fd, data)
            # Waiters look again at each new line, and at least every
            # RECHECK_SECONDS for a partial one (a prompt): the UART hands
            # over one byte at a time.
            if b"\n" in data:
                self._lock.notify_all()

    @property
    def console(self) -> str:
        """Everything the guest printed so far (CR LF as LF)."""
        with self._lock:
            return self._output.text()

    def _timeout_message(self, what: str) -> str:
        tail = "\n".join(self.console.splitlines()[-TAIL_LINES:])
        return f"{what}; last console lines:\n{tail}"

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = DEFAULT_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """The first match of ``pattern`` (multiline) in the console from
        character ``start``; raises GuestTimeout, or GuestExited if the guest
        ends first. The console may end in a line still being printed: end a
        pattern with ``\\n`` rather than ``$`` to match only whole lines."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        searched = -1
        with self._lock:
            while True:
                if self._output.length != searched:
                    text = self._output.text()
                    searched = self._output.length
                    m = regex.search(text, start)
                    if m:
                        return m
                if self._result is not None:
                    raise GuestExited(
                        self._timeout_message(f"the guest ended ({self._result.message})")
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestTimeout(
                        self._timeout_message(f"no {regex.pattern!r} within {timeout} s")
                    )
                self._lock.wait(min(left, RECHECK_SECONDS))

    def send(self, text: str | bytes) -> None:
        """Type ``text`` into the guest's console."""
        console_io.write_all(self._input_w, text.encode() if isinstance(text, str) else text)

    # -- commands --------------------------------------------------------

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the guest's shell takes commands (the default guest's
        banner), and turn off its terminal echo so output is only output."""
        if self._shell_ready:
            return
        self.wait_for(self.ready, timeout)
        self.send("stty -echo; PS1=''; PS2=''\n")
        self._shell_ready = True

    def run(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> RunResult:
        """Run ``command`` in the guest's shell: its output and exit status."""
        started = time.monotonic()
        self.wait_ready(timeout)
        tag = uuid.uuid4().hex[:12]
        command = command.strip().rstrip(";")  # it is followed by "; printf ..."
        mark = len(self.console)
        # Markers around the output, printed by the guest's shell on the same
        # input line as the command, so no prompt comes between. The echo of
        # the typed line never matches them (there a marker is followed by
        # ";" or "$?").
        self.send(
            f"printf '%s\\n' PYVMM-BEGIN-{tag}; {command}; printf '%s %s\\n' PYVMM-END-{tag} $?\n"
        )
        left = timeout - (time.monotonic() - started)
        end = self.wait_for(rf"PYVMM-END-{tag} (\d+)\n", max(left, 0.001), start=mark)
        begin = self.wait_for(rf"PYVMM-BEGIN-{tag}\n", 1, start=mark)
        output = self.console[begin.end() : end.start()]
        return RunResult(output, int(end.group(1)), time.monotonic() - started)
