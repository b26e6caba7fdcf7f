"""The SSH runner: Raspberry Pi and other Linux boards (and, through AppleDevice, a Mac).

What it guarantees:
- the host key is checked against known_hosts; an unknown host is refused with its fingerprint
  unless the inventory entry sets `accept_unknown_host: true`; a changed key is always refused;
- key authentication only (no passwords, no agent, no ~/.ssh key guessing);
- every remote command is an argument list joined with shell quoting (`shlex.join`), so model
  paths or names with spaces, quotes or `;` reach the device intact and are never interpreted;
- the agent and each bundle are pushed once per run (content-addressed) and verified by sha256
  on the device; free space is checked before the upload;
- every command has a timeout (the agent also stops itself); a dropped connection is retried
  `retries` times with a fresh connection; `cleanup()` removes the work dir it created;
- a failure is called a lost connection only when the connection is gone: a key file that cannot
  be loaded, a refused key, a server without SFTP, a command killed on the device, a folder that
  cannot be written (permissions, a file in the path, a full or read-only disk) are each named.
"""

from __future__ import annotations

import io
import posixpath
import shlex
import time
from pathlib import Path
from typing import Any

from edge_export.devices.inventory import SshSpec
from edge_export.devices.ssh_diagnosis import describe, reason, still_connected
from edge_export.devices.ssh_login import connect_error, host_key_policy, load_key
from edge_export.devices.ssh_sftp import SftpAccess
from edge_export.errors import DeviceError, MissingDependencyError


class _ConnectionLost(Exception):
    """The SSH transport died under a command (retried with a new connection)."""


