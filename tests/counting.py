"""Reading the test guest's counts ("count N\\n", or "count N ok\\n" for
action=memcount) across a pause, a snapshot or a migration.

A guest can be stopped in the middle of a line: the original's console then
ends with "count 2" and its clone's begins with "6\\n". So a resumed guest is
checked on the two consoles joined, never on its first line alone.
"""

import re

COUNT = re.compile(r"^count (\d+)(?: (ok|BAD))?\n", re.M)


def numbers(console: str) -> list[int]:
    """The counts of every complete line."""
    return [int(m[1]) for m in COUNT.finditer(console)]


def verdicts(console: str) -> list[str]:
    """The "ok"/"BAD" words of action=memcount's lines."""
    return [m[2] for m in COUNT.finditer(console)]


def goes_on(before: str, after: str) -> list[int]:
    """The counts a guest completed after it resumed; asserts that, read on
    from ``before`` (what it printed until it stopped), nothing was lost or
    printed twice."""
    seen = numbers(before + after)
    assert seen == list(range(seen[0], seen[0] + len(seen))), seen
    return seen[len(numbers(before)) :]
