"""The Python API for driving a guest from tests and scripts.

    with pyvmm.Machine(memory="256M") as guest:
        guest.start()
        result = guest.run("uname -r", timeout=300)
        assert result.status == 0

A :class:`Machine` boots in background threads; its console output is
collected as it arrives (:attr:`Machine.console`) and its input is fed
through the UART like typed keys. :meth:`Machine.run` runs one shell command
in the guest's shell and returns its output and exit status. Every wait has a
timeout, and a timeout raises :class:`GuestTimeout` with the last console
lines in its message. :meth:`Machine.pause` stops every vCPU and
:meth:`Machine.resume` lets them go on. Machines are independent: several
can run at once in one process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyvmm import launch, shell
from pyvmm.api_console import DEFAULT_TIMEOUT, ConsoleWaits, GuestExited, GuestTimeout
from pyvmm.console.session import ConsoleSession
from pyvmm.console.text import ConsoleText
from pyvmm.devices.virtio.blk import DiskConfig
from pyvmm.devices.virtio.fs import ShareConfig
from pyvmm.devices.virtio.net import NetConfig
from pyvmm.errors import UserError
from pyvmm.shell import RunResult
from pyvmm.vmm import builder
from pyvmm.vmm.config import MachineConfig, parse_trace
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.lifecycle import Vmm

if TYPE_CHECKING:
    from pyvmm.migration.send import Report
    from pyvmm.snapshot.take import Taken

#: What the default guest's /init prints once userspace runs.
READY = r"pyvmm guest: Linux \S+, up [0-9.]+ s"


class Machine(ConsoleWaits):
    """One guest, driven from Python. Keyword arguments mirror ``pyvmm run``;
    without ``kernel`` the default guest is used. ``extra_files`` maps host
    paths to guest paths to add to the initramfs (built on the fly, cached
    by content), or, for a restored guest, to copy in once it runs.

    ``restore``: a snapshot directory (:meth:`snapshot` makes one) to resume
    instead of booting; ``memory``, ``cpus`` and ``kernel``, if given, must
    be what the snapshot has. ``incoming``: ``unix:PATH`` or
    ``tcp:HOST:PORT`` where :meth:`start` waits for a guest another pyvmm
    sends with :meth:`migrate`. ``disks``: files (or
    :class:`~pyvmm.devices.virtio.blk.DiskConfig` for read-only ones or a
    serial) the guest sees as vda, vdb, ...; ``nets``: ``"tap:NAME"`` or
    ``"user"`` cards (eth0, ...), as ``--net``; ``rng``: a virtio-rng device;
    ``shares``: host directories the guest mounts, as ``--share``
    (``"HOST_DIR[:GUEST_DIR][,ro]"``)."""

    def __init__(
        self,
        config: MachineConfig | None = None,
        *,
        kernel: str | os.PathLike[str] | None = None,
        initrd: str | os.PathLike[str] | None = None,
        cmdline: str = "",
        memory: int | str | None = None,
        cpus: int | None = None,
        guest: str = "auto",
        trace: str = "",
        stats: bool = False,
        console_log: str | os.PathLike[str] | None = None,
        extra_files: dict[str | os.PathLike[str], str] | None = None,
        ready: str = READY,
        restore: str | os.PathLike[str] | None = None,
        incoming: str | None = None,
        disks: Sequence[str | os.PathLike[str] | DiskConfig] = (),
        nets: Sequence[str] = (),
        rng: bool = False,
        shares: Sequence[str] = (),
    ) -> None:
        self._restore = Path(restore) if restore is not None else None
        self._incoming = incoming
        self._extra_files = dict(extra_files or {})
        if incoming is not None:
            from pyvmm.migration.protocol import parse_address

            parse_address(incoming)  # a bad address is refused now
            size = launch.memory_size(memory) if memory is not None else None
            # The guest's configuration comes with it; until then, what was asked for.
            config = MachineConfig(kernel="", memory=size or 0, cpus=cpus or 0)
        elif self._restore is not None:
            config = self._restored_config(self._restore, kernel, memory, cpus)
            extra_files = None  # copied into the running guest instead
        elif config is None:
            config = launch.make_config(kernel, initrd, cmdline, memory or "512M", cpus or 1, guest)
        config.trace = config.trace or parse_trace(trace)
        config.stats = config.stats or stats
        if disks or nets or rng or shares:
            if incoming is not None or self._restore is not None:
                raise UserError(
                    "disks, nets, rng and shares: a restored or incoming guest keeps its own "
                    "devices"
                )
            config.shares = tuple(ShareConfig.parse(s, i) for i, s in enumerate(shares))
            config.disks = tuple(
                d if isinstance(d, DiskConfig) else DiskConfig(os.fspath(d)) for d in disks
            )
            config.nets = tuple(NetConfig.parse(n, i) for i, n in enumerate(nets))
            config.rng = rng
        if extra_files:
            from pyvmm.images import extra

            if config.initrd is None:
                raise UserError("extra_files needs an initramfs to add them to")
            config.initrd = extra.with_files(Path(config.initrd), extra_files, config.memory)
        self.config = config
        self.ready = ready
        self._log_path = console_log
        self._output = ConsoleText()
        self._lock = threading.Condition()
        self._session = ConsoleSession()
        self._session.add_listener(self._on_output)
        self._vmm: Vmm | None = None
        self._input_w = -1
        self._result: Outcome | None = None
        self._waiter: threading.Thread | None = None
        self._shell_ready = False
        self._close_lock = threading.Lock()

    @staticmethod
    def _trace_out(text: str) -> None:
        """``trace=``: like ``pyvmm run --trace``, on standard error."""
        sys.stderr.write(text)
        sys.stderr.flush()

    @staticmethod
    def _restored_config(
        path: Path,
        kernel: str | os.PathLike[str] | None,
        memory: int | str | None,
        cpus: int | None,
    ) -> MachineConfig:
        """The snapshot's configuration, refusing options that contradict it."""
        from pyvmm.snapshot import restore, store
        from pyvmm.snapshot.format import SnapshotError

        snap = store.load(path)
        size = launch.memory_size(memory) if memory is not None else None
        restore.check_wanted(snap, path, size, cpus)
        if kernel is not None and Path(kernel).resolve() != Path(snap.config.kernel).resolve():
            raise SnapshotError(f"snapshot {path} was taken with kernel {snap.config.kernel}")
        return restore.config_of(snap.config)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Machine:
        """Boot in the background and return at once. On bad input
        (UserError) nothing is left open."""
        if self._vmm is not None:
            raise RuntimeError("this machine was already started")
        try:
            # Bad input fails here, before the log file is created.
            if self._incoming is not None:
                self._receive(self._incoming)
                return self
            if self._restore is not None:
                self._vmm = self._build_restored(self._restore)
            else:
                self._vmm = builder.build_for_boot(
                    self.config, self._session.port(), self._trace_out
                )
            self._run()
            if self._restore is not None:
                self._after_restore()
        except BaseException:
            self.close()
            raise
        return self

    def _build_restored(self, path: Path) -> Vmm:
        from pyvmm.snapshot import restore, store

        c = self.config
        vmm = restore.build_from_snapshot(
            path, self._session.port(), self._trace_out, memory=c.memory, cpus=c.cpus,
            trace_kinds=c.trace, stats=c.stats, debug=c.debug,
        )  # fmt: skip
        self._shell_ready = bool(store.load(path).extra.get("shell_ready"))
        return vmm

    def _receive(self, address: str) -> None:
        """Wait at ``address`` for a guest and run it here (start() of an
        incoming machine)."""
        from pyvmm.migration import protocol, receive

        c = self.config
        incoming = receive.receive(
            protocol.parse_address(address), self._session.port(), self._trace_out,
            memory=c.memory or None, cpus=c.cpus or None, trace_kinds=c.trace, stats=c.stats,
        )  # fmt: skip
        self._vmm = incoming.vmm
        self.config = incoming.vmm.config
        self._shell_ready = bool(incoming.extra.get("shell_ready"))
        try:
            self._run()
        except BaseException:
            incoming.failed("the destination could not start the guest")
            raise
        incoming.resumed()

    def migrate(self, address: str, max_downtime: float = 0.1) -> Report:
        """Move the running guest to the pyvmm waiting at ``address``
        (``Machine(incoming=...)`` or ``pyvmm run --incoming``): pre-copy,
        pausing it for about ``max_downtime`` seconds at the end. Then it
        runs there and this machine has ended (exit status 8). On failure
        MigrationError says why, and the guest runs on here."""
        from pyvmm.migration import protocol, send

        if self._vmm is None or self.exit_status is not None:
            raise GuestExited("the machine is not running")
        target = protocol.parse_address(address)
        report = send.migrate(self._vmm, target, max_downtime, {"shell_ready": self._shell_ready})
        self._vmm.stop(Outcome(Ending.MIGRATED, f"the guest moved to {target}"))
        self.wait(10)
        return report

    def _after_restore(self) -> None:
        """A restored default guest's shell takes commands at once: set its
        wall clock if the restore could not, and copy in extra_files."""
        assert self._vmm is not None
        if not self._shell_ready:
            return
        if self._vmm.clock_behind_ns:
            shell.set_clock(self, DEFAULT_TIMEOUT)
        for host, guest in self._extra_files.items():
            self.put_file(host, guest)

    def snapshot(self, path: str | os.PathLike[str]) -> Taken:
        """Save the running guest to the directory ``path`` (which must not
        exist) and let it run on; a :class:`~pyvmm.snapshot.take.Taken`.
        ``Machine(restore=path)`` resumes it, as often as wanted."""
        from pyvmm.snapshot import take

        if self._vmm is None or self.exit_status is not None:
            raise GuestExited("the machine is not running")
        return take.take(self._vmm, Path(path), extra={"shell_ready": self._shell_ready})

    def _run(self) -> None:
        """Wire the console of the built machine and start it."""
        vmm = self._vmm
        assert vmm is not None and vmm.com1 is not None
        self._session.attach(vmm.com1, vmm.com1.tx_ready)
        if self._log_path is not None:
            # The same check and message as --console-log: a bad path is a UserError.
            self._session.add_file(Path(self._log_path), append=False)
        vmm.start()
        read, self._input_w = os.pipe()
        os.set_blocking(self._input_w, False)
        self._session.add_input(read)
        self._waiter = threading.Thread(target=self._wait_end, name="pyvmm-api-wait", daemon=True)
        self._waiter.start()

    def _wait_end(self) -> None:
        assert self._vmm is not None
        result = self._vmm.wait()
        with self._lock:
            self._result = result
            self._lock.notify_all()

    def pause(self) -> None:
        """Stop every vCPU; returns once none is running guest code."""
        if self._vmm is None:
            raise RuntimeError("the machine has not been started")
        self._vmm.pause()

    def resume(self) -> None:
        """Let the vCPUs run on after :meth:`pause`."""
        if self._vmm is not None:
            self._vmm.resume()

    def exit_stats(self) -> str | None:
        """With ``stats=True``: the table ``pyvmm run --stats`` prints (empty
        before the machine starts)."""
        if self._vmm is not None:
            return self._vmm.exit_stats()
        if self.config.stats:
            from pyvmm.vmm.exit_log import ExitLog

            return ExitLog(count=True).table()
        return None

    @property
    def outcome(self) -> Outcome | None:
        """How the guest ended (an :class:`~pyvmm.vmm.ending.Outcome`), or None."""
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
        return status if status is not None else Ending.INTERRUPTED.status

    def close(self) -> None:
        """Stop the guest if it still runs and release everything. Safe from
        any thread, any number of times."""
        with self._close_lock:
            if self._vmm is not None:
                self._vmm.halt()
            if self._input_w >= 0:
                os.close(self._input_w)  # the reader sees the end and closes its side
                self._input_w = -1
            self._session.close()  # no more input for the UART: then the VM can go
            if self._vmm is not None:
                self._vmm.close()
            if self._waiter is not None and self._waiter is not threading.current_thread():
                self._waiter.join(timeout=10)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands --------------------------------------------------------

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the guest's shell takes commands (the default guest's
        banner), and turn off its terminal echo so output is only output."""
        if self._shell_ready:
            return
        started = time.monotonic()
        self.wait_for(self.ready, timeout)
        shell.prepare(self, max(timeout - (time.monotonic() - started), 0.001))
        self._shell_ready = True

    def run(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> RunResult:
        """Run ``command`` in the guest's shell: its output and exit status."""
        return shell.run(self, command, timeout)

    def put_file(
        self, host: str | os.PathLike[str], guest: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Copy a host file into the running guest (its shell must be ready)."""
        shell.put_file(self, host, guest, timeout)
