"""A real aarch64 "Raspberry Pi stand-in" for the SSH runner tests: Debian bookworm's arm64 Python
3.11 plus the aarch64 wheels of numpy, onnxruntime and ai-edge-litert, run by qemu-user inside a
chroot (no /proc or /sys there: under qemu 7.2 `import onnxruntime` segfaults when both are
visible). Reached over the same sshd as every SSH device: the device entry's `python` is a small
wrapper that enters the chroot, and its `work_dir` lies inside the sysroot, which also contains a
link from its own host path to `/` so the host paths the runner passes resolve inside.

Built once per test session from the package registries (Debian's arm64 packages and PyPI's
manylinux aarch64 wheels); about 180 MB. Emulated timings mean nothing; outputs are real aarch64
kernels' outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

QEMU = "/usr/bin/qemu-aarch64-static"
WHEELS = ["numpy==2.3.5", "onnxruntime==1.31.1", "ai-edge-litert==2.3.0"]
SKIP = ("perl", "libperl", "dpkg", "tar", "install-info")  # pulled in by dependencies, not needed
GLIBC_MINORS = (17, 24, 26, 27, 28, 31, 34, 35, 36)  # bookworm has glibc 2.36


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def _apt_env(base: Path) -> dict[str, str]:
    apt = base / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    for source in Path("/etc/apt/sources.list.d").glob("*.sources"):
        shutil.copy(source, apt / "sources" / source.name)
    if Path("/etc/apt/sources.list").is_file():
        shutil.copy("/etc/apt/sources.list", apt / "sources" / "main.list")
    conf = apt / "apt.conf"
    conf.write_text(
        'APT::Architecture "arm64";\nAPT::Architectures { "arm64"; };\n'
        f'Dir::State "{apt}";\nDir::State::Lists "{apt}/lists";\nDir::State::status "{apt}/status";\n'
        f'Dir::Cache "{apt}/cache";\nDir::Etc::SourceList "/dev/null";\nDir::Etc::SourceParts "{apt}/sources";\n'
    )
    return dict(os.environ, APT_CONFIG=str(conf))


def build(base: Path) -> tuple[Path, Path]:
    """Build the sysroot under base; returns (sysroot, python wrapper for the device entry)."""
    if not Path(QEMU).is_file():
        raise RuntimeError(f"{QEMU} is missing: install Debian's qemu-user-static (`make setup` does)")
    env = _apt_env(base)
    _run(["apt-get", "update", "-q"], env)
    tree = _run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", "python3.11", "libstdc++6"],
        env,
    )  # fmt: skip
    packages = sorted({
        line.strip() for line in tree.splitlines()
        if line and not line.startswith(" ") and "<" not in line and not line.startswith(SKIP)
    })  # fmt: skip
    debs = base / "debs"
    debs.mkdir(exist_ok=True)
    subprocess.run(
        ["apt-get", "download", "-q", *packages], cwd=debs, env=env, capture_output=True, check=True
    )
    root = base / "sysroot"
    root.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in GLIBC_MINORS] + ["manylinux2014_aarch64"]
    site = root / "usr/lib/python3/dist-packages"
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-warn-conflicts", "--target", str(site),
         "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:",
         *[arg for p in platforms for arg in ("--platform", p)], *WHEELS],
    )  # fmt: skip
    shutil.copy(QEMU, root / "qemu-aarch64-static")
    (root / "tmp").mkdir(exist_ok=True)
    alias = root / str(root.resolve()).lstrip("/")  # host path of the sysroot -> / inside it
    alias.parent.mkdir(parents=True, exist_ok=True)
    alias.symlink_to("/")
    wrapper = base / "pi-python"
    wrapper.write_text(f'#!/bin/sh\nexec chroot "{root}" /qemu-aarch64-static /usr/bin/python3.11 "$@"\n')
    wrapper.chmod(0o755)
    return root, wrapper