class SshDevice(SftpAccess):
    """A Linux (or macOS) machine reached over SSH, running the pushed agent with its Python."""

    kind = "ssh"

    def __init__(self, name: str, spec: SshSpec) -> None:
        super().__init__(name, spec)
        self.work_dir = spec.work_dir or f"/tmp/edge-export-{spec.user or 'device'}"
        self._client: Any = None

    # -- connection -------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """user@host:port, for messages."""
        return f"{self.spec.user + '@' if self.spec.user else ''}{self.spec.host}:{self.spec.port}"

    def _connect(self) -> Any:
        """A logged-in paramiko client; each way the server can refuse is a DeviceError naming it."""
        try:
            import paramiko
        except ImportError as exc:
            raise MissingDependencyError("devices", "the ssh device runner") from exc
        spec = self.spec
        key = load_key(self)
        client = paramiko.SSHClient()
        known = (spec.known_hosts or Path("~/.ssh/known_hosts")).expanduser()
        if known.is_file():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(host_key_policy(self, known))
        try:
            client.connect(
                spec.host, port=spec.port, username=spec.user, pkey=key,
                timeout=spec.connect_timeout_s, banner_timeout=spec.connect_timeout_s,
                auth_timeout=spec.connect_timeout_s, allow_agent=False, look_for_keys=False,
            )  # fmt: skip
        except DeviceError:
            client.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            error = connect_error(self, exc, client, key, known)
            client.close()
            raise error from exc
        return client

    def _session(self) -> Any:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            self._drop()
            self._client = self._connect()
        return self._client

    def _disconnect(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _retrying(self, what: str, action: Any) -> Any:
        """Run action(client); on a dropped connection reconnect and retry up to `retries` times.
        A DeviceError from the action (a cause already named) is raised as it is."""
        import paramiko

        failed = ""  # how the previous attempt failed, once one did
        for attempt in range(self.spec.retries + 1):
            try:
                client = self._session()
            except DeviceError as exc:
                if not failed:
                    raise
                raise DeviceError(
                    self.name, f"{failed}; reconnecting failed: {exc.message.split(': ', 1)[-1]}",
                    hint="check the device's power and network; the run can be repeated",
                ) from exc  # fmt: skip
            try:
                return action(client)
            except (_ConnectionLost, paramiko.SSHException, EOFError, ConnectionError) as exc:
                up = not isinstance(exc, _ConnectionLost) and still_connected(
                    client.get_transport(), self.spec.connect_timeout_s
                )
                self._drop()
                failed = (
                    f"{what} on {self.where} failed while the connection stayed up ({describe(exc)})"
                    if up
                    else f"connection to {self.where} lost during {what} ({describe(exc)})"
                )
                if attempt == self.spec.retries:
                    hint = None if up else "check the device's power and network; the run can be repeated"
                    raise DeviceError(self.name, failed, hint=hint) from exc
                time.sleep(min(0.5 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    # -- commands and files -----------------------------------------------------------------------
    def execute(self, argv: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        """Run one command (an argument list, quoted for the remote shell); (exit code, out, err)."""
        command = shlex.join(argv)
        timeout = timeout_s or self.spec.command_timeout_s

        def once(client: Any) -> tuple[int, str, str]:
            transport = client.get_transport()
            channel = transport.open_session(timeout=self.spec.connect_timeout_s)
            channel.exec_command(command)
            channel.shutdown_write()
            out, err = self._collect(channel, transport, timeout, argv)
            code = channel.recv_exit_status()
            channel.close()
            if code == -1 and still_connected(transport, self.spec.connect_timeout_s):
                raise DeviceError(
                    self.name, f"'{argv[0]}' ended without an exit status while the connection stayed up "
                    "(a command killed by a signal ends that way; paramiko does not say which signal)",
                    command=argv, stderr=err, hint="look in the device's kernel log (dmesg) for what killed it",
                )  # fmt: skip
            if code == -1:  # closed without an exit status: the server side went away
                raise _ConnectionLost("the connection closed before the command finished")
            return code, out, err

        return self._retrying(f"'{argv[0]}'", once)

    def _collect(self, channel: Any, transport: Any, timeout: float, argv: list[str]) -> tuple[str, str]:
        """stdout and stderr of a started command, read until it exits (or times out, or the
        connection goes)."""
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(1 << 16)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(1 << 16)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                return out.decode(errors="replace"), err.decode(errors="replace")
            if not transport.is_active():
                raise _ConnectionLost("the connection closed under the command")
            if time.monotonic() > deadline:
                channel.close()
                raise DeviceError(
                    self.name, f"command timed out after {timeout:.0f}s: {argv[0]} {' '.join(argv[1:3])}",
                    command=argv, hint="raise 'command_timeout_s' in the device entry",
                )  # fmt: skip
            time.sleep(0.01)

    def _upload(self, files: dict[str, Path | bytes], remote_root: str) -> None:
        """Copy files (relative path -> local file or bytes) under remote_root, making folders."""

        def once(client: Any) -> None:
            sftp = self._open_sftp(client)
            try:
                made: set[str] = set()
                for rel, source in files.items():
                    target = posixpath.join(remote_root, rel)
                    self._makedirs(sftp, posixpath.dirname(target), made)
                    # opened here, so that an OSError from putfo is the device's, not this machine's
                    local = io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")
                    size = len(source) if isinstance(source, bytes) else source.stat().st_size
                    with local:
                        try:
                            sftp.putfo(local, target, file_size=size, confirm=True)
                        except OSError as exc:
                            raise self._write_failure(
                                f"upload of {rel} to {target}", target, exc, size
                            ) from exc
            finally:
                sftp.close()

        self._retrying("the upload", once)

    def _download(self, remote: str, local: Path) -> bool:
        """Copy one remote file here; False when it does not exist."""

        def once(client: Any) -> bool:
            sftp = self._open_sftp(client)
            try:
                sftp.get(remote, str(local))
                return True
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise DeviceError(
                    self.name, f"download of {remote} to {local} failed: {reason(exc)}"
                ) from exc
            finally:
                sftp.close()

        return self._retrying("the download", once)
