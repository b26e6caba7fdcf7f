"""Devices that run bundles: local now; ssh, adb and apple plug in through the same protocol."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from edge_export.devices.base import Device
from edge_export.errors import ConfigError


def _factories() -> dict[str, Callable[[], Device]]:
    from edge_export.devices.local import LocalDevice

    factories: dict[str, Callable[[], Device]] = {"local": LocalDevice}
    for ep in entry_points(group="edge_export.devices"):
        factories.setdefault(ep.name, ep.load())
    return factories


def known_devices() -> list[str]:
    """Names of every device that can be asked for."""
    return sorted(_factories())


def get_device(name: str) -> Device:
    """A device by name (built-ins and `edge_export.devices` entry points)."""
    factories = _factories()
    if name not in factories:
        raise ConfigError(
            f"unknown device '{name}'", hint=f"configured devices: {', '.join(sorted(factories))}"
        )
    return factories[name]()
