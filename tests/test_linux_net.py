"""virtio-net under Linux (KVM), two guests booted at once (a module fixture):

- ``--net tap:tap0`` in a network namespace the test makes (root): the
  guest pings the host's side of the tap and moves 1 MiB each way over TCP
  with the same checksum at both ends;
- ``--net user`` (passt): the guest, told its address on the command line,
  fetches 1 MiB from a server the test runs on the host's 127.0.0.1 through
  the gateway address.

Nothing leaves the namespace or the host's loopback address."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]

BOOT_TIMEOUT = 900
MiB = 1 << 20
HOST, GUEST = "192.168.77.1", "192.168.77.2"

TAP_SCRIPT = f"""
ip addr add {GUEST}/24 dev eth0
ping -c 3 -W 5 {HOST} >/dev/null && echo pinged
dd if=/dev/urandom of=/tmp/out bs=1024 count=1024 2>/dev/null
echo "sent $(md5sum < /tmp/out)"
nc {HOST} 5001 < /tmp/out
nc {HOST} 5002 > /tmp/in
echo "got $(md5sum < /tmp/in)"
"""

# In the namespace: take 1 MiB on port 5001, give 1 MiB on 5002, print both sums.
SERVER = f"""
import hashlib, os, socket, sys
out = os.urandom({MiB})
listeners = []
for port in (5001, 5002):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{HOST}", port))
    s.listen(1)
    listeners.append(s)
print("ready", flush=True)
conn, _ = listeners[0].accept()
data = b""
while len(data) < {MiB}:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
conn.close()
print("received", hashlib.md5(data).hexdigest(), len(data), flush=True)
conn, _ = listeners[1].accept()
conn.sendall(out)
conn.close()
print("served", hashlib.md5(out).hexdigest(), flush=True)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Ran:
    """A guest that ran its script: status, output, and what the host side saw."""

    status: int
    out: str
    err: str
    host: str = ""


def passt_usable() -> str | None:
    """Why ``--net user`` cannot work here (passt needs an interface with a
    default route to copy), or None."""
    if shutil.which("passt") is None:
        return "--net user needs passt (apt-get install passt)"
    routes = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True)
    if not routes.stdout.strip():
        return "passt needs a host interface with a default route"
    return None


def start_tap_guest(name: str) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """The namespace's receiver, ready, and the guest on its tap."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline() == "ready\n"
    return server, run_guest(TAP_SCRIPT, "--net", "tap:tap0", netns=name)


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Ran | str]]:
    """Both guests, booted at once; a string says why one could not run."""
    if os.geteuid() != 0 or shutil.which("ip") is None or not Path("/dev/net/tun").exists():
        pytest.skip("needs root, iproute2 and /dev/net/tun for a tap in a network namespace")
    folder = tmp_path_factory.mktemp("net")
    payload = os.urandom(MiB)
    (folder / "blob").write_bytes(payload)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    user_script = (
        f'wget -q -O /tmp/blob http://10.0.2.2:{web.server_address[1]}/blob; echo "wget $?"\n'
        'echo "fetched $(md5sum < /tmp/blob)"\n'
    )
    results: dict[str, Ran | str] = {}
    with namespace() as name:
        server, tap = start_tap_guest(name)
        why_not = passt_usable()
        user = run_guest(user_script, "--net", "user") if why_not is None else None
        try:
            out, err = tap.communicate(timeout=BOOT_TIMEOUT)
            try:
                served, _ = server.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # the guest's side says why
                server.kill()
                served = server.communicate()[0] + "(server still waiting 60 s after the guest)\n"
            results["tap"] = Ran(tap.returncode, out, err, served)
            if user is not None:
                out, err = user.communicate(timeout=BOOT_TIMEOUT)
                results["user"] = Ran(user.returncode, out, err, hashlib.md5(payload).hexdigest())
            else:
                results["user"] = str(why_not)
        finally:
            web.shutdown()
            for p in (server, tap, user):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.communicate()
    yield results


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A network namespace with a tap device, tap0, at 192.168.77.1/24."""
    name = f"pyvmm-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "tuntap", "add", "tap0", "mode", "tap")
        ip("-n", name, "addr", "add", f"{HOST}/24", "dev", "tap0")
        ip("-n", name, "link", "set", "tap0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_guest(script: str, *options: str, netns: str | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--memory", "256M", *options,
           "--cmdline", f"pyvmm.cmd64={base64.b64encode(script.encode()).decode()}"]  # fmt: skip
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_tap_in_a_network_namespace(guests: dict[str, Ran | str]) -> None:
    tap = guests["tap"]
    assert isinstance(tap, Ran)
    assert tap.status == 0, tap.err + tap.out[-3000:]
    assert "pinged\n" in tap.out, tap.out[-3000:]
    sent = re.search(r"^sent (\w+)", tap.out, re.M)
    got = re.search(r"^got (\w+)", tap.out, re.M)
    assert sent and f"received {sent.group(1)} {MiB}\n" in tap.host, (tap.out[-2000:], tap.host)
    assert got and f"served {got.group(1)}\n" in tap.host, (tap.out[-2000:], tap.host)


def test_passt_reaches_the_hosts_loopback(guests: dict[str, Ran | str]) -> None:
    user = guests["user"]
    if isinstance(user, str):
        pytest.skip(user)
    assert user.status == 0, user.err + user.out[-3000:]
    assert "wget 0\n" in user.out, user.out[-3000:]
    assert f"fetched {user.host}" in user.out
