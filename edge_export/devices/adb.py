"""The adb runner: an Android device through the `adb` client (Debian's package, or the SDK's).

The bundle and the agent go to `/data/local/tmp/edge-export` (the one folder a shell user may
write on every Android device), are verified by sha256 there, and the agent runs with the
device's Python (Termux, or any `python` the entry names). Device facts come from `getprop`.
Every command is an argument list quoted for the device's shell; the adb server port and the
device serial are the entry's. A device that goes offline is reconnected (`adb disconnect` +
`adb connect` for network serials, `wait-for-device` for USB) up to `retries` times.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_export.devices.inventory import AdbSpec
from edge_export.devices.remote import RemoteAgentDevice
from edge_export.errors import DeviceError

PROPS = {
    "ro.product.manufacturer": "manufacturer",
    "ro.product.model": "model",
    "ro.soc.manufacturer": "soc_manufacturer",
    "ro.soc.model": "soc",
    "ro.board.platform": "platform",
    "ro.product.cpu.abi": "abi",
    "ro.build.version.release": "android",
    "ro.build.version.sdk": "sdk",
}
_OFFLINE = re.compile(
    r"error: .*(device offline|device .* not found|no devices|device not found|closed|protocol fault)"
)
_PROP_LINE = re.compile(r"^\[([^\]]+)\]: \[(.*)\]$")


def _client_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The adb client's last error line: push/pull print theirs on stdout ("adb: error: ...")."""
    for stream in (proc.stderr, proc.stdout):
        lines = [line for line in stream.strip().splitlines() if line.strip()]
        if lines and (stream is proc.stderr or "error:" in lines[-1]):
            return lines[-1].strip()
    return ""


class AdbDevice(RemoteAgentDevice):
    """An Android device (USB or network serial) reached through an adb server."""

    kind = "adb"
    default_work_dir = "/data/local/tmp/edge-export"

    def __init__(self, name: str, spec: AdbSpec) -> None:
        super().__init__(name, spec)
        self.serial = str(spec.serial)
        self._connected = False

    @property
    def where(self) -> str:
        """The serial and the adb server it is reached through."""
        return f"{self.serial} (adb server port {self.spec.adb_server_port})"

    # -- the adb client ---------------------------------------------------------------------------
    def _adb(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        command = [self.spec.adb, "-P", str(self.spec.adb_server_port), *args]
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as exc:
            raise DeviceError(
                self.name, f"the adb client '{self.spec.adb}' is not installed",
                hint="install Debian's adb package (or the SDK platform-tools) or set 'adb' in the device entry",
            ) from exc  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(
                self.name, f"command timed out after {timeout_s:.0f}s: adb {' '.join(args[:3])[:120]}",
                command=command, hint="raise 'command_timeout_s' in the device entry",
            ) from exc  # fmt: skip

    def _connect(self) -> None:
        timeout = self.spec.connect_timeout_s
        if ":" in self.serial:  # a network serial: (re)attach it to the adb server
            self._adb(["disconnect", self.serial], timeout)
            proc = self._adb(["connect", self.serial], timeout + 5)
            if "connected to" not in proc.stdout:
                reason = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no answer"]
                raise DeviceError(
                    self.name, f"cannot connect to {self.where}: {reason[0]}",
                    hint="check the device's address and that adb over the network is on (`adb tcpip 5555`)",
                )  # fmt: skip
        try:
            self._adb(["-s", self.serial, "wait-for-device"], timeout)
        except DeviceError as exc:
            raise DeviceError(
                self.name, f"device {self.where} did not come online within {timeout:.0f}s",
                hint="check the cable or network, `adb devices`, and that USB debugging is allowed",
            ) from exc  # fmt: skip
        self._connected = True

    def _on_device(self, args: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess[str]:
        """`adb -s SERIAL args`, reconnecting up to `retries` times when the device is offline."""
        proc: subprocess.CompletedProcess[str] | None = None
        for attempt in range(self.spec.retries + 1):
            try:
                if not self._connected:
                    self._connect()
                proc = self._adb(["-s", self.serial, *args], timeout_s)
            except DeviceError as exc:
                if attempt == self.spec.retries or "timed out after" in exc.message:
                    raise
            else:
                last = _client_error(proc)
                if proc.returncode == 0 or not _OFFLINE.search(last):
                    return proc
                if attempt == self.spec.retries:
                    raise DeviceError(
                        self.name, f"device {self.where} went offline during {what} ({last}) and did not come back",
                        hint="check the cable or network and `adb devices`; the run can be repeated",
                    )  # fmt: skip
            self._connected = False
            time.sleep(min(0.5 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    # -- transport primitives ---------------------------------------------------------------------
    def execute(self, argv: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        """Run one command through `adb shell` (shell protocol v2 keeps the exit code)."""
        timeout = timeout_s or self.spec.command_timeout_s
        proc = self._on_device(["shell", shlex.join(argv)], timeout, f"'{argv[0]}'")
        return proc.returncode, proc.stdout, proc.stderr

    def _upload(self, files: dict[str, Path | bytes], remote_root: str) -> None:
        with tempfile.TemporaryDirectory(prefix="edge-export-adb-") as tmp:
            for index, (rel, source) in enumerate(files.items()):
                local = source if isinstance(source, Path) else Path(tmp) / str(index)
                if isinstance(source, bytes):
                    local.write_bytes(source)
                target = f"{remote_root.rstrip('/')}/{rel}"
                proc = self._on_device(
                    ["push", str(local), target], self.spec.command_timeout_s, "the upload"
                )
                if proc.returncode != 0:
                    reason = _client_error(proc) or "no message"
                    raise DeviceError(
                        self.name, f"upload of {rel} to {target} failed: {reason[:200]}",
                        hint="check free space and permissions of 'work_dir' on the device",
                    )  # fmt: skip

    def _download(self, remote: str, local: Path) -> bool:
        proc = self._on_device(["pull", remote, str(local)], self.spec.command_timeout_s, "the download")
        if proc.returncode == 0:
            return True
        reason = _client_error(proc)
        if "No such file" in reason or "does not exist" in reason:
            return False
        raise DeviceError(self.name, f"download of {remote} failed: {reason[-200:]}")

    # -- facts ------------------------------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        """Model, SoC, ABI and Android version from `getprop`."""
        code, out, err = self.execute(["getprop"], timeout_s=60)
        if code != 0:
            raise DeviceError(self.name, f"getprop failed (exit {code}): {err.strip()[-200:]}")
        found = {}
        for line in out.splitlines():
            match = _PROP_LINE.match(line.strip())
            if match and match.group(1) in PROPS and match.group(2):
                found[PROPS[match.group(1)]] = match.group(2)
        return found

    def info(self) -> dict[str, Any]:
        """The agent's facts plus the Android properties and the serial."""
        return {**super().info(), "serial": self.serial, "android": self.properties()}
