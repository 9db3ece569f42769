"""The central index in PostgreSQL: :class:`PgIndex`, for a store on several hosts.

Same statements, same behaviour. :class:`PgIndex` is
:class:`~linetap.sync.central.index.IndexTables` (with its fleet and receipt
tables, and every table a later mixin adds) on a psycopg 3 connection pool:
each call borrows a connection through :class:`PgConnection`, which speaks the
SQLite dialect those statements are written in (``?`` placeholders, rows by
name and by position, integers for sums) so no statement is written twice.
Connections run in autocommit mode, so a single statement commits on its
own, as in SQLite, and a statement's row counts (``INSERT ... ON CONFLICT DO
NOTHING`` inserted or not) mean the same.

Write transactions: one at a time, as in SQLite. The statements open a write
transaction with ``BEGIN IMMEDIATE``, SQLite's global write lock taken before
anything is read; on PostgreSQL that is ``BEGIN`` followed by
``pg_advisory_xact_lock`` on one key (:data:`WRITE_LOCK`), held until commit or
rollback, on every host that shares the database. That is what keeps the
receipt log one chain: the transaction that appends reads the newest receipt
(``ORDER BY pos DESC LIMIT 1``) only after taking the lock, and under READ
COMMITTED each statement sees everything committed before it, so it sees the
previous appender's receipt. ``SELECT ... FOR UPDATE`` on the chain head was
the alternative and is wrong twice: an empty log has no row to lock (two first
receipts would both name GENESIS), and a waiter woken after the head's
owner commits gets the old head back (the ``LIMIT`` is not re-evaluated), so
two receipts would name the same ``prev``. The advisory lock also serialises
the fleet tracker's batches and any later log with a chain (timestamps, the
access log) exactly as SQLite does, with no change to their statements.
Single statements (claims, staging rows) do not take it and run in parallel;
the unique keys decide between racers there, as in SQLite.

Faults: a server that is down, restarting or unreachable, a pool with no free
connection within the timeout, a connection cut mid-statement: each is
:class:`~linetap.sync.central.store.StoreUnavailable`, so ingest answers
``retry`` and the box sends again; nothing was acknowledged. The pool checks a
connection before lending it, so after a restart the first call does not
fail on a dead connection. Values PostgreSQL cannot hold (a NUL character in
text, an integer beyond 64 bits) are refused before they are sent, with
:class:`IndexValueError` naming the value.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from linetap.firmware.errors import SyncError
from linetap.sync.central import pgschema
from linetap.sync.central.config import redacted
from linetap.sync.central.index import IndexTables
from linetap.sync.central.store import StoreUnavailable

logger = logging.getLogger(__name__)

WRITE_LOCK = int.from_bytes(b"linetapW", "big")  # pg_advisory_xact_lock key of ``BEGIN IMMEDIATE``
INT64 = (-(2 ** 63), 2 ** 63 - 1)
RECONNECT_TIMEOUT_S = 15.0
NUMERIC_OID = 1700


class IndexValueError(SyncError, ValueError):
    """A value the index cannot hold (PostgreSQL: a NUL character in text)."""


class IndexValueOutOfRange(IndexValueError, OverflowError):
    """An integer beyond the index's 64 bits (SQLite raises ``OverflowError`` for these too)."""


class Row(dict[str, Any]):
    """A result row by column name (``row["pos"]``) and by position (``row[0]``), like ``sqlite3.Row``."""

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _rows(cursor: psycopg.Cursor[Any]) -> Any:
    columns = cursor.description or ()
    names = [c.name for c in columns]
    # SUM() of a bigint is numeric in PostgreSQL, an integer in SQLite; no column here is numeric.
    numeric = [i for i, c in enumerate(columns) if c.type_code == NUMERIC_OID]
    if not numeric:
        return lambda values: Row(zip(names, values))

    def make(values: Sequence[Any]) -> Row:
        return Row(zip(names, (int(v) if isinstance(v, Decimal) else v for v in values)))
    return make


@lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    """A statement in ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def check_values(params: Iterable[Any], sql: str) -> None:
    """Refuse a value PostgreSQL cannot store, naming it and the statement; SQLite stores NULs."""
    for number, value in enumerate(params, 1):
        if isinstance(value, str) and "\x00" in value:
            raise IndexValueError(f"value {number} of `{_head(sql)}` holds a NUL character, which PostgreSQL "
                                  f"text cannot hold ({value[:40]!r}...); the input that carried it is malformed")
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            raise IndexValueOutOfRange(f"value {number} of `{_head(sql)}` is {value}, beyond the index's "
                                       "64-bit integers; the input that carried it is malformed")


def _head(sql: str) -> str:
    return " ".join(sql.split()[:6]) + " ..."


class PgConnection:
    """One borrowed psycopg connection, speaking the SQLite dialect of the index's statements."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), *, prepare: bool | None = None) -> psycopg.Cursor[Any]:
        """``prepare`` False: planned for these values every time (a search whose values decide the plan)."""
        if sql == "BEGIN IMMEDIATE":
            cursor = self._conn.execute("BEGIN")
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            return cursor
        if not params:
            return self._conn.execute(sql)  # no placeholders: psycopg then takes % literally
        check_values(params, sql)
        return self._conn.execute(_dialect(sql), params, prepare=prepare)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        rows = list(seq)
        for params in rows:
            check_values(params, sql)
        cursor = self._conn.cursor()
        if rows:
            cursor.executemany(_dialect(sql), rows)
        return cursor


