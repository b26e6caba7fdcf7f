"""The SSH runner against a real OpenSSH sshd on 127.0.0.1 (see sshd.py): push, verify, run, fetch,
the CLI with `--device`, and the faults a device lab meets (each must be a clear DeviceError)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli
from sshd import LocalSshd, free_port, keygen, sshd_fixture  # noqa: F401 - the `sshd` fixture

from edge_export.devices import get_device
from edge_export.devices.inventory import parse_device_spec
from edge_export.devices.local import LocalDevice
from edge_export.devices.ssh import SshDevice
from edge_export.errors import DeviceError

# a folder name a shell would split, quote-break and chain if anything built a shell string from it
NASTY = "dir with space 'q' \"dq\"; touch PWNED"


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    out = tmp_path_factory.mktemp("ssh-bundle") / NASTY / "out"
    code, _, _ = run_cli(["export", tiny_bert, "--out", out, "--quantize", "fp32", "--no-latency"])
    assert code == 0
    return out / "onnx-fp32"


def _feeds() -> dict[str, np.ndarray]:
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _device(sshd: LocalSshd, tmp_path: Path, **overrides: object) -> SshDevice:
    entry = sshd.spec(work_dir=str(tmp_path / NASTY / "work"), python=sys.executable) | overrides
    return SshDevice("pi", parse_device_spec(entry))


def test_run_over_ssh_matches_local_and_cleans_up(sshd: LocalSshd, bert_bundle: Path, tmp_path: Path) -> None:
    device = _device(sshd, tmp_path)
    work = Path(device.work_dir)
    result = device.run(bert_bundle, _feeds(), warmup=1, iterations=3)
    local = LocalDevice().run(bert_bundle, _feeds(), warmup=1, iterations=3)
    np.testing.assert_array_equal(result.outputs["last_hidden_state"], local.outputs["last_hidden_state"])
    assert (
        result.device == "pi" and len(result.latencies_ms) == 3 and result.runtime.startswith("onnxruntime")
    )
    pushed = list((work / "bundles").iterdir())
    assert len([p for p in pushed if p.is_dir()]) == 1 and not list((work / "runs").iterdir())
    first = device.push(bert_bundle)
    assert device.push(bert_bundle) == first  # once per run: the second push is the cached location
    assert not (tmp_path / NASTY / "PWNED").exists() and not Path("PWNED").exists()
    facts = device.info()
    assert facts["arch"] and facts["type"] == "ssh" and facts["host"].endswith(f":{sshd.port}")
    assert device.runtimes()["onnxruntime"]
    device.cleanup()
    assert not work.exists()


def test_corrupted_upload_is_caught_by_sha256_on_the_device(
    sshd: LocalSshd, bert_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = _device(sshd, tmp_path)
    real_upload = device._upload

    def corrupting(files: dict, remote_root: str) -> None:
        real_upload(files, remote_root)
        if "model.onnx" in files:  # the bytes change on the way, after the copy
            target = Path(remote_root) / "model.onnx"
            target.write_bytes(target.read_bytes()[:-7] + b"garbage")

    monkeypatch.setattr(device, "_upload", corrupting)
    with pytest.raises(
        DeviceError, match=r"bundle arrived corrupted \(sha256 differs or missing: model.onnx\)"
    ):
        device.push(bert_bundle)
    device.cleanup()


def test_cli_export_on_ssh_device_and_local(
    sshd: LocalSshd, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "devices.yaml"
    entry = sshd.spec(work_dir=str(tmp_path / "remote"), python=sys.executable, labels={"soc": "stand-in"})
    inventory.write_text(yaml.safe_dump({"pi": entry}))
    code, out, _ = run_cli(["devices", "--check", "--inventory", inventory, "--json"], capsys)
    assert code == 0, out
    listed = {d["name"]: d for d in json.loads(out)}
    assert listed["pi"]["reachable"] and listed["pi"]["runtimes"]["onnxruntime"]
    assert listed["pi"]["labels"] == {"soc": "stand-in"} and "local" in listed
    code, out, _ = run_cli(
        ["export", tiny_bert, "--out", tmp_path / "out", "--quantize", "fp32", "--device", "pi", "--device",
         "local", "--inventory", inventory, "--iterations", "3", "--warmup", "1", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    report = json.loads(out)
    result = report["results"][0]
    by_device = {e["device"]: e for e in result["latency_by_device"]}
    assert set(by_device) == {"pi", "local"} and by_device["pi"]["iterations"] == 3
    gates = by_device["pi"]["accuracy"]["gates"]
    assert gates and all(g["passed"] for g in gates) and by_device["pi"]["accuracy"]["measured_on"] == "pi"
    assert by_device["pi"]["accuracy"]["metrics"]["max_abs_error"] < 1e-5
    assert {d["name"] for d in report["devices"]} == {"pi", "local"}
    assert not (tmp_path / "remote").exists()  # cleaned up after the run


def test_cli_refused_device_is_exit_4_and_local_results_are_kept(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump({"dead board": {"type": "ssh", "host": "127.0.0.1", "port": free_port(),
                                                        "user": "pi", "connect_timeout_s": 3}}))  # fmt: skip
    code, out, err = run_cli(
        ["export", tiny_bert, "--out", tmp_path / "out", "--quantize", "fp32", "--device", "local", "--device",
         "dead board", "--inventory", inventory, "--iterations", "2", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 4
    entries = {e["device"]: e for e in json.loads(out)["results"][0]["latency_by_device"]}
    assert entries["local"]["p50_ms"] > 0
    assert "device 'dead board': cannot connect to pi@127.0.0.1" in entries["dead board"]["error"]["message"]
    assert "Connection refused" in err and "Traceback" not in err
    assert (tmp_path / "out" / "report.json").is_file()


def test_wrong_key_is_an_authentication_failure(sshd: LocalSshd, bert_bundle: Path, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_key")
    with pytest.raises(
        DeviceError, match=r"device 'pi': authentication failed for .*fix: check 'user' and 'key_file'"
    ):
        _device(sshd, tmp_path, key_file=str(other)).info()


def test_missing_key_file_is_named(sshd: LocalSshd, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"key file .*nowhere does not exist \(fix: set 'key_file'"):
        _device(sshd, tmp_path, key_file=str(tmp_path / "nowhere")).info()


def test_unknown_host_is_refused_with_its_fingerprint(sshd: LocalSshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    expected = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(sshd.host_key.with_suffix(".pub"))], capture_output=True, text=True
    ).stdout.split()[1]
    with pytest.raises(
        DeviceError, match=f"unknown host key for .*ssh-ed25519 {re.escape(expected)}; refusing"
    ) as info:
        _device(sshd, tmp_path, known_hosts=str(empty)).info()
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in str(info.value)
    opted_in = _device(sshd, tmp_path, known_hosts=str(empty), accept_unknown_host=True)
    assert opted_in.info()["arch"]
    opted_in.cleanup()
    assert empty.read_text() == ""  # trusting for one run never writes the key anywhere


def test_changed_host_key_is_refused(sshd: LocalSshd, tmp_path: Path) -> None:
    impostor = keygen(tmp_path / "impostor")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {impostor.with_suffix('.pub').read_text()}")
    with pytest.raises(
        DeviceError, match=r"host key mismatch for .*known_hosts has SHA256:\S+, the host offered"
    ):
        _device(sshd, tmp_path, known_hosts=str(known)).info()


def test_command_timeout(sshd: LocalSshd, bert_bundle: Path, tmp_path: Path) -> None:
    device = _device(sshd, tmp_path, command_timeout_s=2)
    with pytest.raises(DeviceError, match="command timed out after 1s: sleep 30"):
        device.execute(["sleep", "30"], timeout_s=1)
    start = time.monotonic()
    with pytest.raises(DeviceError, match="TimeoutError: the run exceeded its time limit of 2s"):
        device.run(bert_bundle, _feeds(), warmup=0, iterations=10_000_000)
    assert time.monotonic() - start < 60
    device.cleanup()


def test_device_dropping_mid_run(bert_bundle: Path, tmp_path: Path) -> None:
    daemon = LocalSshd(tmp_path / "sshd").start()
    device = _device(daemon, tmp_path, retries=1, connect_timeout_s=3)
    device.push(bert_bundle)
    killer = threading.Timer(3.0, daemon.drop)
    killer.start()
    try:
        with pytest.raises(
            DeviceError, match=r"connection to .* lost during .*reconnecting failed: .*refused"
        ):
            device.run(bert_bundle, _feeds(), warmup=0, iterations=10_000_000)
    finally:
        killer.cancel()
        daemon.stop()
        device.cleanup()


def test_full_work_dir_is_a_clear_error(sshd: LocalSshd, bert_bundle: Path, tmp_path: Path) -> None:
    work = tmp_path / "small disk"
    work.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(work)], check=True)
    try:
        device = _device(sshd, tmp_path, work_dir=str(work / "edge-export"))
        with pytest.raises(
            DeviceError, match=r"no space left for the bundle: it needs [\d.]+ MB, .* MB free"
        ):
            device.push(bert_bundle)
        device.cleanup()
    finally:
        subprocess.run(["umount", str(work)], check=True)


def test_missing_runtime_on_the_device(sshd: LocalSshd, bert_bundle: Path, tmp_path: Path) -> None:
    # the device's Python: the base interpreter (no onnxruntime) with only numpy on its path
    import numpy

    numpy_only = tmp_path / "site"
    numpy_only.mkdir()
    (numpy_only / "numpy").symlink_to(Path(numpy.__file__).parent)
    libs = Path(numpy.__file__).parent.parent / "numpy.libs"
    if libs.exists():
        (numpy_only / "numpy.libs").symlink_to(libs)
    base = str(Path(sys.base_prefix) / "bin" / "python3")
    device = _device(sshd, tmp_path, python=base, env={"PYTHONPATH": str(numpy_only)})
    assert device.runtimes()["onnxruntime"] is None
    with pytest.raises(DeviceError, match="MissingRuntime: onnxruntime is not installed on this device"):
        device.run(bert_bundle, _feeds(), warmup=0, iterations=1)
    device.cleanup()


def test_inventory_entries_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "devices.yaml"
    bad.write_text(yaml.safe_dump({"pi": {"type": "ssh", "port": 22}}))
    code, _, err = run_cli(["devices", "--inventory", bad], capsys)
    assert code == 2 and "device 'pi': a 'ssh' device needs 'host'" in err
    bad.write_text(yaml.safe_dump({"pi": {"type": "ssh", "host": "h", "hostname": "x"}}))
    code, _, err = run_cli(["devices", "--inventory", bad], capsys)
    assert code == 2 and "device 'pi': hostname: Extra inputs are not permitted" in err
    with pytest.raises(Exception, match="unknown device 'nope'"):
        get_device("nope", {})


def test_reconnects_after_the_connection_dropped_between_commands(bert_bundle: Path, tmp_path: Path) -> None:
    daemon = LocalSshd(tmp_path / "sshd").start()
    try:
        device = _device(daemon, tmp_path, retries=2)
        device.push(bert_bundle)
        daemon.drop()  # the board reboots between two runs
        daemon.start()
        result = device.run(bert_bundle, _feeds(), warmup=0, iterations=2)
        assert len(result.latencies_ms) == 2
        device.cleanup()
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("wrong key", "authentication failed"),
        ("changed host key", "host key mismatch"),
        ("no onnxruntime", "MissingRuntime: onnxruntime is not installed"),
        ("too slow", "TimeoutError: the run exceeded its time limit of 1s"),
    ],
)
def test_cli_device_faults_are_exit_4_with_the_device_named(
    fault: str, message: str, sshd: LocalSshd, bert_bundle: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    entry = sshd.spec(work_dir=str(tmp_path / "work"), python=sys.executable)
    if fault == "wrong key":
        entry["key_file"] = str(keygen(tmp_path / "other"))
    elif fault == "changed host key":
        impostor = keygen(tmp_path / "impostor")
        (tmp_path / "kh").write_text(f"[127.0.0.1]:{sshd.port} {impostor.with_suffix('.pub').read_text()}")
        entry["known_hosts"] = str(tmp_path / "kh")
    elif fault == "no onnxruntime":
        fake = tmp_path / "site" / "onnxruntime"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('onnxruntime was removed from this board')\n")
        entry["env"] = {"PYTHONPATH": str(tmp_path / "site")}
    else:  # a board whose every inference takes 3 s, against a 1 s limit
        site = tmp_path / "slow"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            "import time, onnxruntime\n"
            "_run = onnxruntime.InferenceSession.run\n"
            "def slow(self, *a, **k):\n    time.sleep(3)\n    return _run(self, *a, **k)\n"
            "onnxruntime.InferenceSession.run = slow\n"
        )
        entry |= {"command_timeout_s": 1, "env": {"PYTHONPATH": str(site)}}
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump({"bad board": entry}))
    code, out, err = run_cli(
        ["bench", bert_bundle, "--device", "local", "--device", "bad board", "--inventory", inventory,
         "--iterations", "2", "--warmup", "0", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 4, out
    entries = {e["device"]: e for e in json.loads(out)["results"][0]["latency_by_device"]}
    assert entries["local"]["p50_ms"] > 0  # measured before the failing device, kept
    assert entries["bad board"]["error"]["message"].startswith("device 'bad board': ")
    assert message in entries["bad board"]["error"]["message"] and message in err
    assert "Traceback" not in err


# -- issue 15: every device error names the real cause ----------------------------------------------
def _shell_only(sshd: LocalSshd, tmp_path: Path, **overrides: object) -> SshDevice:
    """A device without Python: push() goes straight to SFTP (no `mkdir -p` through the shell first)."""
    return _device(sshd, tmp_path, python=None, benchmark_tools={"onnx": ["/bin/true"]}, **overrides)


def test_cli_server_without_sftp_is_named_not_a_lost_connection(
    bert_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = LocalSshd(tmp_path / "sshd", sftp=None).start()  # sshd_config has no `Subsystem sftp`
    try:
        inventory = tmp_path / "devices.yaml"
        entry = daemon.spec(work_dir=str(tmp_path / "work"), python=sys.executable, connect_timeout_s=5)
        inventory.write_text(yaml.safe_dump({"pi": entry}))
        code, out, err = run_cli(
            ["bench", bert_bundle, "--device", "pi", "--inventory", inventory, "--iterations", "1",
             "--warmup", "0", "--json"],
            capsys,
        )  # fmt: skip
    finally:
        daemon.stop()
    assert code == 4, out
    message = json.loads(out)["results"][0]["latency_by_device"][0]["error"]["message"]
    assert message.startswith(
        f"device 'pi': the SSH server at 127.0.0.1:{daemon.port} has no SFTP subsystem"
    ), message
    assert "fix: enable `Subsystem sftp internal-sftp`" in message and "no SFTP subsystem" in err
    for wrong in ("power and network", "lost", "Channel closed"):
        assert wrong not in message and wrong not in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("sftp", "message"),
    [
        (
            "/nonexistent/sftp-server",
            r"ended without answering \(exit 127, the shell's code for a command not found\)",
        ),
        (
            '/bin/sh -c "echo hello from a login script; exec /usr/lib/openssh/sftp-server"',
            r"did not answer in SFTP \(paramiko: Garbage packet received\).*fix: make the login user's shell",
        ),
    ],
    ids=["missing sftp-server", "output before sftp"],
)
def test_broken_sftp_server_is_named(sftp: str, message: str, bert_bundle: Path, tmp_path: Path) -> None:
    daemon = LocalSshd(tmp_path / "sshd", sftp=sftp).start()
    try:
        device = _device(daemon, tmp_path, retries=2)
        with pytest.raises(
            DeviceError, match=f"the SFTP server behind the SSH server at .*{message}"
        ) as info:
            device.push(bert_bundle)
        assert "lost" not in str(info.value) and "power and network" not in str(info.value)
        device.cleanup()
    finally:
        daemon.stop()


@pytest.mark.parametrize("python", [True, False], ids=["agent", "no python"])
def test_work_dir_under_a_file_is_named(
    python: bool, sshd: LocalSshd, bert_bundle: Path, tmp_path: Path
) -> None:
    # root writes anywhere, so the folder that cannot be written is one under a regular file
    (tmp_path / "a file").write_text("not a folder\n")
    work = str(tmp_path / "a file" / "work")
    device = _device(sshd, tmp_path, work_dir=work) if python else _shell_only(sshd, tmp_path, work_dir=work)
    expected = (
        r"cannot create .*a file/work: mkdir: .*Not a directory"  # `mkdir -p` on the device says so
        if python
        else r"a file on the device is a file, not a folder, so nothing can be stored under it \(fix: point"
    )
    with pytest.raises(DeviceError, match=expected) as info:
        device.push(bert_bundle)
    assert "lost" not in str(info.value) and "power and network" not in str(info.value)
    device.cleanup()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount(options) -> a fresh tmpfs folder (unmounted at the end)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_work_dir_is_named(
    sshd: LocalSshd, bert_bundle: Path, tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    # SFTP v3 reports EROFS as a bare "Failure"; the probe asks the device's OS why a file cannot be made
    device = _shell_only(sshd, tmp_path, work_dir=str(tmpfs("size=64m,ro") / "work"))
    with pytest.raises(
        DeviceError,
        match=r"creating the folder .*/work failed: .* cannot be written: Read-only file system "
        r"\(SFTP: Failure\)",
    ):
        device.push(bert_bundle)
    device.cleanup()


def test_disk_filling_up_during_the_upload_is_named(
    sshd: LocalSshd, tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    # the free-space check before a push cannot see space taken while the upload runs: fill it mid-way
    work = tmpfs("size=256k") / "work"
    device = _device(sshd, tmp_path, work_dir=str(work))
    for size in (500_000, 5_000_000):  # paramiko reports these as "size mismatch" and as "Failure"
        with pytest.raises(
            DeviceError, match=r"upload of big.bin to .* failed: no space left on the device \(0.0 MB free in "
            r".*work for [\d.]+ MB; SFTP: .*\) \(fix: free space on the device"
        ):  # fmt: skip
            device._upload({"big.bin": b"x" * size}, str(work))
    device.cleanup()


def test_command_killed_by_a_signal_is_not_a_lost_connection(sshd: LocalSshd, tmp_path: Path) -> None:
    device = _device(sshd, tmp_path, retries=2)
    ran = tmp_path / "ran"
    with pytest.raises(
        DeviceError, match=r"'sh' ended without an exit status while the connection stayed up"
    ):
        device.execute(["sh", "-c", f"echo once >> '{ran}'; kill -KILL $$"])
    assert ran.read_text() == "once\n"  # a killed command is not re-run as if the connection had dropped
    assert device.execute(["true"])[0] == 0  # the connection is still the one that was up
    device.cleanup()


def test_missing_sha256sum_is_not_a_corrupted_bundle(
    sshd: LocalSshd, bert_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = _shell_only(sshd, tmp_path)
    real_execute = device.execute

    def without_sha256sum(argv: list[str], timeout_s: float | None = None) -> tuple[int, str, str]:
        if argv[0] == "sha256sum":  # a board whose userland has none
            argv = ["sha256sum-not-installed", *argv[1:]]
        return real_execute(argv, timeout_s)

    monkeypatch.setattr(device, "execute", without_sha256sum)
    with pytest.raises(
        DeviceError,
        match=r"cannot verify the bundle: sha256sum does not run on the device \(exit 127: .*not found",
    ):
        device.push(bert_bundle)
    device.cleanup()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "wrong",
            r"authentication failed for .*: the server refused the key in .*other \(ssh-ed25519 SHA256:",
        ),
        (
            "encrypted",
            r"key file .*encrypted is encrypted with a passphrase; edge-export logs in with unencrypted",
        ),
        ("public half", r"key file .*\.pub is not a private key paramiko can load"),
        ("none", r"no key to log in to .* with: the device entry has no 'key_file'"),
    ],
)
def test_key_problems_are_named(key: str, message: str, sshd: LocalSshd, tmp_path: Path) -> None:
    if key == "wrong":
        key_file: str | None = str(keygen(tmp_path / "other"))
    elif key == "encrypted":
        key_file = str(tmp_path / "encrypted")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", key_file], check=True)
    elif key == "public half":
        key_file = str(sshd.client_key.with_suffix(".pub"))
    else:
        key_file = None
    with pytest.raises(DeviceError, match=message) as info:
        _device(sshd, tmp_path, key_file=key_file).info()
    assert "cannot connect" not in str(info.value)  # the server was reached every time


def test_server_without_key_authentication_is_named(tmp_path: Path) -> None:
    daemon = LocalSshd(tmp_path / "sshd")
    daemon.config.write_text(
        daemon.config.read_text()
        .replace("PubkeyAuthentication yes", "PubkeyAuthentication no")
        .replace("PasswordAuthentication no", "PasswordAuthentication yes")
    )
    daemon.start()
    try:
        with pytest.raises(
            DeviceError, match=r"the server does not offer key authentication \(it offers: password\)"
        ):
            _device(daemon, tmp_path).info()
    finally:
        daemon.stop()
