"""Print the kernel modules L1 needs, dependencies first, one path each
(relative to MODULE_DIR).

    python3 modules.py MODULE_DIR NAME...

A Debian kernel package ships no modules.dep (depmod writes it when the
package is installed), so each module's dependencies are read from its
own ``.modinfo`` section: the NUL-separated ``depends=a,b`` field. Names
built into the kernel (modules.builtin) need nothing.
"""

import sys
from pathlib import Path


def depends(path: Path) -> list[str]:
    for field in path.read_bytes().split(b"\0"):
        if field.startswith(b"depends="):
            return [d for d in field[len(b"depends=") :].decode().split(",") if d]
    return []


def key(name: str) -> str:
    return name.split(".ko")[0].replace("-", "_")


def main() -> None:
    root, names = Path(sys.argv[1]), sys.argv[2:]
    by_name = {key(p.name): p for p in root.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = by_name.get(key(name))
        if path is None or path in order:
            return  # built in, or already there
        for dep in depends(path):
            visit(dep)
        order.append(path)

    for name in names:
        visit(name)
    print("\n".join(str(p.relative_to(root)) for p in order))


if __name__ == "__main__":
    main()