class PgIndex(IndexTables):
    """:class:`~linetap.sync.central.index.Index` in a PostgreSQL database; thread- and process-safe.

    ``url`` is ``postgresql://USER@HOST:PORT/DATABASE``; ``password`` (from a
    password file) is passed apart from it, and without one libpq reads
    ``PGPASSWORD`` or ``~/.pgpass``. Opening connects once (a clear
    :class:`StoreUnavailable` naming the redacted URL and the server's answer
    when that fails) and, with ``migrate``, brings the schema to this program's
    version (:func:`~linetap.sync.central.pgschema.upgrade`); without, an older
    schema is refused with the ``migrate`` command to run.
    """

    shared = True  # every ingest host reaches it: staged parts keep their bytes here (stagedparts.py)

    def __init__(self, url: str, *, password: str | None = None, pool_size: int = 4,
                 connect_timeout_s: float = 10.0, migrate: bool = True) -> None:
        self.where = redacted(url)
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._held = threading.local()  # the connection a pinned() block holds, per thread
        # No JIT: it adds a few hundred ms of compiling to a big query (a whole list) and helps none here.
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": _rows,
                                  "connect_timeout": max(1, round(connect_timeout_s)), "options": "-c jit=off"}
        if password is not None:
            kwargs["password"] = password
        self.version = self._prepare(url, kwargs, migrate)
        self._timeout = connect_timeout_s
        # reconnect_timeout bounds the pool's back-off after an outage (1, 2, 4... s, then it gives up and
        # the next caller starts again from 1 s), so a server that is back is used again within that.
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs=kwargs, timeout=connect_timeout_s,
                                    check=ConnectionPool.check_connection, open=False, name="linetap-index",
                                    reconnect_timeout=RECONNECT_TIMEOUT_S)
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as e:
            self.close()
            raise StoreUnavailable(f"index {self.where}: no connection within {connect_timeout_s:g} s ({e}); "
                                   "check that the server is running and [index] url") from e
        logger.info("index opened where=%s schema=%d pool_size=%d", self.where, self.version, pool_size)

    def _prepare(self, url: str, kwargs: dict[str, Any], migrate: bool) -> int:
        """Connect once (the server's own reason when it fails) and check or migrate the schema."""
        try:
            with psycopg.connect(url, **kwargs) as conn:
                if migrate:
                    return pgschema.upgrade(conn, self.where)
                version = pgschema.current_version(conn)
        except psycopg.Error as e:
            raise StoreUnavailable(f"index {self.where} cannot be opened: {_reason(e)}; check [index] url, "
                                   "the password and that the server is running") from e
        if version != pgschema.SCHEMA_VERSION:
            raise SyncError(f"index {self.where} has schema version {version}, this program needs "
                            f"{pgschema.SCHEMA_VERSION}; run `linetap-central migrate`")
        return version

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> PgIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Every statement of this block on this thread through one pooled connection: one borrow, and one
        liveness check, per block instead of per statement (ingest pins one per message; a part took
        seven borrows). Nested blocks share the outer one's."""
        if getattr(self._held, "conn", None) is not None:
            yield
            return
        with self._sql() as conn:
            self._held.conn = conn
            try:
                yield
            finally:
                self._held.conn = None

    @contextmanager
    def _sql(self) -> Iterator[PgConnection]:  # type: ignore[override]
        held = getattr(self._held, "conn", None)
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"index {self.where} is closed")
        try:
            if held is not None:
                yield held
                return
            with pool.connection() as conn:
                yield PgConnection(conn)
        except PoolTimeout as e:
            raise StoreUnavailable(f"index {self.where}: no free connection within {self._timeout:g} s; "
                                   "the server may be down or [index] pool_size too small") from e
        except (psycopg.IntegrityError, psycopg.DataError, psycopg.ProgrammingError):
            raise  # about this one row or call: the caller decides
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.DatabaseError) as e:
            # Server gone, restarting, connection cut, out of disk: nobody can use the index, so ingest
            # stops acknowledging (the box sends again) rather than rejecting uploads as if at fault.
            raise StoreUnavailable(f"index {self.where}: {_reason(e)}") from e


def _reason(e: psycopg.Error) -> str:
    """The server's or libpq's one-line reason (never the connection string)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
