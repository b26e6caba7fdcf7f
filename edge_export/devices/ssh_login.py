"""Logging in to an SSH device: the key file loaded (and named when it cannot be), the host key
checked against known_hosts, and each way connecting or authenticating can fail explained.

Key authentication only: no passwords, no agent, no ~/.ssh key guessing. An unknown host is refused
with its fingerprint unless the entry sets `accept_unknown_host: true`; a changed key is refused.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from edge_export.devices.remote import RemoteAgentDevice
from edge_export.devices.ssh_diagnosis import reason
from edge_export.errors import DeviceError


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_key(device: RemoteAgentDevice) -> Any:
    """The private key of 'key_file' (None without one), loaded here so that a file paramiko
    cannot use is named as such instead of surfacing as a connection or authentication error."""
    import paramiko

    if device.spec.key_file is None:
        return None
    path = device.spec.key_file.expanduser()
    if not path.is_file():
        raise DeviceError(
            device.name, f"key file {device.spec.key_file} does not exist",
            hint="set 'key_file' in the device entry to the private key the device accepts",
        )  # fmt: skip
    try:
        return paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException) as exc:  # TypeError: "password not given"
        raise DeviceError(
            device.name, f"key file {path} is encrypted with a passphrase; edge-export logs in with "
            "unencrypted keys only (no agent, no prompt)",
            hint="set 'key_file' to a key without a passphrase that the device accepts",
        ) from exc  # fmt: skip
    except OSError as exc:
        raise DeviceError(
            device.name, f"key file {path} cannot be read: {reason(exc)}",
            hint="set 'key_file' in the device entry to a private key file this user can read",
        ) from exc  # fmt: skip
    except (ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
        raise DeviceError(
            device.name, f"key file {path} is not a private key paramiko can load (an OpenSSH or PEM "
            "Ed25519, ECDSA or RSA key)",
            hint="set 'key_file' to the private key (not the .pub file) the device accepts",
        ) from exc  # fmt: skip


def connect_error(
    device: RemoteAgentDevice, exc: BaseException, client: Any, key: Any, known: Path
) -> DeviceError:
    """Why connecting failed: the host key, the authentication, or reaching the server at all."""
    import paramiko

    if isinstance(exc, paramiko.BadHostKeyException):
        return DeviceError(
            device.name,
            f"host key mismatch for {device.where}: known_hosts has {fingerprint(exc.expected_key)}, "
            f"the host offered {fingerprint(exc.key)}; refusing to connect",
            hint=f"if the device was re-installed, verify the new key and replace its line in {known}",
        )
    auth_hint = "check 'user' and 'key_file' in the device entry and the device's authorized_keys"
    if isinstance(exc, paramiko.BadAuthenticationType):
        return DeviceError(
            device.name, f"authentication failed for {device.where}: the server does not offer key "
            f"authentication (it offers: {', '.join(exc.allowed_types) or 'nothing'})",
            hint="enable `PubkeyAuthentication yes` in the device's sshd_config; edge-export logs in "
            "with keys only",
        )  # fmt: skip
    if isinstance(exc, paramiko.AuthenticationException):
        refused = key is not None and str(exc) == "Authentication failed."  # the server's answer
        what = (
            f"the server refused the key in {device.spec.key_file} ({key.get_name()} {fingerprint(key)})"
            if refused
            else str(exc)
        )
        return DeviceError(device.name, f"authentication failed for {device.where}: {what}", hint=auth_hint)
    transport = client.get_transport()
    if key is None and transport is not None and transport.is_active() and not transport.is_authenticated():
        return DeviceError(
            device.name, f"no key to log in to {device.where} with: the device entry has no 'key_file' "
            "(edge-export uses key authentication only)",
            hint="set 'key_file' in the device entry to the private key the device accepts",
        )  # fmt: skip
    return DeviceError(
        device.name, f"cannot connect to {device.where}: {reason(exc)}",
        hint="check that the device is on, reachable, and that sshd listens on that port",
    )  # fmt: skip


def host_key_policy(device: RemoteAgentDevice, known: Path) -> Any:
    """Refuse unknown host keys (printing the fingerprint) unless the entry opts in."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if device.spec.accept_unknown_host:
                client.get_host_keys().add(hostname, key.get_name(), key)  # this run only
                return
            port = device.spec.port
            scan = (
                f"ssh-keyscan -p {port} {device.spec.host}"
                if port != 22
                else f"ssh-keyscan {device.spec.host}"
            )
            raise DeviceError(
                device.name,
                f"unknown host key for {device.where}: {key.get_name()} {fingerprint(key)}; refusing to connect",
                hint=f"verify the fingerprint on the device, then add it: {scan} >> {known} "
                "(or set accept_unknown_host: true in the device entry)",
            )

    return Policy()
