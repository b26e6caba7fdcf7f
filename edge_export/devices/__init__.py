"""Devices that run bundles: local, ssh (Linux boards), adb (Android), apple (a Mac over SSH).

Built-in `local` always exists; the others come from the inventory (config `inventory:` or a
devices file), and third-party runners register under the `edge_export.devices` entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from edge_export import interrupts
from edge_export.devices.base import Device
from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import ConfigError


def _plugins() -> dict[str, Callable[[], Device]]:
    from edge_export.devices.local import LocalDevice

    factories: dict[str, Callable[[], Device]] = {"local": LocalDevice}
    for ep in entry_points(group="edge_export.devices"):
        factories.setdefault(ep.name, ep.load())
    return factories


def _local(name: str, spec: DeviceSpec) -> Device:
    from edge_export.devices.local import LocalDevice

    return LocalDevice(timeout_s=spec.command_timeout_s, threads=spec.threads, name=name)


def _ssh(name: str, spec: DeviceSpec) -> Device:
    from edge_export.devices.ssh import SshDevice

    return SshDevice(name, spec)


def _apple(name: str, spec: DeviceSpec) -> Device:
    from edge_export.devices.apple import AppleDevice

    return AppleDevice(name, spec)


def _adb(name: str, spec: DeviceSpec) -> Device:
    from edge_export.devices.adb import AdbDevice

    return AdbDevice(name, spec)


# The runner each inventory `type` gets (the entry models are in inventory.SPEC_TYPES).
RUNNERS: dict[str, Callable[[str, DeviceSpec], Device]] = {
    "local": _local,
    "ssh": _ssh,
    "apple": _apple,
    "adb": _adb,
}


def from_spec(name: str, spec: DeviceSpec) -> Device:
    """Build the runner an inventory entry asks for."""
    return RUNNERS[spec.type](name, spec)


def known_devices(inventory: Mapping[str, DeviceSpec] | None = None) -> list[str]:
    """Names of every device that can be asked for: built-ins, plug-ins, the inventory."""
    return sorted(set(_plugins()) | set(inventory or {}))


def get_device(name: str, inventory: Mapping[str, DeviceSpec] | None = None) -> Device:
    """A device by name: the inventory first, then built-ins and `edge_export.devices` entry points."""
    if inventory and name in inventory:
        device = from_spec(name, inventory[name])
    else:
        factories = _plugins()
        if name not in factories:
            raise ConfigError(
                f"unknown device '{name}'",
                hint=f"declare it in the inventory (known: {', '.join(known_devices(inventory))})",
            )
        device = factories[name]()
    interrupts.on_interrupt(device.cleanup)  # Ctrl-C / TERM / HUP remove its work dir too
    return device
