"""What every remote device runner shares: the agent pushed once and checked, bundles pushed once
(content-addressed) and verified by sha256 on the device, free space checked first, runs in their
own folder, outputs and timings fetched back, and the work dir removed at the end.

A runner (SSH, adb) supplies only the transport: `execute(argv)` (an argument list; the runner
quotes it for the device's shell), `_upload(files, remote_root)` and `_download(remote, local)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.devices import agent as agent_package
from edge_export.devices import native
from edge_export.devices.base import Mode, RunResult, agent_run_args, read_agent_result
from edge_export.devices.inventory import AdbSpec, SshSpec
from edge_export.errors import DeviceError

AGENT_PACKAGE = "edge_export_agent"
MARKER = ".edge-export-workdir"  # cleanup() removes only a work dir that holds this marker
MARKER_RUN = ".edge-export-run"  # makes the run folder exist before links are made in it
# Device facts from a shell with no Python: `sh -c SHELL_FACTS sh WORK_DIR` (the work dir is $1).
SHELL_FACTS = (
    'echo "arch=$(uname -m)"; echo "system=$(uname -s)"; echo "release=$(uname -r)"; '
    'echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"; '
    'echo "mem=$(grep MemTotal /proc/meminfo)"; d="$1"; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; '
    'echo "free=$(df -k "$d" | tail -n 1)"'
)
GRACE_S = 30.0  # how long the host waits past the agent's own time limit


def local_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (relative posix paths), manifest included."""
    from edge_export.files import file_sha256

    return {
        p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def agent_files() -> dict[str, Path]:
    """The agent package's files, by name (pushed as `edge_export_agent/<name>`)."""
    root = Path(agent_package.__file__).parent
    return {p.name: p for p in sorted(root.glob("*.py"))}


def content_key(hashes: dict[str, str]) -> str:
    """A short id for a set of files and their hashes (the remote folder name)."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:20]


class RemoteAgentDevice:
    """Base of the runners that push the agent to another machine and run it there."""

    kind = "remote"
    default_work_dir = "/tmp/edge-export"

    def __init__(self, name: str, spec: SshSpec | AdbSpec) -> None:
        self.name = name
        self.spec = spec
        self.work_dir = spec.work_dir or self.default_work_dir
        self._pushed: dict[str, str] = {}  # content key -> remote folder
        self._agent_root: str | None = None
        self._facts: dict[str, Any] | None = None
        self._touched = False  # this run made (or reused) the work dir

    @property
    def where(self) -> str:
        """How the device is addressed, for messages."""
        raise NotImplementedError

    def execute(self, argv: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        """Run one command on the device: (exit code, stdout, stderr)."""
        raise NotImplementedError

    def _upload(self, files: dict[str, Path | bytes], remote_root: str) -> None:
        raise NotImplementedError

    def _download(self, remote: str, local: Path) -> bool:
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Close the transport (nothing by default)."""

    def _agent(self, args: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        if self.spec.python is None:
            raise DeviceError(
                self.name, "this needs the Python agent and the device entry has no 'python'",
                hint="set 'python' to an interpreter on the device (with numpy and the runtime)",
            )  # fmt: skip
        root = self._ensure_agent()
        extra = dict(self.spec.env)
        path = root + (":" + extra.pop("PYTHONPATH") if "PYTHONPATH" in extra else "")
        env = [f"PYTHONPATH={path}"] + [f"{k}={v}" for k, v in extra.items()]
        return self.execute(["env", *env, self.spec.python, "-m", AGENT_PACKAGE, *args], timeout_s)

    def _ensure_agent(self) -> str:
        """Push the agent package once (content-addressed) and check it runs with the device's Python."""
        if self._agent_root is not None:
            return self._agent_root
        files = agent_files()
        hashes = {
            f"{AGENT_PACKAGE}/{n}": hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()
        }
        root = posixpath.join(self.work_dir, "agent", content_key(hashes))
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
        self._touched = True
        code, _, err = self.execute(["mkdir", "-p", self.work_dir], timeout_s=60)
        if code != 0:
            raise DeviceError(self.name, f"cannot create {self.work_dir}: {err.strip()[:200]}", stderr=err)
        self._upload({MARKER: b"made by edge-export; removed by its cleanup\n"}, self.work_dir)

    # -- Device protocol --------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """What the agent reports about the device (cached for this run)."""
        if self._facts is None:
            if self.spec.python is None:
                self._facts = self._shell_facts()
            else:
                code, out, err = self._agent(["info", "--work-dir", self.work_dir], timeout_s=120)
                if code != 0:
                    raise self._agent_failure("the agent cannot describe the device", code, out, err)
                self._facts = json.loads(out.strip().splitlines()[-1])
            self._facts["runtimes"].update(self._native_tools())
        return self._facts

    def _shell_facts(self) -> dict[str, Any]:
        """Arch, OS, CPUs, memory and free space from the device's shell (no Python there)."""
        code, out, err = self.execute(["sh", "-c", SHELL_FACTS, "sh", self.work_dir], timeout_s=60)
        if code != 0:
            raise DeviceError(
                self.name, f"cannot read the device's facts (exit {code}): {err.strip()[-200:]}"
            )
        lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        mem = re.search(r"MemTotal:\s+(\d+)", lines.get("mem", ""))
        free = lines.get("free", "").split()
        return {
            "arch": lines.get("arch", "").strip(), "system": lines.get("system", "").strip(),
            "os": f"{lines.get('system', '').strip()} {lines.get('release', '').strip()}".strip(),
            "cpus": int(lines["cpus"]) if lines.get("cpus", "").strip().isdigit() else None,
            "memory_mb": round(int(mem.group(1)) / 1024, 1) if mem else None, "python": None,
            "free_mb": round(int(free[3]) / 1024, 1) if len(free) > 3 and free[3].isdigit() else None,
            "runtimes": {},
        }  # fmt: skip

    def _native_tools(self) -> dict[str, str | None]:
        """`<runtime> native` -> the configured benchmark binary if it is executable there, else None."""
        found: dict[str, str | None] = {}
        for runtime, argv in self.spec.benchmark_tools.items():
            code, _, _ = self.execute(["test", "-x", argv[0]], timeout_s=60)
            found[f"{runtime} native"] = argv[0] if code == 0 else None
        return found

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
        key = content_key(hashes)
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
        if self.spec.python is None:
            self._verify_with_sha256sum(remote, hashes)
            self._pushed[key] = remote
            return remote
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

    def _verify_with_sha256sum(self, remote: str, hashes: dict[str, str]) -> None:
        """The device's own `sha256sum` (toybox, coreutils) against the host's hashes."""
        paths = {posixpath.join(remote, rel): digest for rel, digest in hashes.items()}
        code, out, err = self.execute(["sha256sum", "--", *paths], timeout_s=600)
        if code in (126, 127):  # the shell could not run it: nothing was checked, nothing is known corrupt
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise DeviceError(
                self.name, f"cannot verify the bundle: sha256sum does not run on the device (exit {code}: "
                f"{last[:200]})", command=["sha256sum"], returncode=code, stderr=err,
                hint="install sha256sum (coreutils or busybox) on the device, or set 'python' so the agent verifies",
            )  # fmt: skip
        seen = {}
        for line in out.splitlines():
            digest, _, path = line.strip().partition(" ")
            seen[path.strip().lstrip("*")] = digest
        bad = [posixpath.relpath(p, remote) for p, d in paths.items() if seen.get(p) != d]
        if bad:
            why = f" ({err.strip().splitlines()[-1][:120]})" if code != 0 and err.strip() else ""
            raise DeviceError(
                self.name, f"bundle arrived corrupted (sha256 differs or missing: {', '.join(bad)[:200]}){why}",
                hint="check the device's disk and connection, then run again",
            )  # fmt: skip

    def run(
        self,
        bundle: Path,
        inputs: dict[str, np.ndarray],
        warmup: int,
        iterations: int,
        mode: Mode = "graph",
        decode_tokens: int = 32,
    ) -> RunResult:
        """Push (once), run the agent (or the device's benchmark tool) there, bring back outputs and
        timings."""
        target = json.loads((bundle / "manifest.json").read_text())["target"]
        if target in self.spec.benchmark_tools and mode == "graph":
            return self._run_native(target, bundle, inputs, warmup, iterations)
        if self.spec.python is None:
            why = "an LLM's token loop" if mode == "generate" else f"a {target} bundle"
            raise DeviceError(
                self.name, f"{why} needs the Python agent and the device entry has no 'python'",
                hint=f"set 'python' (with numpy and the runtime) or, for graphs, benchmark_tools.{target}",
            )  # fmt: skip
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
            code, _, err = self._agent(args, timeout_s=limit + GRACE_S)
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

    def _run_native(
        self, target: str, bundle: Path, inputs: dict[str, np.ndarray], warmup: int, iterations: int
    ) -> RunResult:
        """Time the bundle with the device's own benchmark binary (latency only: no outputs)."""
        tool = self.spec.benchmark_tools[target]
        remote_bundle = self.push(bundle)
        run_dir = posixpath.join(self.work_dir, "runs", uuid.uuid4().hex)
        limit = self.spec.command_timeout_s
        try:
            job = native.plan(target, tool, bundle, remote_bundle, run_dir, inputs, warmup, iterations,
                              self.spec.threads, limit)  # fmt: skip
        except ValueError as exc:
            raise DeviceError(self.name, f"{native.TOOL_NAMES[target]}: {exc}") from exc
        try:
            self._upload({MARKER_RUN: b"", **job.uploads}, run_dir)
            for name, link_target in job.links.items():
                self.execute(["ln", "-s", link_target, posixpath.join(run_dir, name)], timeout_s=60)
            code, out, err = self.execute(job.argv, timeout_s=limit + GRACE_S)
        finally:
            self._remove(run_dir)
        try:
            parsed = job.parse(out, err)
        except native.NativeOutputError as exc:
            last = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
            raise DeviceError(
                self.name, f"{exc} (exit {code}): {last[:200]}", command=job.argv, returncode=code, stderr=err,
                hint=f"check that benchmark_tools.{target} is that tool and runs on the device",
            ) from None  # fmt: skip
        if code != 0:
            raise DeviceError(self.name, f"{tool[0]} failed (exit {code})", command=job.argv, returncode=code,
                              stderr=err)  # fmt: skip
        return RunResult(
            device=self.name, outputs={}, latencies_ms=list(parsed.get("latencies_ms", [])),
            load_ms=float(parsed["load_ms"]), peak_rss_mb=float(parsed["peak_rss_mb"]),
            runtime=f"{native.TOOL_NAMES[target]} (native)",
            extra={"stats": parsed.get("stats"), "native": {"tool": tool[0], "batch_size": job.shape[0],
                   "sequence_length": job.shape[1], "note": job.note}},
        )  # fmt: skip

    def _remove(self, path: str) -> None:
        """Best effort: a device that went away keeps its leftovers until the next cleanup."""
        with contextlib.suppress(DeviceError):
            self.execute(["rm", "-rf", "--", path], timeout_s=60)

    def cleanup(self) -> None:
        """Remove the work dir (only if edge-export made it) unless `keep_work_dir`; disconnect."""
        try:
            if not self.spec.keep_work_dir and self._touched:
                code, _, _ = self.execute(["test", "-f", posixpath.join(self.work_dir, MARKER)], timeout_s=60)
                if code == 0:
                    self._remove(self.work_dir)
        except DeviceError:
            pass
        finally:
            self._pushed.clear()
            self._touched = False
            self._agent_root = None
            self._facts = None
            self._disconnect()
