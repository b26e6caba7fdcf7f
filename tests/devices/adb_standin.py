"""A TEST DOUBLE for an Android device: a stdlib server that speaks the adb transport protocol that
adbd speaks over TCP, so the real `adb` client (Debian's package) can `adb connect` to it.

What it implements, and nothing more: the CNXN handshake (no AUTH: like a device with
ro.adb.secure=0), streams (OPEN/OKAY/WRTE/CLSE with adb's one-packet flow control), the
`shell,v2` service (stdout, stderr and the exit code as shell-protocol packets; commands run with
`sh -c` on this machine, PATH first searching `bin_dir` where tests put device tools such as a
fake `getprop`), and the `sync:` service (STAT, SEND with parent folders made, RECV, QUIT).

It is not an emulator: there is no Android here. Commands run on this Linux machine, under the
test's own folders. `stop()` closes the listening socket and every connection (the device going
offline); `start()` on the same port brings it back. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_AUTH = (
    int.from_bytes(name, "little") for name in (b"CNXN", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"AUTH")
)
VERSION = 0x01000001  # skips checksums, as every adb since 1.0.39
MAX_PAYLOAD = 256 * 1024
BANNER = b"device::ro.product.name=standin;ro.product.model=Stand-in;ro.product.device=standin;features=shell_v2,cmd"


def _packet(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    header = struct.pack("<6I", command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
    return header + data


class _Stream:
    """One adb stream: bytes in from the host, a writer that waits for OKAY between packets."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.buffer = bytearray()
        self.closed = False
        self.cond = threading.Condition()
        self.acked = threading.Event()
        self.acked.set()

    def feed(self, data: bytes) -> None:
        with self.cond:
            self.buffer += data
            self.cond.notify_all()

    def close_from_host(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.acked.set()

    def read(self, count: int) -> bytes:
        """Exactly count bytes (fewer only when the host closed the stream)."""
        with self.cond:
            while len(self.buffer) < count and not self.closed:
                self.cond.wait(timeout=1)
            data = bytes(self.buffer[:count])
            del self.buffer[:count]
            return data

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), self.conn.max_payload):
            if not self.acked.wait(timeout=30) or self.closed:
                raise ConnectionError("host stopped reading")
            self.acked.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, data[start : start + self.conn.max_payload])

    def close(self) -> None:
        self.acked.wait(timeout=30)
        self.conn.send(A_CLSE, self.local_id, self.remote_id)


class _Connection:
    def __init__(self, device: AdbStandin, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        self.lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self.lock:
            self.sock.sendall(_packet(command, arg0, arg1, data))

    def _recv_exact(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return bytes(data)

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _, _ = struct.unpack("<6I", self._recv_exact(24))
                data = self._recv_exact(length) if length else b""
                self._handle(command, arg0, arg1, data)
        except (ConnectionError, OSError):
            pass
        finally:
            for stream in list(self.streams.values()):
                stream.close_from_host()
            self.sock.close()

    def _handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = min(MAX_PAYLOAD, arg1)
            self.send(A_CNXN, VERSION, MAX_PAYLOAD, BANNER)
        elif command == A_OPEN:
            local_id, self.next_id = self.next_id, self.next_id + 1
            stream = _Stream(self, local_id, arg0)
            self.streams[local_id] = stream
            service = data.rstrip(b"\0").decode()
            self.send(A_OKAY, local_id, arg0)
            threading.Thread(target=self._service, args=(stream, service), daemon=True).start()
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.feed(data)
                self.send(A_OKAY, arg1, arg0)
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.acked.set()
        elif command == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.close_from_host()

    def _service(self, stream: _Stream, service: str) -> None:
        try:
            if service.startswith("shell"):
                self.device.shell(stream, service)
            elif service.startswith("sync:"):
                self.device.sync(stream)
            else:
                stream.write(f"FAIL unsupported service {service}".encode())
            stream.close()
        except (ConnectionError, OSError):
            pass
        finally:
            self.streams.pop(stream.local_id, None)


class AdbStandin:
    """The device side of adb over TCP on 127.0.0.1:port, for tests (see the module docstring)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.shell_commands: list[str] = []
        self._server: socket.socket | None = None
        self._connections: list[_Connection] = []

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> AdbStandin:
        """Listen (again) on the port; the device comes online."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection: the device goes offline."""
        if self._server is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._connections.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, _ = server.accept()
            except OSError:
                return
            conn = _Connection(self, sock)
            self._connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    # -- services ---------------------------------------------------------------------------------
    def shell(self, stream: _Stream, service: str) -> None:
        """`shell,v2,...:command`: run it with sh, answer with shell-protocol packets (v2) or raw."""
        options, _, command = service.partition(":")
        v2 = "v2" in options.split(",")
        self.shell_commands.append(command)
        env = dict(os.environ, PATH=f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        proc = subprocess.run(["sh", "-c", command], capture_output=True, env=env, stdin=subprocess.DEVNULL)
        if not v2:
            stream.write(proc.stdout + proc.stderr)
            return
        for kind, data in ((1, proc.stdout), (2, proc.stderr)):
            for start in range(0, len(data), 64 * 1024):
                chunk = data[start : start + 64 * 1024]
                stream.write(struct.pack("<BI", kind, len(chunk)) + chunk)
        stream.write(struct.pack("<BIB", 3, 1, proc.returncode & 0xFF))

    def sync(self, stream: _Stream) -> None:
        """The file-transfer service: STAT, SEND (creating parents), RECV, QUIT."""
        while True:
            header = stream.read(8)
            if len(header) < 8:
                return
            request, length = header[:4], struct.unpack("<I", header[4:])[0]
            if request == b"QUIT":
                return
            arg = stream.read(length).decode()
            if request == b"STAT":
                try:
                    info = os.stat(arg)
                    stream.write(b"STAT" + struct.pack("<3I", info.st_mode, info.st_size, int(info.st_mtime)))
                except OSError:
                    stream.write(b"STAT" + struct.pack("<3I", 0, 0, 0))
            elif request == b"SEND":
                self._receive_file(stream, arg)
            elif request == b"RECV":
                self._send_file(stream, arg)
            else:
                self._fail(stream, f"unknown sync request {request!r}")
                return

    def _receive_file(self, stream: _Stream, arg: str) -> None:
        path, _, mode = arg.rpartition(",")
        chunks, error = [], None
        while True:
            kind, length = stream.read(4), struct.unpack("<I", stream.read(4))[0]
            if kind == b"DATA":
                chunks.append(stream.read(length))
            elif kind == b"DONE":
                break
            else:
                self._fail(stream, f"unexpected {kind!r} in SEND")
                return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            os.chmod(path, stat.S_IMODE(int(mode)) if mode.isdigit() else 0o644)
        except OSError as exc:
            error = f"{path}: {exc.strerror}"
        if error:
            self._fail(stream, error)
        else:
            stream.write(b"OKAY" + struct.pack("<I", 0))

    def _send_file(self, stream: _Stream, path: str) -> None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            self._fail(stream, f"{path}: {exc.strerror}")
            return
        for start in range(0, len(data), 64 * 1024):
            chunk = data[start : start + 64 * 1024]
            stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        stream.write(b"DONE" + struct.pack("<I", int(time.time())))

    @staticmethod
    def _fail(stream: _Stream, message: str) -> None:
        raw = message.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(raw)) + raw)
