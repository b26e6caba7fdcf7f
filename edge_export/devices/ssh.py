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
  `retries` times with a fresh connection; `cleanup()` removes the work dir it created.
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import shlex
import time
from pathlib import Path
from typing import Any

from edge_export.devices.inventory import DeviceSpec
from edge_export.devices.remote import RemoteAgentDevice
from edge_export.errors import DeviceError, MissingDependencyError


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _ConnectionLost(Exception):
    """The SSH transport died under a command (retried with a new connection)."""


class SshDevice(RemoteAgentDevice):
    """A Linux (or macOS) machine reached over SSH, running the pushed agent with its Python."""

    kind = "ssh"

    def __init__(self, name: str, spec: DeviceSpec) -> None:
        super().__init__(name, spec)
        self.work_dir = spec.work_dir or f"/tmp/edge-export-{spec.user or 'device'}"
        self._client: Any = None

    # -- connection -------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """user@host:port, for messages."""
        return f"{self.spec.user + '@' if self.spec.user else ''}{self.spec.host}:{self.spec.port}"

    def _connect(self) -> Any:
        try:
            import paramiko
        except ImportError as exc:
            raise MissingDependencyError("devices", "the ssh device runner") from exc
        spec = self.spec
        if spec.key_file is not None and not spec.key_file.expanduser().is_file():
            raise DeviceError(
                self.name, f"key file {spec.key_file} does not exist",
                hint="set 'key_file' in the device entry to the private key the device accepts",
            )  # fmt: skip
        client = paramiko.SSHClient()
        known = (spec.known_hosts or Path("~/.ssh/known_hosts")).expanduser()
        if known.is_file():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_policy(self, known))
        try:
            client.connect(
                spec.host, port=spec.port, username=spec.user,
                key_filename=str(spec.key_file.expanduser()) if spec.key_file else None,
                timeout=spec.connect_timeout_s, banner_timeout=spec.connect_timeout_s,
                auth_timeout=spec.connect_timeout_s, allow_agent=False, look_for_keys=False,
            )  # fmt: skip
        except DeviceError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise DeviceError(
                self.name,
                f"host key mismatch for {self.where}: known_hosts has {fingerprint(exc.expected_key)}, "
                f"the host offered {fingerprint(exc.key)}; refusing to connect",
                hint=f"if the device was re-installed, verify the new key and replace its line in {known}",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise DeviceError(
                self.name, f"authentication failed for {self.where}: {exc}",
                hint="check 'user' and 'key_file' in the device entry and the device's authorized_keys",
            ) from exc  # fmt: skip
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            reason = _reason(exc)
            raise DeviceError(
                self.name, f"cannot connect to {self.where}: {reason}",
                hint="check that the device is on, reachable, and that sshd listens on that port",
            ) from exc  # fmt: skip
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
        """Run action(client); on a dropped connection reconnect and retry up to `retries` times."""
        import paramiko

        lost: Exception | None = None
        for attempt in range(self.spec.retries + 1):
            try:
                return action(self._session())
            except DeviceError as exc:
                if lost is None:
                    raise
                raise DeviceError(
                    self.name, f"connection to {self.where} lost during {what} ({lost}); reconnecting failed: "
                    f"{exc.message.split(': ', 1)[-1]}",
                    hint="check the device's power and network; the run can be repeated",
                ) from exc  # fmt: skip
            except (_ConnectionLost, paramiko.SSHException, EOFError, ConnectionError) as exc:
                lost = exc
                self._drop()
                if attempt == self.spec.retries:
                    raise DeviceError(
                        self.name, f"connection to {self.where} lost during {what}: {exc}",
                        hint="check the device's power and network; the run can be repeated",
                    ) from exc  # fmt: skip
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
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                while channel.recv_ready():
                    out += channel.recv(1 << 16)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 16)
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    break
                if not transport.is_active():
                    raise _ConnectionLost("the connection closed under the command")
                if time.monotonic() > deadline:
                    channel.close()
                    raise DeviceError(
                        self.name, f"command timed out after {timeout:.0f}s: {argv[0]} {' '.join(argv[1:3])}",
                        command=argv, hint="raise 'command_timeout_s' in the device entry",
                    )  # fmt: skip
                time.sleep(0.01)
            code = channel.recv_exit_status()
            channel.close()
            if code == -1:  # closed without an exit status: the server side went away
                raise _ConnectionLost("the connection closed before the command finished")
            return code, out.decode(errors="replace"), err.decode(errors="replace")

        return self._retrying(f"'{argv[0]}'", once)

    def _upload(self, files: dict[str, Path | bytes], remote_root: str) -> None:
        """Copy files (relative path -> local file or bytes) under remote_root, making folders."""

        def once(client: Any) -> None:
            sftp = client.open_sftp()
            try:
                made: set[str] = set()
                for rel, source in files.items():
                    target = posixpath.join(remote_root, rel)
                    _makedirs(sftp, posixpath.dirname(target), made)
                    try:
                        if isinstance(source, bytes):
                            sftp.putfo(io.BytesIO(source), target, confirm=True)
                        else:
                            sftp.put(str(source), target, confirm=True)
                    except OSError as exc:
                        raise DeviceError(
                            self.name, f"upload of {rel} to {target} failed: {exc or type(exc).__name__}",
                            hint="check free space and permissions of 'work_dir' on the device",
                        ) from exc  # fmt: skip
            finally:
                sftp.close()

        self._retrying("the upload", once)

    def _download(self, remote: str, local: Path) -> bool:
        """Copy one remote file here; False when it does not exist."""

        def once(client: Any) -> bool:
            sftp = client.open_sftp()
            try:
                sftp.get(remote, str(local))
                return True
            except FileNotFoundError:
                return False
            finally:
                sftp.close()

        return self._retrying("the download", once)


def _reason(exc: BaseException) -> str:
    """The OS reason of a failed connect ("Connection refused", "timed out"), not paramiko's wrapper."""
    errors = getattr(exc, "errors", None)  # NoValidConnectionsError: address -> OSError
    if errors:
        exc = next(iter(errors.values()))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _makedirs(sftp: Any, path: str, made: set[str]) -> None:
    if not path or path in made or path == "/":
        return
    try:
        sftp.stat(path)
    except FileNotFoundError:
        _makedirs(sftp, posixpath.dirname(path), made)
        sftp.mkdir(path)
    made.add(path)


def _policy(device: SshDevice, known: Path) -> Any:
    """Refuse unknown host keys (printing the fingerprint) unless the entry opts in."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if device.spec.accept_unknown_host:
                client.get_host_keys().add(hostname, key.get_name(), key)  # this run only
                return
            port = device.spec.port
            scan = (
                f"ssh-keyscan -p {port} {device.spec.host}"
                if port != 22
                else f"ssh-keyscan {device.spec.host}"
            )
            raise DeviceError(
                device.name,
                f"unknown host key for {device.where}: {key.get_name()} {fingerprint(key)}; refusing to connect",
                hint=f"verify the fingerprint on the device, then add it: {scan} >> {known} "
                "(or set accept_unknown_host: true in the device entry)",
            )

    return Policy()
