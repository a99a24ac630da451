"""The ``pyvmm`` command.

    pyvmm run --kernel PATH [--initrd PATH] [--cmdline STR] [--memory 512M] [--cpus 1]

Exit status: 0 when the guest resets or powers off, 2 for bad input, and a
status of its own for each way a guest can fail (see README.md).

Only what the command in hand needs is imported: ``pyvmm run`` never loads
the image builders unless it boots the default guest, nor the tracing
unless asked.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pyvmm.errors import MigrationError, UserError
from pyvmm.images import GUEST_KINDS

if TYPE_CHECKING:
    from pyvmm.snapshot_trigger import SnapshotPlan

EXIT_USAGE = 2
EXIT_VMM_ERROR = 1
EXIT_INCOMING_FAILED = 9


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other pyvmm error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"pyvmm: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyvmm", description="A small VMM for Linux KVM.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="boot a kernel")
    run.add_argument(
        "--kernel", help="kernel: a vmlinux ELF or a bzImage (default: the default guest)"
    )
    run.add_argument("--initrd", help="initial ramdisk (e.g. a cpio archive)")
    run.add_argument(
        "--cmdline",
        default="",
        help="kernel command line (with the default guest: added to its own)",
    )
    run.add_argument(
        "--guest",
        default="auto",
        choices=GUEST_KINDS,
        help="which default guest to boot when no --kernel is given (default: auto)",
    )
    run.add_argument("--memory", help="guest RAM, e.g. 512M or 2G (default 512M)")
    run.add_argument("--cpus", help="number of vCPUs (default 1)")
    run.add_argument(
        "--console",
        default="stdio",
        metavar="stdio|none|file:PATH|unix:PATH",
        help="where the serial console goes (default: stdio)",
    )
    run.add_argument("--console-log", metavar="PATH", help="also copy all guest output to PATH")
    run.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="PATH[,readonly][,serial=S]",
        help="a file (or block device) as a virtio-blk disk: vda, vdb, ... (repeatable)",
    )
    run.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="tap:NAME|user[,mac=M]",
        help="a virtio-net card on an existing tap device, or on passt (user): eth0, ... "
        "(repeatable)",
    )
    run.add_argument(
        "--rng", action="store_true", help="a virtio-rng device: entropy from the host (/dev/hwrng)"
    )
    run.add_argument(
        "--share",
        action="append",
        default=[],
        metavar="HOST_DIR[:GUEST_DIR][,ro]",
        help="a host directory the guest mounts (virtio-fs; at the same path unless "
        "GUEST_DIR is given; repeatable)",
    )
    run.add_argument(
        "--reboot",
        default="exit",
        choices=("exit", "restart"),
        help="when the guest reboots: exit with status 0, or boot it again (default: exit)",
    )
    run.add_argument("--debug", action="store_true", help="add a register dump to failure messages")
    run.add_argument(
        "--trace",
        default="",
        metavar="boot,exits,migration,virtio",
        help="print each boot step with its numbers (boot), each VM exit (exits, "
        "rate-limited), each migration round (migration), or each virtio request "
        "(virtio, rate-limited), on standard error",
    )
    run.add_argument(
        "--stats",
        action="store_true",
        help="at exit, print a table of VM exits by reason and port or address",
    )
    snap = run.add_argument_group("snapshots")
    snap.add_argument(
        "--restore", metavar="DIR", help="resume the snapshot in DIR instead of booting"
    )
    snap.add_argument(
        "--snapshot",
        metavar="DIR",
        help="where to save a snapshot: on Ctrl-A s, on SIGUSR1, or --snapshot-after",
    )
    snap.add_argument(
        "--snapshot-after",
        metavar="REGEX",
        help="save the snapshot when the console first matches REGEX",
    )
    snap.add_argument(
        "--incoming",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="wait there for a guest another pyvmm migrates, instead of booting",
    )
    cmd = run.add_argument_group("with -- CMD [ARGS...]: run that command in the guest")
    cmd.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="end it after this long: status 124"
    )
    cmd.add_argument(
        "--verbose", action="store_true", help="show the guest's console on standard error"
    )
    cmd.add_argument("--no-share", action="store_true", help="do not share the current directory")
    cmd.add_argument("--cwd", metavar="DIR", help="the command's directory in the guest")
    run.add_argument(
        "--control",
        metavar="unix:PATH",
        help="a socket that takes commands: status, pause, resume, snapshot DIR, "
        "migrate ADDR [SECONDS], quit",
    )
    snap.add_argument(
        "--snapshot-then",
        choices=("continue", "exit"),
        default="continue",
        help="after saving: let the guest run on (default), or stop it (status 0)",
    )
    inspect = sub.add_parser(
        "inspect", help="show what the loader sees in a kernel file, without running it"
    )
    inspect.add_argument("kernel", help="a vmlinux ELF or a bzImage")
    images = sub.add_parser(
        "images", help="fetch and build the default guest's images into the cache"
    )
    images.add_argument(
        "which", nargs="*", metavar="stock|small|initramfs", help="which images (default: all)"
    )
    return parser


def _images(which: list[str]) -> int:
    """``pyvmm images``: bring each image up to date and say where it is."""
    from pyvmm.images import default

    known = ["stock", "small", "initramfs"]
    if unknown := [w for w in which if w not in known]:
        raise UserError(f"unknown image {unknown[0]!r}: choose from {', '.join(known)}")
    which = which or known
    if "stock" in which:
        k = default.stock_kernel(refresh=True)
        print(f"stock kernel  {k.name}\n  {k.bzimage}\n  {k.vmlinux}")
    if "small" in which:
        k = default.small_kernel(refresh=True)
        print(f"small kernel  {k.name}\n  {k.bzimage}\n  {k.vmlinux}")
    if "initramfs" in which:
        print(f"initramfs\n  {default.initramfs_image(refresh=True)}")
    return 0


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _snapshot_plan(args: argparse.Namespace) -> SnapshotPlan | None:
    from pyvmm.snapshot_trigger import SnapshotPlan

    if args.snapshot is None:
        if args.snapshot_after is not None or args.snapshot_then != "continue":
            raise UserError("--snapshot-after and --snapshot-then need --snapshot DIR")
        return None
    path = Path(args.snapshot)
    if path.exists() or path.is_symlink():
        raise UserError(f"--snapshot {path}: already exists")
    if not path.parent.is_dir():
        raise UserError(f"--snapshot {path}: {path.parent} is not a directory")
    try:
        after = re.compile(args.snapshot_after, re.M) if args.snapshot_after else None
    except re.error as e:
        raise UserError(f"invalid --snapshot-after {args.snapshot_after!r}: {e}") from None
    return SnapshotPlan(path, after, args.snapshot_then == "exit")


def _control_path(text: str | None) -> Path | None:
    if text is None:
        return None
    kind, _, path = text.partition(":")
    if kind != "unix" or not path:
        raise UserError(f"invalid --control {text!r}: use unix:PATH")
    return Path(path)


def _run(args: argparse.Namespace) -> int:
    from pyvmm import launch
    from pyvmm.console import backends
    from pyvmm.devices.virtio.fs import ShareConfig
    from pyvmm.run import Restore, run_machine
    from pyvmm.vmm.config import MachineConfig, parse_trace
    from pyvmm.vmm.ending import Ending

    if args.timeout is not None or args.verbose or args.no_share or args.cwd is not None:
        raise UserError("--timeout, --verbose, --no-share and --cwd go with '-- CMD'")
    trace = parse_trace(args.trace)
    plan = _snapshot_plan(args)
    control = _control_path(args.control)
    restore = incoming = None
    if args.incoming is not None:
        from pyvmm.migration.protocol import parse_address
        from pyvmm.run import Incoming

        if args.restore or args.kernel or args.initrd or args.cmdline or args.guest != "auto":
            raise UserError(
                "--incoming takes the guest from the source: no kernel, restore or command line"
            )
        parse_address(args.incoming)
        incoming = Incoming(
            args.incoming,
            launch.memory_size(args.memory) if args.memory is not None else None,
            launch.cpu_count(args.cpus) if args.cpus is not None else None,
        )
        config = MachineConfig(kernel="")
    elif args.restore is not None:
        if args.initrd is not None or args.cmdline or args.guest != "auto":
            raise UserError(
                "--restore resumes a saved guest: --initrd, --cmdline and --guest do not apply"
            )
        restore = Restore(
            Path(args.restore),
            launch.memory_size(args.memory) if args.memory is not None else None,
            launch.cpu_count(args.cpus) if args.cpus is not None else None,
            args.kernel,
        )
        config = MachineConfig(kernel=args.kernel or "")
    else:
        config = launch.make_config(
            args.kernel, args.initrd, args.cmdline, args.memory or "512M", args.cpus or 1,
            args.guest, announce=True,
        )  # fmt: skip
    config.debug, config.trace, config.stats = args.debug, trace, args.stats
    if args.disk or args.net or args.rng or args.share:
        if restore is not None or incoming is not None:
            raise UserError(
                "--disk, --net, --rng and --share: a restored or incoming guest keeps its own "
                "devices"
            )
        config.shares = tuple(ShareConfig.parse(s, i) for i, s in enumerate(args.share))
        launch.add_virtio_devices(config, args.disk, args.net, args.rng)
    spec = backends.parse(args.console)
    log = Path(args.console_log) if args.console_log else None
    outcome = run_machine(
        config, spec, log, restore=restore, snapshot=plan, incoming=incoming, control=control
    )
    while outcome.ending is Ending.RESET and args.reboot == "restart":
        print("pyvmm: guest rebooted; starting it again", file=sys.stderr, flush=True)
        if restore is not None:  # boot afresh what the snapshot was taken of
            from pyvmm.snapshot import restore as restoring
            from pyvmm.snapshot import store

            config = restoring.config_of(store.load(restore.path).config)
            config.debug, config.trace, config.stats = args.debug, trace, args.stats
            restore = None
        outcome = run_machine(config, spec, log, append_log=True, restore=restore)
    if outcome.status != 0 or args.debug:
        print(f"pyvmm: {outcome.message}", file=sys.stderr)
        if outcome.detail and args.debug:
            print(outcome.detail, file=sys.stderr)
    return outcome.status


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--" in words:  # pyvmm run [OPTIONS] -- CMD [ARGS...]: all after it is the command's
        at = words.index("--")
        words, command = words[:at], words[at + 1 :]
    args = _parser().parse_args(words)
    try:
        if command is not None:
            if args.command != "run":
                raise UserError("'--' and a command go with pyvmm run")
            from pyvmm.command import run_command

            return run_command(args, command)
        if args.command == "images":
            return _images(args.which)
        if args.command == "inspect":
            from pyvmm.boot import inspect as kernel_inspect

            print(kernel_inspect.describe(args.kernel), end="")
            return 0
        return _run(args)
    except UserError as e:
        print(f"pyvmm: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MigrationError as e:  # an incoming migration: the source's guest runs on there
        print(f"pyvmm: {e}", file=sys.stderr)
        return EXIT_INCOMING_FAILED
    except KeyboardInterrupt:
        print("pyvmm: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as e:  # a pyvmm or host failure: one line, the traceback with --debug
        debug = getattr(args, "debug", False)  # ``pyvmm images`` has no --debug
        hint = "" if debug else " (a pyvmm failure; --debug shows where)"
        print(f"pyvmm: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_VMM_ERROR


if __name__ == "__main__":
    sys.exit(main())
