"""Durable broker state over SQLite or PostgreSQL, one code path, chosen by URL.

``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` (stdlib sqlite3, WAL mode) or
``postgresql://user@host:port/db`` (psycopg 3). SQL is written once with ``?``
placeholders; the PostgreSQL connection rewrites them to ``%s``. Values that
differ in type between the two (bytes) are stored as hex text.

Tables: keys (content keys wrapped under the master key), policies (release
policy per model, optionally per version), nonces (single-use challenges),
audit (hash-chained log) and meta (chain head, admin token hash).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from teellm.kbs.audit import (
    GENESIS,
    AuditEvent,
    AuditRecord,
    AuditReport,
    chain_hash,
    record_body,
    utc_now_iso,
    verify_rows,
)
from teellm.kbs.errors import StoreError

# Model-wide policies use this version in the primary key (NULLs are not unique in SQL).
ANY_VERSION = -1
_AUDIT_LOCK_ID = 0x7E11_4B53  # PostgreSQL advisory lock serialising audit appends

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS keys (
        model_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped TEXT NOT NULL,
        manifest_digest TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (model_id, version))""",
    """CREATE TABLE IF NOT EXISTS policies (
        model_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        policy TEXT NOT NULL,
        min_version BIGINT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (model_id, version))""",
    """CREATE TABLE IF NOT EXISTS nonces (
        request_id TEXT PRIMARY KEY,
        nonce TEXT NOT NULL,
        model_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        tee_type TEXT NOT NULL,
        client TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY,
        time TEXT NOT NULL,
        event TEXT NOT NULL,
        model_id TEXT,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS meta (
        k TEXT PRIMARY KEY,
        v TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at)",
]


@dataclass(frozen=True)
class KeyRow:
    model_id: str
    version: int
    master_key_id: str
    wrapped: bytes
    manifest_digest: str | None
    created_at: str


@dataclass(frozen=True)
class KeyInfo:
    """Key metadata safe to show an administrator: no key material, wrapped or not."""

    model_id: str
    version: int
    master_key_id: str
    manifest_digest: str | None
    created_at: str


@dataclass(frozen=True)
class PolicyRow:
    model_id: str
    version: int | None  # None: applies to every version of the model
    policy: str  # JSON of the appraisal policy
    min_version: int
    updated_at: str


@dataclass(frozen=True)
class ChallengeRow:
    request_id: str
    nonce: bytes
    model_id: str
    version: int
    tee_type: str
    client: str
    expires_at: float
    used: bool


class _Cursor(Protocol):
    rowcount: int

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class _Tx:
    """One transaction on one connection; ``?`` placeholders in every statement."""

    def __init__(self, conn: Any, postgres: bool) -> None:
        self._conn = conn
        self._pg = postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        if self._pg:
            sql = sql.replace("?", "%s")
        cur: _Cursor = self._conn.execute(sql, tuple(params))
        return cur


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite://") :]
    if not rest.startswith("/"):
        raise StoreError("sqlite URL must look like sqlite:///path.db", code="store_url_invalid")
    path = rest[1:]
    if not path:
        raise StoreError("sqlite URL has no file path", code="store_url_invalid")
    return path if path == ":memory:" else str(Path(path))


class Store:
    """Broker state in a database. Thread-safe: one connection per thread."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite://"):
            self.dialect = "sqlite"
            self._sqlite_path = _sqlite_path(url)
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
        else:
            raise StoreError(
                "store URL must start with sqlite:// or postgresql://", code="store_url_invalid"
            )
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        with self._tx(write=True) as tx:
            if self.dialect == "postgresql":
                # Two brokers creating the schema at once would race on CREATE IF NOT EXISTS.
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_AUDIT_LOCK_ID + 1,))
            for stmt in _SCHEMA:
                tx.execute(stmt)

    def __repr__(self) -> str:
        # The URL may carry a database password: show only the dialect.
        return f"Store({self.dialect})"

    # -- connections and transactions ------------------------------------------------

    def _connect(self) -> Any:
        try:
            if self.dialect == "sqlite":
                conn = sqlite3.connect(
                    self._sqlite_path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: commits are atomic and survive a process crash; only an
                # OS crash may lose the last transactions.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=30000")
                return conn
            import psycopg

            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except Exception as exc:  # sqlite3.Error, psycopg.Error: report the kind, never the URL
            raise StoreError(
                f"cannot open the {self.dialect} store ({type(exc).__name__})", code="store_open"
            ) from None

    def _conn(self) -> Any:
        if self._closed:
            raise StoreError("store is closed", code="store_closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[_Tx]:
        conn = self._conn()
        try:
            if self.dialect == "sqlite":
                # Writers of this process queue on a Python lock: SQLite's own busy
                # handler sleeps up to 100 ms per retry, which ruins tail latency.
                # IMMEDIATE takes the file's write lock up front (other processes).
                with self._write_lock if write else contextlib.nullcontext():
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    try:
                        yield _Tx(conn, False)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
            else:
                with conn.transaction():
                    yield _Tx(conn, True)
        except StoreError:
            raise
        except (sqlite3.Error, _pg_error()) as exc:
            self._drop_broken(conn)
            raise StoreError(
                f"{self.dialect} store operation failed ({type(exc).__name__})", code="store_error"
            ) from exc

    def _drop_broken(self, conn: Any) -> None:
        if self.dialect == "postgresql" and getattr(conn, "closed", False):
            self._local.conn = None

    def close(self) -> None:
        """Close every connection this store opened (from any thread)."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    # -- keys --------------------------------------------------------------------------

    def put_key(
        self,
        model_id: str,
        version: int,
        master_key_id: str,
        wrapped: bytes,
        *,
        manifest_digest: str | None = None,
        replace: bool = False,
    ) -> bool:
        """Store a wrapped key; returns False when one exists and ``replace`` is False."""
        with self._tx(write=True) as tx:
            exists = tx.execute(
                "SELECT 1 FROM keys WHERE model_id = ? AND version = ?", (model_id, version)
            ).fetchone()
            if exists and not replace:
                return False
            if exists:
                tx.execute(
                    "DELETE FROM keys WHERE model_id = ? AND version = ?", (model_id, version)
                )
            tx.execute(
                "INSERT INTO keys (model_id, version, master_key_id, wrapped, manifest_digest,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (model_id, version, master_key_id, wrapped.hex(), manifest_digest, utc_now_iso()),
            )
        return True

    def get_key(self, model_id: str, version: int) -> KeyRow | None:
        with self._tx() as tx:
            row = tx.execute(
                "SELECT model_id, version, master_key_id, wrapped, manifest_digest, created_at"
                " FROM keys WHERE model_id = ? AND version = ?",
                (model_id, version),
            ).fetchone()
        if row is None:
            return None
        return KeyRow(row[0], int(row[1]), row[2], bytes.fromhex(row[3]), row[4], row[5])

    def list_keys(self) -> list[KeyInfo]:
        with self._tx() as tx:
            rows = tx.execute(
                "SELECT model_id, version, master_key_id, manifest_digest, created_at FROM keys"
                " ORDER BY model_id, version"
            ).fetchall()
        return [KeyInfo(r[0], int(r[1]), r[2], r[3], r[4]) for r in rows]

    def model_known(self, model_id: str) -> bool:
        with self._tx() as tx:
            a = tx.execute("SELECT 1 FROM keys WHERE model_id = ? LIMIT 1", (model_id,)).fetchone()
            b = tx.execute(
                "SELECT 1 FROM policies WHERE model_id = ? LIMIT 1", (model_id,)
            ).fetchone()
        return a is not None or b is not None

    def release_state(
        self, model_id: str, version: int
    ) -> tuple[bool, PolicyRow | None, PolicyRow | None, KeyRow | None]:
        """In one read: is the model known, its version policy, its model-wide policy, the key."""
        cols = "model_id, version, policy, min_version, updated_at"
        with self._tx() as tx:
            pols = tx.execute(
                f"SELECT {cols} FROM policies WHERE model_id = ? AND version IN (?, ?)",  # noqa: S608
                (model_id, version, ANY_VERSION),
            ).fetchall()
            key = tx.execute(
                "SELECT model_id, version, master_key_id, wrapped, manifest_digest, created_at"
                " FROM keys WHERE model_id = ? AND version = ?",
                (model_id, version),
            ).fetchone()
            known = bool(pols) or key is not None
            if not known:
                known = (
                    tx.execute(
                        "SELECT 1 FROM keys WHERE model_id = ? LIMIT 1", (model_id,)
                    ).fetchone()
                    is not None
                )
        rows = [self._policy_row(r) for r in pols]
        specific = next((r for r in rows if r.version is not None), None)
        general = next((r for r in rows if r.version is None), None)
        key_row = (
            None
            if key is None
            else KeyRow(key[0], int(key[1]), key[2], bytes.fromhex(key[3]), key[4], key[5])
        )
        return known, specific, general, key_row

    def all_wrapped(self) -> list[KeyRow]:
        """Every wrapped key row (for master-key rotation only)."""
        with self._tx() as tx:
            rows = tx.execute(
                "SELECT model_id, version, master_key_id, wrapped, manifest_digest, created_at"
                " FROM keys ORDER BY model_id, version"
            ).fetchall()
        return [KeyRow(r[0], int(r[1]), r[2], bytes.fromhex(r[3]), r[4], r[5]) for r in rows]

    def replace_wrapped(self, updates: Sequence[tuple[str, int, str, bytes, str, bytes]]) -> int:
        """Atomically re-wrap rows: (model, version, old key id, old wrapped, new id, new wrapped).

        A row changed since it was read is left alone and not counted.
        """
        n = 0
        with self._tx(write=True) as tx:
            for model_id, version, old_id, old_wrapped, new_id, new_wrapped in updates:
                cur = tx.execute(
                    "UPDATE keys SET master_key_id = ?, wrapped = ? WHERE model_id = ? AND"
                    " version = ? AND master_key_id = ? AND wrapped = ?",
                    (new_id, new_wrapped.hex(), model_id, version, old_id, old_wrapped.hex()),
                )
                n += cur.rowcount
        return n

    # -- policies ----------------------------------------------------------------------

    def set_policy(
        self, model_id: str, version: int | None, policy_json: str, min_version: int
    ) -> None:
        v = ANY_VERSION if version is None else version
        with self._tx(write=True) as tx:
            tx.execute("DELETE FROM policies WHERE model_id = ? AND version = ?", (model_id, v))
            tx.execute(
                "INSERT INTO policies (model_id, version, policy, min_version, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (model_id, v, policy_json, min_version, utc_now_iso()),
            )

    def get_policy(self, model_id: str, version: int | None) -> PolicyRow | None:
        v = ANY_VERSION if version is None else version
        with self._tx() as tx:
            row = tx.execute(
                "SELECT model_id, version, policy, min_version, updated_at FROM policies"
                " WHERE model_id = ? AND version = ?",
                (model_id, v),
            ).fetchone()
        return None if row is None else self._policy_row(row)

    def list_policies(self) -> list[PolicyRow]:
        with self._tx() as tx:
            rows = tx.execute(
                "SELECT model_id, version, policy, min_version, updated_at FROM policies"
                " ORDER BY model_id, version"
            ).fetchall()
        return [self._policy_row(r) for r in rows]

    @staticmethod
    def _policy_row(r: Any) -> PolicyRow:
        v = int(r[1])
        return PolicyRow(r[0], None if v == ANY_VERSION else v, r[2], int(r[3]), r[4])

    # -- nonces ------------------------------------------------------------------------

    def add_challenge(self, c: ChallengeRow, audit: AuditEvent | None = None) -> None:
        """Store a new challenge, and its audit record in the same transaction."""
        with self._tx(write=True) as tx:
            tx.execute(
                "INSERT INTO nonces (request_id, nonce, model_id, version, tee_type, client,"
                " expires_at, used) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    c.request_id,
                    c.nonce.hex(),
                    c.model_id,
                    c.version,
                    c.tee_type,
                    c.client,
                    c.expires_at,
                ),
            )
            if audit is not None:
                self._append_audit(tx, audit)

    def get_challenge(self, request_id: str) -> ChallengeRow | None:
        with self._tx() as tx:
            r = tx.execute(
                "SELECT request_id, nonce, model_id, version, tee_type, client, expires_at, used"
                " FROM nonces WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        if r is None:
            return None
        return ChallengeRow(
            r[0], bytes.fromhex(r[1]), r[2], int(r[3]), r[4], r[5], float(r[6]), bool(r[7])
        )

    def consume_challenge(self, request_id: str) -> bool:
        """Mark a challenge used; True for exactly one caller, however many race."""
        with self._tx(write=True) as tx:
            cur = tx.execute(
                "UPDATE nonces SET used = 1 WHERE request_id = ? AND used = 0", (request_id,)
            )
            return cur.rowcount == 1

    def purge_challenges(self, older_than: float) -> int:
        """Delete challenges that expired before ``older_than`` (epoch seconds).

        Safe: an expired challenge is refused whether or not its row exists.
        """
        with self._tx(write=True) as tx:
            cur = tx.execute("DELETE FROM nonces WHERE expires_at < ?", (older_than,))
            return cur.rowcount

    # -- audit -------------------------------------------------------------------------

    def append_audit(self, event: AuditEvent) -> AuditRecord:
        """Append one record to the hash chain (serialised across threads and brokers)."""
        with self._tx(write=True) as tx:
            return self._append_audit(tx, event)

    def _append_audit(self, tx: _Tx, event: AuditEvent) -> AuditRecord:
        if self.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_AUDIT_LOCK_ID,))
        head = tx.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(head[0]) + 1, head[1]) if head else (1, GENESIS)
        time = utc_now_iso()
        body = record_body(seq, time, event)
        own = chain_hash(prev, body)
        tx.execute(
            "INSERT INTO audit (seq, time, event, model_id, body, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, time, event.event, event.model_id, body.decode(), prev, own),
        )
        self._set_meta(tx, "audit_head", f"{seq}:{own}")
        return AuditRecord(**event.model_dump(), seq=seq, time=time, prev_hash=prev, hash=own)

    def audit_records(self, *, after_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Records in chain order, parsed from their hashed bodies."""
        import json

        sql = "SELECT seq, body, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq"
        params: list[Any] = [after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._tx() as tx:
            rows = tx.execute(sql, params).fetchall()
        out = []
        for seq, body, prev, own in rows:
            data = json.loads(body)
            data.update(seq=int(seq), prev_hash=prev, hash=own)
            out.append(AuditRecord(**data))
        return out

    def audit_last_seq(self) -> int:
        """The highest audit sequence number (0 when empty)."""
        with self._tx() as tx:
            row = tx.execute("SELECT MAX(seq) FROM audit").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def verify_audit(self) -> AuditReport:
        """Walk the whole chain and compare it with the stored head."""
        with self._tx() as tx:
            rows = tx.execute(
                "SELECT seq, time, event, body, prev_hash, hash FROM audit ORDER BY seq"
            ).fetchall()
            head_row = tx.execute("SELECT v FROM meta WHERE k = ?", ("audit_head",)).fetchone()
        head: tuple[int, str] | None = None
        if head_row is not None:
            seq_s, _, h = str(head_row[0]).partition(":")
            head = (int(seq_s) if seq_s.isdigit() else -1, h)  # edited head: a problem
        return verify_rows([(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows], head)

    # -- meta --------------------------------------------------------------------------

    @staticmethod
    def _set_meta(tx: _Tx, k: str, v: str) -> None:
        tx.execute("DELETE FROM meta WHERE k = ?", (k,))
        tx.execute("INSERT INTO meta (k, v) VALUES (?, ?)", (k, v))

    def set_meta(self, k: str, v: str) -> None:
        with self._tx(write=True) as tx:
            self._set_meta(tx, k, v)

    def get_meta(self, k: str) -> str | None:
        with self._tx() as tx:
            row = tx.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else str(row[0])


def _pg_error() -> type[Exception]:
    try:
        import psycopg

        return psycopg.Error
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return sqlite3.Error


def open_store(url: str) -> Store:
    """Open (and create the schema of) the store at ``url``: sqlite:///... or postgresql://..."""
    return Store(url)
