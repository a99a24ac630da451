"""``pyvmm run -- CMD`` without a guest: how the command travels, how its
status is read, and bad input refused before anything starts."""

from __future__ import annotations

import base64
from pathlib import Path

from pyvmm.command import CommandWatch, words
from tests.cli_util import one_line_error, pyvmm


def test_arguments_travel_exactly() -> None:
    told = dict(
        w.split("=", 1) for w in words(["printf", "%s|", "a b", "", "'\"$x"], "/w d").split()[1:]
    )
    assert base64.b64decode(told["pyvmm.argv64"]) == b"printf\0%s|\0a b\0\0'\"$x\0"
    assert base64.b64decode(told["pyvmm.cwd64"]) == b"/w d"
    assert words(["true"], "/").startswith("pyvmm.run ")


def test_the_status_line_is_found_across_pieces() -> None:
    watch = CommandWatch()
    for piece in [b"boot\r\n--- pyvmm.cmd end: sta", b"tus 42 ---\r", b"\n[  1.0] reboot\r\n"]:
        watch(piece)
    assert watch.status == 42
    assert list(watch.lines) == ["boot", "--- pyvmm.cmd end: status 42 ---", "[  1.0] reboot"]
    other = CommandWatch()
    other(b"echo '--- pyvmm.cmd end: status 3 ---'\n")  # not the line itself
    assert other.status is None


def test_bad_input_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    for args, fragment in [
        (["--"], "nothing to run"),
        (["--share", str(tmp_path / "missing"), "--", "true"], "no such directory"),
        (["--share", str(tmp_path / "file"), "--", "true"], "not a directory"),
        (["--share", f"{tmp_path}:relative", "--", "true"], "absolute"),
        (["--cwd", "relative", "--", "true"], "not an absolute path"),
        (["--timeout", "5"], "go with '-- CMD'"),
        (["--restore", str(tmp_path), "--", "true"], "--restore does not go with"),
    ]:
        one_line_error(pyvmm("run", *args), fragment)
    one_line_error(pyvmm("inspect", "x", "--", "true"), "go with pyvmm run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
