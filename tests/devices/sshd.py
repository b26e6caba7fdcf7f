"""A real OpenSSH sshd on 127.0.0.1 for the SSH and apple runner tests (a test double for a board).

Each instance has its own generated host key, a key-only login for the current user, and a
known_hosts file that trusts exactly that host key. `drop()` kills the daemon and every session
it forked, the way a board that loses power drops a run.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> Path:
    """An ed25519 key pair without passphrase; returns the private key path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class LocalSshd:
    """sshd -D on a free 127.0.0.1 port; stop() (or drop()) ends it and all its sessions."""

    def __init__(self, root: Path, sftp: str | None = "internal-sftp") -> None:
        """A daemon rooted at `root` (keys, config, log). `sftp` is the program of its `Subsystem sftp`
        line (a path that does not exist there makes a broken one); None leaves the line out, as on a
        board whose sshd has no SFTP."""
        if not Path(SSHD).is_file():
            raise RuntimeError(f"{SSHD} is missing: install Debian's openssh-server (`make setup` does)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = free_port()
        self.host_key = root / "host_ed25519"
        if not self.host_key.exists():
            keygen(self.host_key)
        self.client_key = root / "client_ed25519"
        if not self.client_key.exists():
            keygen(self.client_key)
        (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {self.host_key.with_suffix('.pub').read_text()}"
        )
        self.config = root / "sshd_config"
        subsystem = f"Subsystem sftp {sftp}\n" if sftp is not None else ""
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n"
            f"PermitRootLogin prohibit-password\n{subsystem}LogLevel ERROR\nMaxStartups 50\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalSshd:
        """Start the daemon and wait until it accepts connections."""
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        log = (self.root / "sshd.log").open("ab")
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)], stderr=log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def drop(self) -> None:
        """Kill the daemon and every session it forked (a board losing power mid-run)."""
        if self.proc is None:
            return
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    stop = drop

    def spec(self, **overrides: object) -> dict[str, object]:
        """An inventory entry that reaches this daemon."""
        entry: dict[str, object] = {
            "type": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
            "key_file": str(self.client_key), "known_hosts": str(self.known_hosts),
        }  # fmt: skip
        entry.update(overrides)
        return entry


@pytest.fixture(scope="module", name="sshd")
def sshd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    """One sshd per test module that imports this fixture, stopped (with every session it forked)
    after the module."""
    daemon = LocalSshd(tmp_path_factory.mktemp("sshd")).start()
    yield daemon
    daemon.stop()
