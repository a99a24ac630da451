"""``pyvmm run [OPTIONS] -- CMD [ARGS...]``: one command in a guest, as a
test runner wants it.

The command runs in the default guest (or ``--kernel`` with the default
initramfs) with its arguments exactly as given, and no shell: they travel
base64-encoded, each ended by a NUL (``pyvmm.argv64``, its directory in
``pyvmm.cwd64``), to the initramfs's ``pyvmm-run`` (images/pyvmm-run.c),
which execs it; one guest process around the command, since on a PVM host
each costs about half a second. Its standard input, output and error are
three virtio-console ports (:mod:`pyvmm.devices.virtio.console`) on
pyvmm's own, so they stay apart and every byte passes unchanged; the
serial console, with the kernel's messages, is shown only with
``--verbose`` (on standard error) or kept in ``--console-log``. The
current directory is shared with the guest at the same path (virtio-fs)
and is the command's working directory, unless ``--no-share`` or
``--cwd`` say otherwise.

A first run boots the default guest with its /init waiting for a command
on the ``pyvmm.control`` port, and snapshots it there (in the image cache,
with a progress line); every later run restores that snapshot, binds the
snapshot's virtio-fs devices (room for :data:`SNAPSHOT_SHARES`) to the
shares asked for, and sends the command with the words that mount them.
Options that change the guest itself (``--kernel``, ``--initrd``,
``--cmdline``, disks, network cards, entropy) boot it afresh instead.

pyvmm exits with the command's status, which pyvmm-run reports on the
serial console (``--- pyvmm.cmd end: status N ---``; 128+N for a signal,
126 and 127 when it cannot be run or found, as a shell has it); a guest
that fails keeps its own status (7 for a kernel panic, ...); ``--timeout``
ends it with 124 and the console's last lines on standard error.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import re
import sys
import time
from collections import deque
from pathlib import Path

from pyvmm.devices.virtio.console import CommandIO
from pyvmm.devices.virtio.fs import ShareConfig
from pyvmm.errors import UserError
from pyvmm.vmm.config import MachineConfig, parse_trace

#: The status line /init prints once the command has ended.
STATUS_LINE = re.compile(rb"^--- pyvmm\.cmd end: status (\d+) ---\r?$")
#: Console lines kept for a timeout's report.
KEPT_LINES = 20
#: pyvmm's own status when the guest ended without reporting the command's.
NO_STATUS = 1
#: Shares a snapshot for commands has devices for.
SNAPSHOT_SHARES = 4
#: What /init prints where the snapshot is taken.
WAITING = "pyvmm guest: waiting for a command"


class CommandWatch:
    """Sees the serial console: the command's status, and the last lines."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._partial = bytearray()

    def __call__(self, data: bytes) -> None:
        self._partial += data
        *complete, rest = self._partial.split(b"\n")
        self._partial = bytearray(rest[-4096:])
        for line in complete:
            if (m := STATUS_LINE.match(line)) is not None:
                self.status = int(m.group(1))
            self.lines.append(line.decode(errors="replace").rstrip("\r"))


def words(command: list[str], cwd: str) -> str:
    """The command-line words that tell pyvmm-run what to run, and where."""
    argv = b"".join(os.fsencode(a) + b"\0" for a in command)
    return (
        f"pyvmm.run pyvmm.argv64={base64.b64encode(argv).decode()} "
        f"pyvmm.cwd64={base64.b64encode(os.fsencode(cwd)).decode()}"
    )


