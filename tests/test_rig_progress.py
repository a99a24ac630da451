"""The rig's resume file (tests/rig_progress.py): a run that dies part-way is
gone on from, not started over, and a failure before the death still fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TESTS = """
import os

def test_one():
    pass

def test_two():
    assert os.environ.get("FAIL_TWO") != "1"

def test_three():
    if os.environ.get("DIE_IN_THREE") == "1":
        os._exit(137)  # as L1 dies: no report, no session end

def test_four():
    pass
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with the four tests above."""
    (tmp_path / "test_it.py").write_text(TESTS)
    return tmp_path


def pytest_run(folder: Path, done: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest on ``folder`` with the plugin, ``PYVMM_RIG_DONE`` set to ``done``
    (taken out of the environment when None)."""
    base = {k: v for k, v in os.environ.items() if k != "PYVMM_RIG_DONE"}
    if done is not None:
        base["PYVMM_RIG_DONE"] = str(done)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.rig_progress", "test_it.py"],
        cwd=folder, capture_output=True, text=True, timeout=120,
        env={**base, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **env},
    )  # fmt: skip


def test_a_second_run_goes_on_after_the_tests_the_first_ended(folder: Path) -> None:
    done = folder / "done"
    first = pytest_run(folder, done, DIE_IN_THREE="1")
    assert first.returncode == 137
    assert done.read_text().splitlines() == [
        "passed test_it.py::test_one",
        "passed test_it.py::test_two",
    ]
    second = pytest_run(folder, done)
    assert second.returncode == 0, second.stdout
    assert "2 passed, 2 deselected" in second.stdout
    assert "2 tests ended in an earlier L1 and were left out" in second.stdout
    # Everything has ended: a third run has nothing left and still succeeds.
    third = pytest_run(folder, done)
    assert third.returncode == 0, third.stdout
    assert "4 deselected" in third.stdout


def test_a_failure_before_the_death_still_fails_the_run(folder: Path) -> None:
    done = folder / "done"
    first = pytest_run(folder, done, DIE_IN_THREE="1", FAIL_TWO="1")
    assert first.returncode == 137
    assert "failed test_it.py::test_two" in done.read_text()
    second = pytest_run(folder, done)
    assert second.returncode == 1, second.stdout
    assert "FAILED in an earlier L1: test_it.py::test_two" in second.stdout


def test_a_test_marked_again_runs_once_more_alone(folder: Path) -> None:
    done = folder / "done"
    first = pytest_run(folder, done, FAIL_TWO="1")
    assert first.returncode == 1
    # What scripts/nested-kvm.sh --retry-failed does before the next L1.
    done.write_text(done.read_text().replace("failed ", "again "))
    second = pytest_run(folder, done)
    assert second.returncode == 0, second.stdout
    assert "1 passed, 3 deselected" in second.stdout
    assert "ran again after failing in an earlier L1: test_it.py::test_two" in second.stdout


def test_without_the_variable_nothing_is_written_or_left_out(folder: Path) -> None:
    run = pytest_run(folder, None)
    assert run.returncode == 0 and "4 passed" in run.stdout, run.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["test_it.py"]
