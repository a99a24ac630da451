"""virtio-net under Linux (KVM), two guests booted at once:

- ``--net tap:tap0`` in a network namespace the test makes (root): the
  guest pings the host's side of the tap and moves 1 MiB each way over TCP
  with the same checksum at both ends;
- ``--net user`` (passt): the guest, told its address on the command line,
  fetches 1 MiB from a server the test runs on the host's 127.0.0.1 through
  the gateway address.

Nothing leaves the namespace or the host's loopback address."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
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


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with a tap device, tap0, at 192.168.77.1/24."""
    if os.geteuid() != 0 or shutil.which("ip") is None or not Path("/dev/net/tun").exists():
        pytest.skip("needs root, iproute2 and /dev/net/tun for a tap in a network namespace")
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


def test_tap_and_user_networks(namespace: str, tmp_path: Path) -> None:
    if shutil.which("passt") is None:
        pytest.skip("--net user needs passt (apt-get install passt)")
    payload = os.urandom(MiB)
    (tmp_path / "blob").write_bytes(payload)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = web.server_address[1]
    server = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        user_script = (
            f'wget -q -O /tmp/blob http://10.0.2.2:{port}/blob; echo "wget $?"\n'
            'echo "fetched $(md5sum < /tmp/blob)"\n'
        )
        tap = run_guest(TAP_SCRIPT, "--net", "tap:tap0", netns=namespace)
        user = run_guest(user_script, "--net", "user")
        tap_out, tap_err = tap.communicate(timeout=BOOT_TIMEOUT)
        user_out, user_err = user.communicate(timeout=BOOT_TIMEOUT)
        served, _ = server.communicate(timeout=60)
    finally:
        web.shutdown()
        for p in (server,):
            if p.poll() is None:
                p.kill()
                p.communicate()

    assert tap.returncode == 0, tap_err + tap_out[-3000:]
    assert "pinged\n" in tap_out, tap_out[-3000:]
    sent = re.search(r"^sent (\w+)", tap_out, re.M)
    got = re.search(r"^got (\w+)", tap_out, re.M)
    assert sent and f"received {sent.group(1)} {MiB}\n" in served, (tap_out[-2000:], served)
    assert got and f"served {got.group(1)}\n" in served, (tap_out[-2000:], served)

    assert user.returncode == 0, user_err + user_out[-3000:]
    assert "wget 0\n" in user_out, user_out[-3000:]
    assert f"fetched {hashlib.md5(payload).hexdigest()}" in user_out