def run_command(args: argparse.Namespace, command: list[str]) -> int:
    from pyvmm import launch
    from pyvmm.console.backends import ConsoleSpec
    from pyvmm.run import Restore, run_machine
    from pyvmm.vmm.ending import Ending

    if not command:
        raise UserError("nothing to run after '--': pyvmm run [OPTIONS] -- CMD [ARGS...]")
    for option in ("restore", "incoming", "snapshot", "control"):
        if getattr(args, option) is not None:
            raise UserError(f"--{option} does not go with '--': a command runs in a fresh guest")
    shares = [ShareConfig.parse(s, i) for i, s in enumerate(args.share)]
    cwd = args.cwd
    if not args.no_share:
        here = os.getcwd()
        if not any(s.host == os.path.realpath(here) for s in shares):
            shares.append(ShareConfig.parse(here, len(shares)))
        cwd = cwd or here
    if cwd is not None and not cwd.startswith("/"):
        raise UserError(f"--cwd {cwd}: not an absolute path")
    initrd = args.initrd
    if args.kernel is not None and initrd is None:
        from pyvmm.images import default

        initrd = default.initramfs_image()
    told = words(command, cwd or "/")
    trace = parse_trace(args.trace)
    watch = CommandWatch()
    spec = ConsoleSpec("stderr" if args.verbose else "none")
    log = Path(args.console_log) if args.console_log else None
    fresh = args.kernel or args.initrd or args.cmdline or args.disk or args.net or args.rng
    if not fresh and len(shares) <= SNAPSHOT_SHARES:
        restore = Restore(
            _snapshot(args), adjust=functools.partial(_bind, shares, told), sets_clock=True
        )
        config = MachineConfig(kernel="", debug=args.debug, stats=args.stats, trace=trace)
        outcome = run_machine(
            config, spec, log, restore=restore, on_console=watch, timeout=args.timeout
        )
    else:
        config = launch.make_config(
            args.kernel, initrd, f"{args.cmdline} {told}".strip(), args.memory or "512M",
            args.cpus or 1, args.guest, announce=args.verbose,
        )  # fmt: skip
        config.debug, config.stats, config.trace = args.debug, args.stats, trace
        config.shares = tuple(shares)
        config.command = CommandIO(0, 1, 2)
        launch.add_virtio_devices(config, args.disk, args.net, args.rng)
        outcome = run_machine(config, spec, log, on_console=watch, timeout=args.timeout)
    if outcome.ending is Ending.TIMEOUT:
        last = "\n".join(f"  {line}" for line in watch.lines)
        print(f"pyvmm: {outcome.message}; the console's last lines:\n{last}", file=sys.stderr)
        return outcome.status
    if outcome.ending in (Ending.POWEROFF, Ending.RESET) and watch.status is not None:
        return watch.status
    if outcome.status == 0:
        print("pyvmm: the guest ended without the command's status", file=sys.stderr)
        return NO_STATUS
    print(f"pyvmm: {outcome.message}", file=sys.stderr)
    return outcome.status


def _snapshot(args: argparse.Namespace) -> Path:
    """The cached snapshot of the default guest waiting for a command, made
    by booting it once if there is none."""
    from pyvmm import launch, snapshot_cache

    config = launch.make_config(
        None, None, "pyvmm.run pyvmm.wait", args.memory or "512M", args.cpus or 1, args.guest
    )
    config.shares = tuple(_unused(i) for i in range(SNAPSHOT_SHARES))
    config.command = CommandIO(None, 1, 2)  # nothing is written before the snapshot
    return snapshot_cache.default_snapshot(config, ready=WAITING)


def _unused(index: int) -> ShareConfig:
    """A share device with nothing in it: an empty read-only directory."""
    from pyvmm.images.cache import cache_dir

    empty = cache_dir() / "empty-share"
    empty.mkdir(parents=True, exist_ok=True)
    return ShareConfig(str(empty), "", True, f"pyvmm{index}")


def _bind(shares: list[ShareConfig], told: str, config: MachineConfig) -> None:
    """The restored guest's devices on this run's side: its first shares
    serve the directories asked for, the rest an empty one (never what the
    snapshot file names), its ports carry this command, with the words that
    mount the shares and the time to set the guest's clock to (a snapshot
    may be days old)."""
    now = time.time_ns()
    line = " ".join(
        [*(s.word() for s in shares), told, f"pyvmm.time={now // 10**9}.{now % 10**9:09}"]
    )
    config.shares = tuple(
        shares[i] if i < len(shares) else _unused(i) for i in range(len(config.shares))
    )
    config.command = CommandIO(0, 1, 2, f"{line}\n".encode())
