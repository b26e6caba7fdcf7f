"""Devices that run bundles: local now; ssh, adb and apple plug in through the same protocol."""

from __future__ import annotations

from importlib.metadata import entry_points

from edge_export.devices.base import Device
from edge_export.errors import ConfigError


def get_device(name: str) -> Device:
    """A device by name (built-ins and `edge_export.devices` entry points)."""
    from edge_export.devices.local import LocalDevice

    factories = {"local": LocalDevice}
    for ep in entry_points(group="edge_export.devices"):
        factories.setdefault(ep.name, ep.load())
    if name not in factories:
        raise ConfigError(
            f"unknown device '{name}'", hint=f"configured devices: {', '.join(sorted(factories))}"
        )
    return factories[name]()
