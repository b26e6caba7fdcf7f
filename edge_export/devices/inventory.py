"""The device inventory: named devices declared in the config file (`inventory:`) or in a devices
file (`--inventory FILE`, YAML or TOML, a mapping of name -> entry).

An entry says how to reach the device and what it is; nothing here connects to anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_export.errors import ConfigError


class DeviceSpec(BaseModel):
    """One device of the inventory."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["local", "ssh", "apple", "adb"]
    # ssh / apple
    host: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    accept_unknown_host: bool = False  # opt-in: trust a host key seen for the first time
    # every remote device
    work_dir: str | None = None  # default /tmp/edge-export-<user> (ssh), /data/local/tmp/edge-export (adb)
    python: str | None = "python3"  # null: the device has no Python; only `benchmark_tools` run there
    # runtime -> the device's native benchmark binary and any extra arguments, e.g.
    # tflite: [/data/local/tmp/benchmark_model, --use_xnnpack=true]; used for graph latency
    benchmark_tools: dict[Literal["tflite", "executorch", "onnx"], list[str]] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(1800.0, gt=0)
    retries: int = Field(1, ge=0, le=10)
    keep_work_dir: bool = False
    threads: int | None = Field(None, ge=1)
    labels: dict[str, str] = Field(default_factory=dict)
    # adb
    serial: str | None = None
    adb: str = "adb"
    adb_server_port: int = Field(5037, ge=1, le=65535)

    @field_validator("benchmark_tools", mode="before")
    @classmethod
    def _tool_as_list(cls, value: Any) -> Any:
        """`tflite: /path/benchmark_model` is shorthand for a one-element argument list."""
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _needs_host(self) -> DeviceSpec:
        if self.type in ("ssh", "apple") and not self.host:
            raise ValueError(f"a '{self.type}' device needs 'host'")
        if self.type == "adb" and not self.serial:
            raise ValueError("an 'adb' device needs 'serial' (see `adb devices`)")
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


def parse_inventory(data: Any, origin: str) -> dict[str, DeviceSpec]:
    """Validate a mapping of name -> entry; one ConfigError line naming the device and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the inventory must map device names to entries")
    specs: dict[str, DeviceSpec] = {}
    for name, entry in data.items():
        try:
            specs[str(name)] = DeviceSpec.model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "entry"
            raise ConfigError(
                f"{origin}: device '{name}': {where}: {error['msg']}",
                hint="see the README section 'Devices' for the entry format",
            ) from exc
    return specs


def read_inventory(path: Path) -> dict[str, DeviceSpec]:
    """A devices file: a mapping of name -> entry (optionally under a top-level `inventory:` key)."""
    from edge_export.files import read_mapping_file

    data = read_mapping_file(path, "--inventory")
    if set(data) == {"inventory"}:
        data = data["inventory"]
    return parse_inventory(data, str(path))
