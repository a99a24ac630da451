"""pytest plugin: fixtures that boot guests, and their consoles in failure reports.

Installed with pyvmm (entry point ``pytest11``). Fixtures:

- ``pyvmm_factory``: call it with :class:`pyvmm.Machine` keyword arguments
  to get a machine (not yet started); every one is closed after the test.
- ``pyvmm_machine``: a started default guest whose shell is ready: a clone
  of one snapshot (``pyvmm_snapshot``), so no test waits for a boot.
- ``pyvmm_snapshot``: that snapshot's directory. The guest is booted once,
  the first time, and its snapshot kept in ``~/.cache/pyvmm/snapshots/``
  for later sessions (see :mod:`pyvmm.snapshot_cache`); with pytest-xdist
  the workers share it.

Options: ``--pyvmm-kernel``, ``--pyvmm-initrd`` (instead of the default
guest), ``--pyvmm-memory``; ``--pyvmm-boot`` boots each ``pyvmm_machine``
instead of restoring it. When a test fails, the console of each of its
machines is added to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyvmm.api import Machine
from pyvmm.api_console import DEFAULT_TIMEOUT

#: Console characters shown in a failure report, per machine.
REPORT_TAIL = 8000
_MACHINES = pytest.StashKey[list[Machine]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyvmm", "pyvmm guests")
    group.addoption("--pyvmm-kernel", help="kernel for pyvmm fixtures (default: the default guest)")
    group.addoption("--pyvmm-initrd", help="initramfs for pyvmm fixtures")
    group.addoption("--pyvmm-memory", default="512M", help="guest RAM for pyvmm fixtures")
    group.addoption(
        "--pyvmm-snapshots",
        metavar="DIR",
        help="where pyvmm_snapshot keeps snapshots (default: ~/.cache/pyvmm/snapshots)",
    )
    group.addoption(
        "--pyvmm-boot",
        action="store_true",
        help="boot every pyvmm_machine instead of restoring a cached snapshot",
    )


@pytest.fixture
def pyvmm_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    machines: list[Machine] = []
    request.node.stash[_MACHINES] = machines
    options = request.config.option

    def make(**kwargs: Any) -> Machine:
        if options.pyvmm_kernel and "kernel" not in kwargs and "config" not in kwargs:
            kwargs["kernel"] = options.pyvmm_kernel
        if options.pyvmm_initrd and "initrd" not in kwargs and "config" not in kwargs:
            kwargs["initrd"] = options.pyvmm_initrd
        if "restore" not in kwargs:
            kwargs.setdefault("memory", options.pyvmm_memory)
        machine = Machine(**kwargs)
        machines.append(machine)
        return machine

    yield make
    for machine in machines:
        machine.close()


@pytest.fixture(scope="session")
def pyvmm_snapshot(request: pytest.FixtureRequest) -> Path:
    """A snapshot of the default guest (or --pyvmm-kernel/--pyvmm-initrd),
    its shell ready; made once and cached across sessions."""
    from pyvmm import launch, snapshot_cache

    options = request.config.option
    config = launch.make_config(
        options.pyvmm_kernel, options.pyvmm_initrd, memory=options.pyvmm_memory
    )
    folder = options.pyvmm_snapshots
    return snapshot_cache.default_snapshot(config, Path(folder) if folder else None)


@pytest.fixture
def pyvmm_machine(request: pytest.FixtureRequest, pyvmm_factory: Callable[..., Machine]) -> Machine:
    if request.config.option.pyvmm_boot:
        machine = pyvmm_factory().start()
        machine.wait_ready(DEFAULT_TIMEOUT)
        return machine
    snapshot: Path = request.getfixturevalue("pyvmm_snapshot")
    return pyvmm_factory(restore=snapshot).start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        machines: list[Machine] = item.stash.get(_MACHINES, [])
        for i, machine in enumerate(machines):
            report.sections.append((f"pyvmm console {i}", machine.console[-REPORT_TAIL:]))
