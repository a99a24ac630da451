"""pytest plugin: fixtures that boot guests, and their consoles in failure reports.

Installed with pyvmm (entry point ``pytest11``). Fixtures:

- ``pyvmm_factory``: call it with :class:`pyvmm.Machine` keyword arguments
  to get a machine (not yet started); every one is closed after the test.
- ``pyvmm_machine``: a started default guest whose shell is ready.

Options: ``--pyvmm-kernel``, ``--pyvmm-initrd`` (instead of the default
guest), ``--pyvmm-memory``. When a test fails, the console of each of its
machines is added to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyvmm.api import DEFAULT_TIMEOUT, Machine

#: Console characters shown in a failure report, per machine.
REPORT_TAIL = 8000
_MACHINES = pytest.StashKey[list[Machine]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyvmm", "pyvmm guests")
    group.addoption("--pyvmm-kernel", help="kernel for pyvmm fixtures (default: the default guest)")
    group.addoption("--pyvmm-initrd", help="initramfs for pyvmm fixtures")
    group.addoption("--pyvmm-memory", default="512M", help="guest RAM for pyvmm fixtures")


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
        kwargs.setdefault("memory", options.pyvmm_memory)
        machine = Machine(**kwargs)
        machines.append(machine)
        return machine

    yield make
    for machine in machines:
        machine.close()


@pytest.fixture
def pyvmm_machine(pyvmm_factory: Callable[..., Machine]) -> Machine:
    machine = pyvmm_factory().start()
    machine.wait_ready(DEFAULT_TIMEOUT)
    return machine


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        machines: list[Machine] = item.stash.get(_MACHINES, [])
        for i, machine in enumerate(machines):
            report.sections.append((f"pyvmm console {i}", machine.console[-REPORT_TAIL:]))
