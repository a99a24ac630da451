"""Tests that go on where a hung L1 left off, under scripts/nested-kvm.sh.

L1 under QEMU's TCG hangs now and then, whatever runs in it; the rig then
boots a new L1 and runs the same command again. So that the new L1 does not
start the whole group over (and meet the next hang before it is through), the
rig names a file in its own folder in ``PYVMM_RIG_DONE``. Each test that ends
is written there at once ("passed NODEID" or "failed NODEID"); a later run
with the same file leaves out every test written there, and still ends as
failed if one of them failed. A test the rig marked "again NODEID" (its
``--retry-failed``) runs once more and is named in the report. Without the
variable nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


class RigProgress:
    """The pytest plugin: records each test that ends, skips those already ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.earlier: dict[str, str] = {}
        self.failing: set[str] = set()
        self.left_out = 0

    def _read(self) -> None:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            outcome, _, nodeid = line.partition(" ")
            if outcome in ("passed", "failed", "again") and nodeid:
                self.earlier[nodeid] = outcome

    def _record(self, outcome: str, nodeid: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{outcome} {nodeid}\n")
            f.flush()
            os.fsync(f.fileno())

    def _earlier(self, outcome: str) -> list[str]:
        return sorted(n for n, o in self.earlier.items() if o == outcome)

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        self._read()
        ended = {n for n, outcome in self.earlier.items() if outcome != "again"}
        gone = [item for item in items if item.nodeid in ended]
        if gone:
            config.hook.pytest_deselected(items=gone)
            items[:] = [item for item in items if item.nodeid not in ended]
            self.left_out = len(gone)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun":  # pytest-rerunfailures runs it again
            return
        if report.failed:
            self.failing.add(report.nodeid)
        if report.when == "teardown":
            self._record("failed" if report.nodeid in self.failing else "passed", report.nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        failed_before = self._earlier("failed")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            if self.left_out:
                reporter.write_line(
                    f"rig: {self.left_out} tests ended in an earlier L1 and were left out"
                )
            for nodeid in failed_before:
                reporter.write_line(f"FAILED in an earlier L1: {nodeid}")
            for nodeid in self._earlier("again"):
                reporter.write_line(f"rig: ran again after failing in an earlier L1: {nodeid}")
        if failed_before:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and self.left_out:
            session.exitstatus = pytest.ExitCode.OK


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get("PYVMM_RIG_DONE")
    if path:
        config.pluginmanager.register(RigProgress(Path(path)), "rig-progress")
