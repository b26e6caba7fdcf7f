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
import contextlib
import hashlib
import io
import json
import posixpath
import shlex
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.devices import agent as agent_package
from edge_export.devices.base import Mode, RunResult, agent_run_args, read_agent_result
from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import DeviceError, MissingDependencyError

AGENT_PACKAGE = "edge_export_agent"
MARKER = ".edge-export-workdir"  # cleanup() removes only a work dir that holds this marker
_GRACE_S = 30.0  # how long the host waits past the agent's own time limit


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def local_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (relative posix paths), manifest included."""
    from edge_export.exporter.bundle import file_sha256

    return {
        p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _agent_files() -> dict[str, Path]:
    root = Path(agent_package.__file__).parent
    return {p.name: p for p in sorted(root.glob("*.py"))}


def _key_of(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:20]


class _ConnectionLost(Exception):
    """The SSH transport died under a command (retried with a new connection)."""


class SshDevice:
    """A Linux (or macOS) machine reached over SSH, running the pushed agent with its Python."""

    kind = "ssh"

    def __init__(self, name: str, spec: DeviceSpec) -> None:
        self.name = name
        self.spec = spec
        self.work_dir = spec.work_dir or f"/tmp/edge-export-{spec.user or 'device'}"
        self._client: Any = None
        self._pushed: dict[str, str] = {}  # content key -> remote folder
        self._agent_root: str | None = None
        self._facts: dict[str, Any] | None = None

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

    def _agent(self, args: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        root = self._ensure_agent()
        extra = dict(self.spec.env)
        path = root + (":" + extra.pop("PYTHONPATH") if "PYTHONPATH" in extra else "")
        env = [f"PYTHONPATH={path}"] + [f"{k}={v}" for k, v in extra.items()]
        return self.execute(["env", *env, self.spec.python, "-m", AGENT_PACKAGE, *args], timeout_s)

    def _ensure_agent(self) -> str:
        """Push the agent package once (content-addressed) and check it runs with the device's Python."""
        if self._agent_root is not None:
            return self._agent_root
        files = _agent_files()
        hashes = {
            f"{AGENT_PACKAGE}/{n}": hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()
        }
        root = posixpath.join(self.work_dir, "agent", _key_of(hashes))
        self._make_work_dir()
        self._upload({f"{AGENT_PACKAGE}/{n}": p for n, p in files.items()}, root)
        self._upload({"hashes.json": json.dumps(hashes).encode()}, posixpath.join(root, ".."))
        self._agent_root = root
        code, out, err = self.execute(
            ["env", f"PYTHONPATH={root}", self.spec.python, "-m", AGENT_PACKAGE, "verify", "--root", root,
             "--hashes", posixpath.join(root, "..", "hashes.json")],
            timeout_s=120,
        )  # fmt: skip
        if code != 0:
            self._agent_root = None
            raise self._agent_failure("the agent does not run", code, out, err)
        return root

    def _agent_failure(self, what: str, code: int, out: str, err: str) -> DeviceError:
        last = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
        hint = None
        if "No module named 'numpy'" in err:
            hint = f"install numpy for {self.spec.python} on the device"
        elif code == 127 or "No such file" in err:
            hint = "set 'python' in the device entry to an interpreter that exists there"
        return DeviceError(
            self.name, f"{what} (exit {code}): {last[:300]}", returncode=code, stderr=err, hint=hint
        )

    def _make_work_dir(self) -> None:
        code, _, err = self.execute(["mkdir", "-p", self.work_dir], timeout_s=60)
        if code != 0:
            raise DeviceError(self.name, f"cannot create {self.work_dir}: {err.strip()[:200]}", stderr=err)
        self._upload({MARKER: b"made by edge-export; removed by its cleanup\n"}, self.work_dir)

    # -- Device protocol --------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What the agent reports about the device (cached for this run)."""
        if self._facts is None:
            code, out, err = self._agent(["info", "--work-dir", self.work_dir], timeout_s=120)
            if code != 0:
                raise self._agent_failure("the agent cannot describe the device", code, out, err)
            self._facts = json.loads(out.strip().splitlines()[-1])
        return self._facts

    def info(self) -> dict[str, Any]:
        """Name, transport, labels and the facts the device reports (arch, OS, CPUs, memory)."""
        facts = {k: v for k, v in self.facts().items() if k != "runtimes"}
        return {"name": self.name, "type": self.kind, "host": self.where, **facts, "labels": self.spec.labels}

    def runtimes(self) -> dict[str, str | None]:
        """Runtime name -> version installed in the device's Python (None when missing)."""
        return dict(self.facts()["runtimes"])

    def push(self, bundle: Path) -> str:
        """Upload the bundle unless this run already did; verify it by sha256 on the device."""
        hashes = local_hashes(bundle)
        key = _key_of(hashes)
        if key in self._pushed:
            return self._pushed[key]
        remote = posixpath.join(self.work_dir, "bundles", key)
        hashes_file = remote + ".sha256.json"
        needed_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 2**20
        self._facts = None  # free space changes between pushes
        free_mb = self.facts().get("free_mb")
        if free_mb is not None and free_mb < needed_mb * 1.05 + 8:
            raise DeviceError(
                self.name, f"no space left for the bundle: it needs {needed_mb:.1f} MB, "
                f"{self.work_dir} has {free_mb:.1f} MB free",
                hint="free space on the device or point 'work_dir' at a larger disk",
            )  # fmt: skip
        self._upload({rel: bundle / rel for rel in hashes}, remote)
        self._upload(
            {posixpath.basename(hashes_file): json.dumps(hashes).encode()}, posixpath.dirname(remote)
        )
        code, out, err = self._agent(["verify", "--root", remote, "--hashes", hashes_file], timeout_s=600)
        if code != 0:
            try:
                detail = json.loads(out.strip().splitlines()[-1])
                bad = ", ".join(detail["missing"] + detail["mismatched"])
            except (ValueError, IndexError, KeyError):
                raise self._agent_failure("the bundle could not be verified", code, out, err) from None
            raise DeviceError(
                self.name, f"bundle arrived corrupted (sha256 differs or missing: {bad[:200]})",
                hint="check the device's disk and connection, then run again",
            )  # fmt: skip
        self._pushed[key] = remote
        return remote

    def run(
        self,
        bundle: Path,
        inputs: dict[str, np.ndarray],
        warmup: int,
        iterations: int,
        mode: Mode = "graph",
        decode_tokens: int = 32,
    ) -> RunResult:
        """Push (once), run the agent on the device, bring back outputs and timings."""
        remote_bundle = self.push(bundle)
        run_dir = posixpath.join(self.work_dir, "runs", uuid.uuid4().hex)
        buffer = io.BytesIO()
        np.savez(buffer, **inputs)
        self._upload({"inputs.npz": buffer.getvalue()}, run_dir)
        limit = self.spec.command_timeout_s
        args = agent_run_args(
            remote_bundle, posixpath.join(run_dir, "inputs.npz"), posixpath.join(run_dir, "out"), mode,
            warmup, iterations, decode_tokens, self.spec.threads, time_limit_s=limit,
        )  # fmt: skip
        try:
            code, _, err = self._agent(args, timeout_s=limit + _GRACE_S)
            with tempfile.TemporaryDirectory(prefix="edge-export-fetch-") as tmp:
                local = Path(tmp)
                timings = None
                if self._download(posixpath.join(run_dir, "out", "timings.json"), local / "timings.json"):
                    timings = json.loads((local / "timings.json").read_text())
                if timings is not None and "error" not in timings:
                    self._download(posixpath.join(run_dir, "out", "outputs.npz"), local / "outputs.npz")
                return read_agent_result(self.name, timings, local / "outputs.npz", args, code, err)
        finally:
            self._remove(run_dir)

    def _remove(self, path: str) -> None:
        """Best effort: a device that went away keeps its leftovers until the next cleanup."""
        with contextlib.suppress(DeviceError):
            self.execute(["rm", "-rf", "--", path], timeout_s=60)

    def cleanup(self) -> None:
        """Remove the work dir (only if edge-export made it) unless `keep_work_dir`; disconnect."""
        try:
            if not self.spec.keep_work_dir and self._client is not None:
                code, _, _ = self.execute(["test", "-f", posixpath.join(self.work_dir, MARKER)], timeout_s=60)
                if code == 0:
                    self._remove(self.work_dir)
        except DeviceError:
            pass
        finally:
            self._pushed.clear()
            self._agent_root = None
            self._facts = None
            self._drop()


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
