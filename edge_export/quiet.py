"""Keep library chatter out of the user's output: exporters print to stdout (which would corrupt
--json), warn on every node, and native runtimes log to file descriptor 2."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Python-level silence: stdout captured, warnings ignored, torch logging at ERROR."""
    buffer = io.StringIO()
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        logging.getLogger("torch").setLevel(level)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send what native code writes to fd 2 into a temp file; re-emit it only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()  # text a library left in Python's buffer (tqdm's "\r" bars) goes to the sink
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-2000:])
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
