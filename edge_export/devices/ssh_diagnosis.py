"""Telling what an SSH failure was, for the SSH runner's messages: the OS's or the server's own
words for it, and whether the connection survived it (a failure with the connection still up is
named, not retried as a lost connection)."""

from __future__ import annotations

from typing import Any


def reason(exc: BaseException) -> str:
    """The OS reason of a failed connect ("Connection refused", "timed out"), not paramiko's wrapper;
    the status text of an SFTP error ("Permission denied", "Failure")."""
    errors = getattr(exc, "errors", None)  # NoValidConnectionsError: address -> OSError
    if errors:
        exc = next(iter(errors.values()))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """An exception for a message: the server's own words for a refused channel."""
    text = getattr(exc, "text", None)  # paramiko.ChannelException: the server's reason
    if text:
        return f"the server refused a channel: {text}"
    return str(exc) or type(exc).__name__


def still_connected(transport: Any, timeout: float) -> bool:
    """Whether an SSH connection that just failed something still answers (a round trip: a session
    channel opened, or refused, by the server)."""
    import paramiko

    if transport is None or not transport.is_active():
        return False
    try:
        transport.open_session(timeout=timeout).close()
    except paramiko.ChannelException:
        return True  # the server answered, with a refusal
    except (paramiko.SSHException, OSError, EOFError):
        return False
    return transport.is_active()
