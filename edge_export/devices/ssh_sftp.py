"""SFTP on an SSH device, for the SSH runner's uploads and downloads: opening a session and making
folders, with each failure named for what it is rather than called a lost connection: a server
with no SFTP subsystem, an SFTP server that does not start or does not speak SFTP, and a folder
that cannot be written (permission denied, a file in the path, a full or read-only disk).
"""

from __future__ import annotations

import posixpath
import stat
import time
from typing import Any

from edge_export.devices.remote import RemoteAgentDevice
from edge_export.devices.ssh_diagnosis import describe, reason, still_connected
from edge_export.errors import DeviceError

# After SFTP failed to write in a folder ($1): its free space, then the OS's reason for a write there.
WRITE_PROBE = 'df -Pk "$1" | tail -n 1; touch -- "$1/.edge-export-probe" && rm -f -- "$1/.edge-export-probe"'
# What a POSIX shell means by these exit codes (sshd runs the subsystem's command with the login shell).
SHELL_CODES = {
    126: ", the shell's code for a command that is not executable",
    127: ", the shell's code for a command not found",
}
WORK_DIR_HINT = "point 'work_dir' in the device entry at a folder the login user can write"


class SftpAccess(RemoteAgentDevice):
    """The SFTP side of the SSH runner (SshDevice builds on it): sessions opened, folders made, and
    why SFTP failed, each failure a DeviceError that names its cause."""

    @property
    def server(self) -> str:
        """host:port of the device's SSH server, for messages."""
        return f"{self.spec.host}:{self.spec.port}"

    def _open_sftp(self, client: Any) -> Any:
        """An SFTP session (what paramiko's open_sftp does, step by step), so that a server without
        an SFTP subsystem, or whose SFTP server does not start, is named as such: the connection
        stays up in both cases, so neither is a lost connection."""
        import paramiko

        transport = client.get_transport()
        channel = transport.open_session(timeout=self.spec.connect_timeout_s)
        try:
            channel.invoke_subsystem("sftp")
        except paramiko.SSHException as exc:
            channel.close()
            if not still_connected(transport, self.spec.connect_timeout_s):
                raise
            raise DeviceError(
                self.name, f"the SSH server at {self.server} has no SFTP subsystem (it refused the request "
                "for one), which edge-export uses to copy bundles",
                hint="enable `Subsystem sftp internal-sftp` (or the path of its sftp-server) in the device's "
                "sshd_config, then restart sshd",
            ) from exc  # fmt: skip
        try:
            return paramiko.SFTPClient(channel)
        except (paramiko.SSHException, paramiko.SFTPError, EOFError) as exc:
            if not still_connected(transport, self.spec.connect_timeout_s):
                channel.close()
                raise
            raise self._sftp_start_failure(channel, exc) from exc

    def _sftp_start_failure(self, channel: Any, exc: Exception) -> DeviceError:
        """The server accepted the SFTP subsystem but what runs behind it did not speak SFTP: it ended
        (its exit status and last stderr line say why) or it sent something else first."""
        deadline = time.monotonic() + 2.0  # its status, then (sent after it) the rest of its stderr
        while not (channel.exit_status_ready() and channel.eof_received) and time.monotonic() < deadline:
            time.sleep(0.02)
        code = channel.recv_exit_status() if channel.exit_status_ready() else -1
        err = bytearray()
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(1 << 16)
        channel.close()
        last = err.decode(errors="replace").strip().splitlines()[-1:]
        if code != -1:
            status = f"exit {code}{SHELL_CODES.get(code, '')}"
            what = f"ended without answering ({': '.join([status, *last])[:300]})"
            hint = "point the `Subsystem sftp` line of the device's sshd_config at an sftp-server that "
            hint += "exists there (or at internal-sftp), then restart sshd"
        else:
            what = f"did not answer in SFTP (paramiko: {describe(exc)})"
            hint = "make the login user's shell start-up files (e.g. .bashrc) print nothing when the "
            hint += "session is not interactive: the SFTP client reads that output as protocol"
        return DeviceError(
            self.name,
            f"the SFTP server behind the SSH server at {self.server} {what}; edge-export uses SFTP to copy bundles",
            hint=hint,
        )

    def _write_failure(self, what: str, path: str, exc: OSError, size: int) -> DeviceError:
        """Why SFTP could not write `path` (a file or a new folder): the status the server sent when it
        names one (permission denied), else what the folder shows: the OS's reason a new file there
        fails (e.g. a read-only file system), or no free space. SFTP v3 sends a bare "Failure" for
        both of those, and paramiko sometimes only notices the short file ("size mismatch")."""
        said = reason(exc)
        if isinstance(exc, PermissionError):
            user = self.spec.user or "the login user"
            return DeviceError(
                self.name, f"{what} failed: permission denied (logged in as {user})", hint=WORK_DIR_HINT
            )
        folder = posixpath.dirname(path)
        free_kb, write_error = self._probe_folder(folder)
        if write_error:
            return DeviceError(
                self.name, f"{what} failed: {folder} cannot be written: {write_error} (SFTP: "
                f"{said})", hint=WORK_DIR_HINT,
            )  # fmt: skip
        if free_kb is not None and free_kb * 1024 < max(size, 1):
            needed = f" for {size / 2**20:.1f} MB" if size else ""
            return DeviceError(
                self.name, f"{what} failed: no space left on the device ({free_kb / 1024:.1f} MB free in "
                f"{folder}{needed}; SFTP: {said})",
                hint="free space on the device or point 'work_dir' at a larger disk",
            )  # fmt: skip
        return DeviceError(
            self.name, f"{what} failed: {said}",
            hint="check free space and permissions of 'work_dir' on the device",
        )  # fmt: skip

    def _probe_folder(self, folder: str) -> tuple[int | None, str | None]:
        """(free KB, the OS's error for creating a file there) of a folder SFTP failed to write in;
        Nones for what the probe cannot tell."""
        try:
            code, out, err = self.execute(["sh", "-c", WRITE_PROBE, "sh", folder], timeout_s=60)
        except DeviceError:
            return None, None
        fields = (out.strip().splitlines() or [""])[-1].split()
        free_kb = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None
        lines = err.strip().splitlines()
        return free_kb, (lines[-1].rsplit(": ", 1)[-1] if code != 0 and lines else None)

    def _makedirs(self, sftp: Any, path: str, made: set[str]) -> None:
        """Make `path` and its missing parents over SFTP; a file in the way is named as such."""
        if not path or path in made or path == "/":
            return
        try:
            attributes = sftp.stat(path)
        except FileNotFoundError:  # SFTP reports "not a directory" as "no such file" too
            self._makedirs(sftp, posixpath.dirname(path), made)
            try:
                sftp.mkdir(path)
            except OSError as exc:
                raise self._write_failure(f"creating the folder {path}", path, exc, 0) from exc
        except OSError as exc:
            raise DeviceError(self.name, f"cannot look up {path} on the device: {reason(exc)}",
                              hint=WORK_DIR_HINT) from exc  # fmt: skip
        else:
            if attributes.st_mode is not None and not stat.S_ISDIR(attributes.st_mode):
                raise DeviceError(
                    self.name, f"{path} on the device is a file, not a folder, so nothing can be stored under it",
                    hint="point 'work_dir' in the device entry at a path with no file in the way",
                )  # fmt: skip
        made.add(path)
