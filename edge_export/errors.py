"""Exception hierarchy. Library code raises these; only cli.py turns them into messages and exit codes.

Each error carries a one-line message and, where we know it, the fix, so the CLI can print
`error: <message> (fix: <hint>)` without a traceback.
"""

from __future__ import annotations


class EdgeExportError(Exception):
    """Base of every error edge-export raises on purpose."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the fix on one line, as the CLI prints it."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" (fix: {' '.join(self.hint.split())})"
        return text

    def __str__(self) -> str:
        return self.one_line()


class ConfigError(EdgeExportError):
    """A bad option, config key, recipe id or combination of them."""


class InputError(EdgeExportError):
    """The model or data given cannot be used (missing, corrupt, unsupported)."""


class MissingDependencyError(EdgeExportError):
    """A target or feature needs a pip extra that is not installed."""

    def __init__(self, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the [{extra}] extra, which is not installed",
            hint=f"pip install 'edge-export[{extra}]'",
        )
        self.extra = extra


class ExportError(EdgeExportError):
    """A target failed while producing its artifact; other targets still run."""

    exit_code = 3

    def __init__(self, target: str, stage: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{target} export failed at stage '{stage}': {message}", hint=hint)
        self.target = target
        self.stage = stage

    def library_trace(self, frames: int = 12) -> list[str]:
        """Where inside the library the failure came from: the last `frames` frames of the
        underlying exception's traceback as "file:line in function" (for the report, so a failure in
        a build pipeline can be diagnosed without a rerun); empty when there is no underlying one."""
        import traceback

        cause = self.__cause__
        if cause is None or cause.__traceback__ is None:
            return []
        summary = traceback.extract_tb(cause.__traceback__)[-frames:]
        return [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in summary]


class DeviceError(EdgeExportError):
    """A device could not be reached or a command on it failed."""

    exit_code = 4

    def __init__(
        self,
        device: str,
        message: str,
        *,
        command: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(f"device '{device}': {message}", hint=hint)
        self.device = device
        self.command = command
        self.returncode = returncode
        self.stderr = stderr


class Interrupted(EdgeExportError):
    """The run was interrupted (Ctrl-C); nothing was written at OUT."""

    exit_code = 130


class NotRunnableHere(Exception):
    """An artifact that is valid but whose runtime cannot exist on this machine (a Core ML
    delegate on Linux). Results say "not run here" instead of inventing numbers."""
