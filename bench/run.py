"""pyvmm's figures: exit cost, boot time, memory and console throughput.

    python bench/run.py [--runs 3] [--only exits,startup,boot,memory,serial,restore,run,clones,
                                          virtio,migrate-idle,migrate-dirty,command,share]

- exits: time per port-I/O exit handled by pyvmm's vCPU loop
  (``vmm.vcpu.run_lean``: ``pyvmm_run``, ``ExitHandler.port``, the port bus,
  the UART's scratch register), next to a C loop that runs the same guest on
  the same vCPU and does nothing per exit; the ratio is the figure. The guest
  is a few instructions: ``out`` in a loop, then ``hlt``.
- boot: ``pyvmm run`` of the default guest: time from process start to the
  first line /init prints, the guest's own uptime in that line, and pyvmm's
  peak RSS beyond guest memory (sampled from /proc/PID/smaps: all resident
  memory minus what the guest RAM mapping holds).
- startup: ``pyvmm run`` from exec to the first byte on its standard
  output, for a guest whose first instruction writes that byte to COM1: the
  time to the first KVM_RUN, plus one exit and the console's writer. Run
  with Python's bytecode cache on, as an installed pyvmm has it.
- memory: the test guest (tests/guests) from process start to its reset, at
  --memory 128M and 16G. pyvmm never touches guest RAM up front, so they
  should match within a few percent.
- serial: bytes per second through the UART: the test guest prints 64 KiB
  with polled I/O (one exit per byte: the LSR read; KVM batches the THR
  writes), read from pyvmm's standard output.
- restore, run, clones: snapshots (bench/snapshots.py says what each is).
- virtio: disk and network throughput and their cost (bench/virtio.py; root).
- migrate-idle, migrate-dirty: live migration (bench/migration.py).
- command, share: ``pyvmm run -- CMD`` and the shared directory
  (bench/share.py).

Each figure is the median of --runs runs. Figures, not assertions: nothing
here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.guests, which builds the test guest

from pyvmm.arch.x86_64 import cpuid, regs  # noqa: E402
from pyvmm.devices.bus import Bus  # noqa: E402
from pyvmm.kvm import Kvm, lib  # noqa: E402
from pyvmm.memory import GuestMemory, Range  # noqa: E402
from pyvmm.vmm.device_manager import DeviceManager, PcEvents, add_pc_devices  # noqa: E402
from pyvmm.vmm.ending import Ending, Outcome  # noqa: E402
from pyvmm.vmm.exits import ExitHandler  # noqa: E402
from pyvmm.vmm.vcpu import run_lean  # noqa: E402

BANNER = re.compile(rb"pyvmm guest: Linux (\S+), up ([0-9.]+) s")
MiB = 1 << 20


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- (a) exit cost -------------------------------------------------------------


#: The guest: mov ecx, N; mov dx, 0x3ff; 1: out dx, al; dec ecx; jnz 1b; hlt
#: (0x3ff: the UART's scratch register, a real device model behind the bus).
def exit_loop_code(n: int) -> bytes:
    return b"\xb9" + n.to_bytes(4, "little") + b"\x66\xba\xff\x03\xee\xff\xc9\x75\xfb\xf4"


CODE_ADDR = 0x100000


def exit_cost(runs: int, exits: int = 20000) -> None:
    """Alternate C and Python runs of the same guest on one vCPU."""
    with Kvm() as kvm, GuestMemory([Range(0, 4 * MiB)]) as memory:
        vm = kvm.create_vm()  # no in-kernel irqchip: HLT comes back to us
        try:
            memory.register(vm)
            regs.write_boot_tables(memory)
            memory.write(CODE_ADDR, exit_loop_code(exits))
            vcpu = vm.create_vcpu(0)
            vcpu.set_cpuid2(cpuid.vcpu_cpuid(kvm.supported_cpuid(), apic_id=0, nr_vcpus=1))
            pio, mmio = Bus("port I/O"), Bus("MMIO")
            events = PcEvents(lambda: None, lambda: None, lambda: None)
            add_pc_devices(DeviceManager(pio, mmio, lambda irq, level: None), lambda d: None,
                           lambda: 1 << 30, events)  # fmt: skip
            ended: list[Outcome] = []

            def stop(outcome: Outcome) -> None:  # the HLT at the end: leave the loop
                ended.append(outcome)
                vcpu.run_struct.immediate_exit = 1

            handler = ExitHandler(pio, mmio, stop)

            def in_c() -> int:
                return int(lib.pyvmm_bench_io_loop(vcpu.fd, vcpu.run_struct))

            def in_python() -> int:
                ended.clear()
                run_lean(vcpu, handler)  # the vCPU thread's own loop, until the HLT
                vcpu.run_struct.immediate_exit = 0
                assert [o.ending for o in ended] == [Ending.HALTED], ended
                return exits

            timings: dict[str, list[float]] = {"C": [], "Python": []}
            for _ in range(runs):
                for name, loop in (("C", in_c), ("Python", in_python)):
                    regs.setup_boot_cpu(vcpu, CODE_ADDR, 0)
                    start = time.perf_counter()
                    done = loop()
                    elapsed = time.perf_counter() - start
                    if done != exits:
                        sys.exit(f"{name} loop saw {done} exits, expected {exits}")
                    timings[name].append(elapsed / exits * 1e9)
            vcpu.close()
        finally:
            vm.close()
    c, py = median(timings["C"]), median(timings["Python"])
    print(
        f"exits: {exits} port-I/O exits per run, median of {runs}: C loop {c:,.0f} ns/exit, "
        f"pyvmm in Python {py:,.0f} ns/exit: Python adds {py - c:,.0f} ns, ratio {py / c:.2f}"
    )


# -- (b) boot time and (d) RSS -------------------------------------------------


def rss_beyond_guest(pid: int, guest_bytes: int) -> int | None:
    """Resident bytes of the process outside its guest RAM mapping(s)."""
    total = guest = 0
    size = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    size = hi - lo
                elif line.startswith("Rss:"):
                    kib = int(line.split()[1]) * 1024
                    total += kib
                    if size >= min(guest_bytes, 3 << 30) and size % (2 * MiB) == 0:
                        guest += kib  # a guest RAM region: the only mappings that large
    except (FileNotFoundError, ProcessLookupError):
        return None
    return total - guest


def sample_peak(pid: int, guest_bytes: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.wait(0.2):
        value = rss_beyond_guest(pid, guest_bytes)
        if value is not None:
            out.append(value)


def boot(runs: int, guest: str, memory: str) -> None:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--guest", guest, "--memory", memory,
           "--cmdline", "pyvmm.cmd=true"]  # fmt: skip
    guest_bytes = int(memory.rstrip("M")) * MiB if memory.endswith("M") else 512 * MiB
    firsts, uptimes, peaks = [], [], []
    for i in range(runs):
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=sample_peak, args=(proc.pid, guest_bytes, stop, samples))
        sampler.start()
        assert proc.stdout is not None
        first = uptime = None
        for line in proc.stdout:
            m = BANNER.search(line)
            if m and first is None:
                first, uptime = time.monotonic() - start, float(m.group(2))
        proc.wait()
        stop.set()
        sampler.join()
        if first is None or uptime is None:
            sys.exit(f"boot: no banner from the guest (exit status {proc.returncode})")
        peak = max(samples, default=0)
        firsts.append(first)
        uptimes.append(uptime)
        peaks.append(peak)
        print(
            f"boot run {i + 1}: first userspace line {first:.2f} s, guest uptime {uptime:.2f} s, "
            f"RSS beyond guest memory {peak / MiB:.1f} MiB",
            flush=True,
        )
    print(
        f"boot: {' '.join(cmd[2:])}, median of {runs}: first userspace line "
        f"{median(firsts):.2f} s after start, guest uptime then {median(uptimes):.2f} s"
    )
    peak = median(peaks) / MiB
    print(f"rss: pyvmm's peak RSS beyond guest memory, median of {runs}: {peak:.1f} MiB")


# -- (c) memory size and (e) serial throughput -----------------------------------


def test_guest() -> Path:
    from tests.guests.build import build

    return build(Path(tempfile.mkdtemp(prefix="pyvmm-bench-"))).elf


def timed_run(cmd: list[str], on_line: Callable[[bytes, float], None] | None = None) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if on_line is not None:
            on_line(line, time.monotonic())
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)}: exit status {proc.returncode}")
    return time.monotonic() - start


def first_out_elf(path: Path) -> Path:
    """A 64-bit ELF whose first instruction writes '!' to COM1; it then
    resets through the i8042 (ELF-64 header and one PT_LOAD, gABI layout)."""
    code = (
        b"\xb0!\x66\xba\xf8\x03\xee"  # mov al, '!'; mov dx, 0x3f8; out dx, al
        b"\xb0\xfe\xe6\x64"  # mov al, 0xfe; out 0x64, al: pulse the reset line
        b"\xf4"  # hlt
    )
    load, offset = 0x100000, 0x1000
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, load, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, offset, load, load, len(code), len(code), 0x1000)
    path.write_bytes((header + phdr).ljust(offset, b"\0") + code)
    return path


def startup(runs: int) -> None:
    elf = first_out_elf(Path(tempfile.mkdtemp(prefix="pyvmm-bench-")) / "first-out.elf")
    cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(elf), "--memory", "64M"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # bytecode cache warm
    times = []
    for _ in range(runs):
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        if proc.stdout.read(1) != b"!":
            sys.exit("startup: the guest did not print its byte")
        times.append(time.monotonic() - start)
        proc.wait()
    print(
        f"startup: exec to the guest's first console byte (its first instruction), "
        f"median of {runs}: {median(times) * 1000:.0f} ms (best {min(times) * 1000:.0f} ms)"
    )


def memory_sizes(runs: int, elf: Path) -> None:
    medians = {}
    for size in ("128M", "16G"):
        cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(elf), "--memory", size]
        medians[size] = median([timed_run(cmd) for _ in range(runs)])
    a, b = medians["128M"], medians["16G"]
    print(
        f"memory: test guest, process start to reset, median of {runs}: --memory 128M "
        f"{a * 1000:.0f} ms, --memory 16G {b * 1000:.0f} ms ({100 * (b - a) / a:+.1f}%)"
    )


def flood_rate(cmd: list[str]) -> tuple[int, float]:
    """Bytes between the guest's "flood begin" and "flood end" lines, and bytes/s."""
    marks: dict[str, float] = {}
    count = 0

    def on_line(line: bytes, now: float) -> None:
        nonlocal count
        if line == b"flood begin\n":
            marks["begin"] = now
        elif line == b"flood end\n":
            marks["end"] = now
        elif "begin" in marks and "end" not in marks:
            count += len(line)

    timed_run(cmd, on_line)
    return count, count / (marks["end"] - marks["begin"])


