"""A complete broker on this machine (SQLite file, random master key, loopback HTTP),
for development, the demo and tests. Not for production: the master key lives
only in this process."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType

from teellm.crypto.secret import SecretBytes
from teellm.kbs.app import create_app
from teellm.kbs.broker import KeyBroker
from teellm.kbs.masterkey import MasterKeyRing
from teellm.kbs.ratelimit import FailureRateLimiter
from teellm.kbs.server import ServerThread
from teellm.kbs.store import Store, open_store


class LocalBroker:
    """Store + broker + HTTP server on 127.0.0.1; ``url`` for ``KeyBrokerClient``."""

    def __init__(
        self,
        store_url: str | None = None,
        *,
        master_keys: MasterKeyRing | None = None,
        nonce_ttl_s: float = 60.0,
        max_failures: int = 20,
        verify_clock: Callable[[], datetime | None] | None = None,
        collateral: Mapping[str, bytes] | None = None,
        admin_token_hashes: list[str] | None = None,
        allow_unbound_evidence: bool = False,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_url is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="teellm-kbs-")
            store_url = f"sqlite:///{Path(self._tmp.name) / 'kbs.db'}"
        self.store_url = store_url
        self.store: Store = open_store(store_url)
        self.master_keys = master_keys or MasterKeyRing([SecretBytes.random(32)])
        self.broker = KeyBroker(
            self.store,
            self.master_keys,
            nonce_ttl_s=nonce_ttl_s,
            rate_limiter=FailureRateLimiter(max_failures=max_failures),
            verify_clock=verify_clock,
            collateral=collateral,
            allow_unbound_evidence=allow_unbound_evidence,
        )
        self.server = ServerThread(create_app(self.broker, admin_token_hashes=admin_token_hashes))

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalBroker:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
