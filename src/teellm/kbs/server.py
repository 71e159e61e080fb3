"""Running the broker's HTTP app with uvicorn, in the foreground or in a thread."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI


class ServerThread:
    """A real uvicorn server on a loopback socket, in a background thread.

    Binds before starting, so ``url`` is usable as soon as ``start()`` returns.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        if sock is None:
            # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only
            # then, and without it every response waits ~40 ms for a delayed ACK.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        self._sock = sock
        name = sock.getsockname()
        self.host: str = str(name[0]) if isinstance(name, tuple) else str(name)
        self.port: int = int(name[1]) if isinstance(name, tuple) else 0
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://host:port`` (for a unix socket, the host part is the socket path)."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("key broker server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def unix_socket(path: str | Path) -> socket.socket:
    """A listening-ready unix socket at ``path`` that only this user may connect to (0600)."""
    p = Path(path)
    if p.is_socket():
        p.unlink()  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600 from the start, no window with wider rights
    try:
        sock.bind(str(p))
    finally:
        os.umask(old)
    return sock
