"""The apple runner: a Mac reached over SSH, where the agent runs Core ML with the bundle's compute
units (CPU, GPU, Neural Engine) and real predictions go through the same gates as every device.

Transport, push and verification are the SSH runner's. What differs is what the Mac side can do:
only macOS runs Core ML, so on any other system the agent answers "not run" for a Core ML bundle
(never a number), and `info()` says whether the machine is a Mac at all.
"""

from __future__ import annotations

from typing import Any

from edge_export.devices.ssh import SshDevice


class AppleDevice(SshDevice):
    """A Mac over SSH: Core ML on CPU / GPU / ANE, plus any other runtime its Python has."""

    kind = "apple"

    def info(self) -> dict[str, Any]:
        """The SSH facts plus whether Core ML can run there (macOS only)."""
        facts = super().info()
        facts["coreml_capable"] = facts.get("system") == "Darwin"
        if not facts["coreml_capable"]:
            facts["note"] = f"{facts.get('system')} is not macOS: Core ML bundles will report 'needs macOS'"
        return facts