def serial(runs: int, elf: Path) -> None:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(elf), "--memory", "64M",
           "--cmdline", "action=flood"]  # fmt: skip
    results = [flood_rate(cmd) for _ in range(runs)]
    size = results[0][0]
    rate = median([r for _, r in results])
    print(
        f"serial: {size // 1024} KiB through the UART with polled output, median of {runs}: "
        f"{rate / 1024:.1f} KiB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only",
        default="exits,startup,boot,memory,serial,restore,run,clones,virtio,migrate-idle,"
        "migrate-dirty,command,share",
    )
    parser.add_argument("--guest", default="auto", help="default guest for the boot figure")
    parser.add_argument("--memory", default="512M", help="--memory for the boot figure")
    args = parser.parse_args()
    which = args.only.split(",")
    if "exits" in which:
        exit_cost(args.runs)
    if "startup" in which:
        startup(max(args.runs, 5))
    if "memory" in which or "serial" in which:
        elf = test_guest()
        if "memory" in which:
            memory_sizes(args.runs, elf)
        if "serial" in which:
            serial(args.runs, elf)
    if "boot" in which:
        boot(args.runs, args.guest, args.memory)
    if {"restore", "run", "clones"} & set(which):
        import snapshots  # bench/snapshots.py, next to this file

        if "restore" in which:
            snapshots.restore(max(args.runs, 5), test_guest())
        if "run" in which:
            snapshots.run_true(args.runs)
        if "clones" in which:
            snapshots.clones()
    if "virtio" in which:
        import virtio  # bench/virtio.py, next to this file

        virtio.disk_and_net()
    if {"migrate-idle", "migrate-dirty"} & set(which):
        import migration  # bench/migration.py, next to this file

        if "migrate-idle" in which:
            migration.idle(args.runs)
        if "migrate-dirty" in which:
            migration.dirtying(args.runs, test_guest())
    if {"command", "share"} & set(which):
        import share  # bench/share.py, next to this file

        if "command" in which:
            share.command(max(args.runs, 5))
        if "share" in which:
            share.share(args.runs)


if __name__ == "__main__":
    main()
