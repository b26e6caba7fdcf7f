"""The device inventory: named devices declared in the config file (`inventory:`) or in a devices
file (`--inventory FILE`, YAML or TOML, a mapping of name -> entry).

An entry says how to reach the device and what it is; nothing here connects to anything. Each
`type` has its own entry model (SPEC_TYPES), so a key that belongs to another kind of device (a
`serial` on an SSH board) is refused instead of ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_export.errors import ConfigError


class _Spec(BaseModel):
    """What every device entry has."""

    model_config = ConfigDict(extra="forbid")

    command_timeout_s: float = Field(1800.0, gt=0)
    threads: int | None = Field(None, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)


class LocalSpec(_Spec):
    """This machine under another name (e.g. with its own thread count)."""

    type: Literal["local"]


class _RemoteSpec(_Spec):
    """A device reached over a transport, running the agent or a native benchmark tool there."""

    work_dir: str | None = None  # default /tmp/edge-export-<user> (ssh), /data/local/tmp/edge-export (adb)
    python: str | None = "python3"  # null: the device has no Python; only `benchmark_tools` run there
    # runtime -> the device's native benchmark binary and any extra arguments, e.g.
    # tflite: [/data/local/tmp/benchmark_model, --use_xnnpack=true]; used for graph latency
    benchmark_tools: dict[Literal["tflite", "executorch", "onnx"], list[str]] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(1, ge=0, le=10)
    keep_work_dir: bool = False

    @field_validator("benchmark_tools", mode="before")
    @classmethod
    def _tool_as_list(cls, value: Any) -> Any:
        """`tflite: /path/benchmark_model` is shorthand for a one-element argument list."""
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _runnable(self) -> _RemoteSpec:
        if self.python is None and not self.benchmark_tools:
            raise ValueError("a device without 'python' needs 'benchmark_tools' to run anything")
        for runtime, argv in self.benchmark_tools.items():
            if not argv or not argv[0].startswith("/"):
                raise ValueError(f"benchmark_tools.{runtime} must start with the tool's absolute path")
        if self.work_dir is not None and (
            not self.work_dir.startswith("/") or self.work_dir.rstrip("/") == ""
        ):
            raise ValueError("'work_dir' must be an absolute path other than /")
        return self


class SshSpec(_RemoteSpec):
    """A Linux board (`ssh`) or a Mac (`apple`, Core ML and the Neural Engine) over SSH."""

    type: Literal["ssh", "apple"]
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    accept_unknown_host: bool = False  # opt-in: trust a host key seen for the first time


class AdbSpec(_RemoteSpec):
    """An Android device through the adb client and server."""

    type: Literal["adb"]
    serial: str  # as `adb devices` lists it
    adb: str = "adb"
    adb_server_port: int = Field(5037, ge=1, le=65535)


# The kinds of device an entry can declare, keyed on `type`.
SPEC_TYPES: dict[str, type[_Spec]] = {"local": LocalSpec, "ssh": SshSpec, "apple": SshSpec, "adb": AdbSpec}
DeviceSpec = Annotated[LocalSpec | SshSpec | AdbSpec, Field(discriminator="type")]
_ADAPTER: TypeAdapter[LocalSpec | SshSpec | AdbSpec] = TypeAdapter(DeviceSpec)
_WHAT_FOR = {"host": "the address to reach it at", "serial": "see `adb devices`"}


def parse_device_spec(entry: Any) -> LocalSpec | SshSpec | AdbSpec:
    """One inventory entry as the model of its `type` (pydantic ValidationError when invalid)."""
    return _ADAPTER.validate_python(entry)


def _explain(name: object, origin: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    kind = loc.pop(0) if loc and loc[0] in SPEC_TYPES else None  # the union's tag
    where = ".".join(loc) or "entry"
    if error["type"] == "missing" and kind:
        why = f" ({_WHAT_FOR[loc[-1]]})" if loc[-1] in _WHAT_FOR else ""
        message = f"a '{kind}' device needs '{where}'{why}"
    elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        message = f"'type' must be one of {', '.join(SPEC_TYPES)}"
    else:
        message = f"{where}: {error['msg']}"
    return ConfigError(
        f"{origin}: device '{name}': {message}", hint="see docs/devices.md for the entry format"
    )


def parse_inventory(data: Any, origin: str) -> dict[str, LocalSpec | SshSpec | AdbSpec]:
    """Validate a mapping of name -> entry; one ConfigError line naming the device and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the inventory must map device names to entries")
    specs: dict[str, LocalSpec | SshSpec | AdbSpec] = {}
    for name, entry in data.items():
        try:
            specs[str(name)] = parse_device_spec(entry)
        except ValidationError as exc:
            raise _explain(name, origin, exc) from exc
    return specs


def read_inventory(path: Path) -> dict[str, LocalSpec | SshSpec | AdbSpec]:
    """A devices file: a mapping of name -> entry (optionally under a top-level `inventory:` key)."""
    from edge_export.files import read_mapping_file

    data = read_mapping_file(path, "--inventory")
    if set(data) == {"inventory"}:
        data = data["inventory"]
    return parse_inventory(data, f"--inventory {path}")
