"""Library chatter stays out of the user's terminal, including what sits in Python's buffers."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import os, sys
from edge_export.quiet import native_stderr_captured
with native_stderr_captured():
    sys.stderr.write("\\rprogress bar 50%")  # tqdm-style: no newline, left in Python's buffer
    os.write(2, b"native log line\\n")
print("done")
"""


def test_buffered_and_native_stderr_are_captured() -> None:
    run = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    assert run.stdout == "done\n"
    assert run.stderr == ""


def test_captured_stderr_is_shown_when_the_block_fails() -> None:
    script = _SCRIPT.replace('print("done")', "").replace(
        'native log line\\n")', 'native log line\\n"); 1 / 0'
    )
    assert "1 / 0" in script
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1 and "ZeroDivisionError" in run.stderr
    assert "progress bar 50%" in run.stderr and "native log line" in run.stderr
