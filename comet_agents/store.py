"""Durable storage of CoMeT memories: sessions, an append-only event log and versioned state snapshots.

Everything goes through SQLAlchemy 2.x (typed declarative models), so the same code runs on SQLite (the
default: a file in the user data directory, WAL + busy timeout), PostgreSQL and MariaDB/MySQL. This module
knows nothing about models: it stores rows and bytes, checks optimistic versions and sha256 digests, and
computes which events a snapshot covers. :mod:`comet_agents.memory` turns that into memory states.

Data model (``docs/storage.md`` has the full story):

* ``comet_sessions``: one row per (tenant, session id); the only mutable row. It carries the current branch,
  the head snapshot, counters for event seqs / versions / branches, an ``epoch`` bumped by anything that is
  not a plain append (restore, forget) so cached states know to reload, and ``version``, the optimistic
  concurrency counter (SQLAlchemy ``version_id_col``: every UPDATE is ``... WHERE version = :seen``).
* ``comet_events``: the append-only log, ``(session, seq)`` keyed; each row keeps the event's JSON payload
  and its rendered text (replay never depends on the renderer). ``forget`` erases payload and text and
  marks the row deleted; rows are never renumbered.
* ``comet_branches``: ``restore(v)`` starts a new branch whose history is "the events snapshot v covered";
  events appended afterwards belong to the new branch. The events of a branch's *lineage* are its own
  events plus those of its base branch up to the base seq, recursively.
* ``comet_snapshots`` + ``comet_snapshot_parts``: append-only snapshot rows (version, parent version,
  branch, last seq covered, sha256, size, fingerprints, config, reason) with the safetensors state blob
  split into parts of at most 1 MiB (MariaDB's ``max_allowed_packet`` caps one statement; parts keep every
  statement small on every back-end).

State blobs are safetensors bytes made by :meth:`MemoryState.to_bytes`; this module never unpickles
anything and checks size and sha256 of every blob it hands out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    delete,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from .state import CorruptStateError

log = logging.getLogger(__name__)

__all__ = [
    "ENV_STORE_URL",
    "BLOB_PART_BYTES",
    "Store",
    "StoreError",
    "ConflictError",
    "StaleStateError",
    "SessionNotFoundError",
    "SessionExistsError",
    "VersionNotFoundError",
    "SnapshotPurgedError",
    "CorruptSnapshotError",
    "SessionInfo",
    "EventRecord",
    "SnapshotInfo",
    "NewEvent",
    "ForgetResult",
    "default_url",
    "open_store",
]

ENV_STORE_URL = "COMET_AGENTS_STORE"
"""Environment variable overriding the default store URL (a SQLAlchemy URL or a SQLite file path)."""

BLOB_PART_BYTES = 1 << 20
"""State blobs are stored in parts of at most this many bytes (one INSERT each)."""

MAX_TENANT_CHARS = 128
MAX_SESSION_ID_CHARS = 255
SQLITE_BUSY_TIMEOUT_MS = 30_000


# ----------------------------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class of the errors this module raises."""


class ConflictError(StoreError):
    """Another writer changed the session since this one last saw it (optimistic version check failed).

    Nothing of the failed operation was written. Reload (``ComeTMemory.refresh()``) and try again.
    """


class SessionNotFoundError(StoreError, LookupError):
    """No session with this id exists for this tenant."""


class SessionExistsError(StoreError):
    """A session with this id already exists for this tenant."""


class VersionNotFoundError(StoreError, LookupError):
    """The session has no snapshot with this version."""


class SnapshotPurgedError(StoreError):
    """The snapshot's state was deleted by ``forget`` (it contained forgotten events); it cannot come back."""


class CorruptSnapshotError(CorruptStateError):
    """A stored state blob is truncated or does not match its sha256 digest."""


class StaleStateError(ConflictError):
    """The session was restored or had events forgotten after this state was built: reload before saving it."""


# ----------------------------------------------------------------------------------------------- schema


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every back-end (stored naive UTC; microseconds kept on MySQL)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# MySQL/MariaDB: BLOB and TEXT hold 64 KiB only; states and large events need the LONG variants.
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

_TABLE_ARGS_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mariadb_engine": "InnoDB",
                     "mariadb_charset": "utf8mb4"}


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class SessionRow(Base):
    """A memory session. The only mutable row: every change bumps ``version`` (optimistic concurrency)."""

    __tablename__ = "comet_sessions"
    __table_args__ = (UniqueConstraint("tenant", "session_id"), _TABLE_ARGS_MYSQL)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(MAX_TENANT_CHARS))
    session_id: Mapped[str] = mapped_column(String(MAX_SESSION_ID_CHARS))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    model_name: Mapped[str] = mapped_column(String(255), default="")
    config_fingerprint: Mapped[str] = mapped_column(String(64))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    adapter_fingerprint: Mapped[str] = mapped_column(String(64))
    config_json: Mapped[str] = mapped_column(Text)
    branch: Mapped[int] = mapped_column(Integer, default=0)  # current branch
    head_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # newest snapshot of the lineage
    head_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # last_seq of head_version
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # highest event seq allocated
    last_version: Mapped[int] = mapped_column(Integer, default=0)  # highest snapshot version allocated
    last_branch: Mapped[int] = mapped_column(Integer, default=0)  # highest branch number allocated
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # bumped by restore / forget / rebuild
    forked_from: Mapped[str | None] = mapped_column(String(400), nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


class BranchRow(Base):
    """A line of history. Branch 0 starts empty; ``restore(v)`` starts one based on snapshot ``v``."""

    __tablename__ = "comet_branches"
    __table_args__ = (
        ForeignKeyConstraint(["session_pk"], ["comet_sessions.pk"]),
        _TABLE_ARGS_MYSQL,
    )

    session_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    branch: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    base_branch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    base_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    base_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EventRow(Base):
    """One absorbed event. Append-only; ``forget`` erases ``payload`` and ``text`` and sets ``deleted_at``."""

    __tablename__ = "comet_events"
    __table_args__ = (
        ForeignKeyConstraint(["session_pk"], ["comet_sessions.pk"]),
        Index(None, "session_pk", "branch", "seq"),
        _TABLE_ARGS_MYSQL,
    )

    session_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    branch: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(LongText)  # canonical JSON of events.to_dict(event)
    text: Mapped[str] = mapped_column(LongText)  # events.render(event): exactly what was tokenized
    n_tokens: Mapped[int] = mapped_column(Integer)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SnapshotRow(Base):
    """A saved memory state. Append-only except that ``forget``/pruning delete the blob (row kept)."""

    __tablename__ = "comet_snapshots"
    __table_args__ = (
        ForeignKeyConstraint(["session_pk"], ["comet_sessions.pk"]),
        _TABLE_ARGS_MYSQL,
    )

    session_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    branch: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(BigInteger)  # highest event seq the state covers
    events: Mapped[int] = mapped_column(BigInteger)  # live events covered
    tokens_absorbed: Mapped[int] = mapped_column(BigInteger)
    tokens_pending: Mapped[int] = mapped_column(Integer)
    chunks: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the blob; None once purged
    state_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the state's tensors
    config_fingerprint: Mapped[str] = mapped_column(String(64))
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    adapter_fingerprint: Mapped[str] = mapped_column(String(64))
    config_json: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(16))  # auto | manual | close | forget | fork | rebuild
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    blob_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    blob_deleted_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)  # forget | prune


class SnapshotPartRow(Base):
    """Part ``part`` (0-based) of a snapshot's safetensors blob."""

    __tablename__ = "comet_snapshot_parts"
    __table_args__ = (
        ForeignKeyConstraint(["session_pk", "version"], ["comet_snapshots.session_pk", "comet_snapshots.version"]),
        _TABLE_ARGS_MYSQL,
    )

    session_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    part: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(Blob)


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SessionInfo:
    tenant: str
    session_id: str
    created_at: datetime
    updated_at: datetime
    model_name: str
    config_fingerprint: str
    base_fingerprint: str
    adapter_fingerprint: str
    config: dict[str, Any]
    branch: int
    head_version: int | None
    head_seq: int
    last_seq: int
    last_version: int
    epoch: int
    forked_from: str | None
    version: int


@dataclass(frozen=True)
class EventRecord:
    """A stored event. ``id`` is its sequence number in the session (what ``forget`` takes)."""

    id: int
    branch: int
    created_at: datetime
    kind: str
    payload: dict[str, Any] | None  # None once forgotten
    text: str  # "" once forgotten
    n_tokens: int
    deleted: bool


@dataclass(frozen=True)
class SnapshotInfo:
    """One version of a session's memory (a row of :meth:`Store.snapshots`)."""

    version: int
    parent_version: int | None
    branch: int
    last_seq: int
    events: int
    tokens_absorbed: int
    tokens_pending: int
    chunks: int
    size: int
    sha256: str | None
    state_digest: str | None
    config_fingerprint: str
    base_fingerprint: str
    adapter_fingerprint: str
    config: dict[str, Any]
    reason: str
    created_at: datetime
    blob_deleted_reason: str | None

    @property
    def has_blob(self) -> bool:
        return self.blob_deleted_reason is None

    @property
    def purged(self) -> bool:
        """True when ``forget`` deleted this version's state (it cannot be restored)."""
        return self.blob_deleted_reason == "forget"


@dataclass(frozen=True)
class NewEvent:
    """An event ready to append: its kind, canonical JSON payload, rendered text and token count."""

    kind: str
    payload: str
    text: str
    n_tokens: int


@dataclass(frozen=True)
class ForgetResult:
    forgotten: list[int]  # event ids newly forgotten (already-forgotten ids are not repeated)
    purged_versions: list[int]  # snapshots whose state was deleted because it contained them
    head_affected: bool  # the current lineage held a forgotten event: cached states must be rebuilt
    info: SessionInfo


Chain = list[tuple[int, int | None]]
"""Lineage of a branch: ``[(branch, max seq or None), (base branch, base seq), ...]``."""


def _session_info(row: SessionRow) -> SessionInfo:
    return SessionInfo(
        tenant=row.tenant, session_id=row.session_id, created_at=row.created_at, updated_at=row.updated_at,
        model_name=row.model_name, config_fingerprint=row.config_fingerprint,
        base_fingerprint=row.base_fingerprint, adapter_fingerprint=row.adapter_fingerprint,
        config=json.loads(row.config_json), branch=row.branch, head_version=row.head_version,
        head_seq=row.head_seq, last_seq=row.last_seq, last_version=row.last_version, epoch=row.epoch,
        forked_from=row.forked_from, version=row.version,
    )


def _event_record(row: EventRow) -> EventRecord:
    return EventRecord(
        id=row.seq, branch=row.branch, created_at=row.created_at, kind=row.kind,
        payload=json.loads(row.payload) if row.deleted_at is None else None,
        text=row.text, n_tokens=row.n_tokens, deleted=row.deleted_at is not None,
    )


def _snapshot_info(row: SnapshotRow) -> SnapshotInfo:
    return SnapshotInfo(
        version=row.version, parent_version=row.parent_version, branch=row.branch, last_seq=row.last_seq,
        events=row.events, tokens_absorbed=row.tokens_absorbed, tokens_pending=row.tokens_pending,
        chunks=row.chunks, size=row.size, sha256=row.sha256, state_digest=row.state_digest,
        config_fingerprint=row.config_fingerprint,
        base_fingerprint=row.base_fingerprint, adapter_fingerprint=row.adapter_fingerprint,
        config=json.loads(row.config_json), reason=row.reason, created_at=row.created_at,
        blob_deleted_reason=row.blob_deleted_reason,
    )


def chain_covers(chain: Chain, branch: int, seq: int) -> bool:
    """Whether the lineage ``chain`` includes position ``seq`` of ``branch``."""
    return any(b == branch and (c is None or seq <= c) for b, c in chain)


def _check_name(what: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {limit}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not valid Unicode") from None
    return value


# ----------------------------------------------------------------------------------------------- URLs


def default_url() -> str:
    """``$COMET_AGENTS_STORE`` if set, else ``sqlite:///<user data dir>/comet-agents/memory.db``."""
    env = os.environ.get(ENV_STORE_URL, "").strip()
    if env:
        return env if "://" in env else f"sqlite:///{Path(env).expanduser().resolve()}"
    import platformdirs

    return f"sqlite:///{Path(platformdirs.user_data_dir('comet-agents')) / 'memory.db'}"


def _is_transient(exc: DBAPIError) -> bool:
    """Lock / serialization failures a retry may cure."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "diag", None), "sqlstate", None)
    if state in ("40001", "40P01", "55P03"):  # serialization failure, deadlock, lock not available
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1205, 1213):  # MySQL lock wait timeout, deadlock
        return True
    msg = str(orig).lower()
    return "database is locked" in msg or "database is busy" in msg


# ----------------------------------------------------------------------------------------------- the store


class Store:
    """A SQLAlchemy-backed store of memory sessions. Thread-safe; share one per process and URL.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``,
            ``mysql+pymysql://user@host/db``) or ``None`` for :func:`default_url`.
        schema: put the tables into this schema (PostgreSQL) or database (MariaDB/MySQL) instead of the
            connection's default one (uses ``schema_translate_map``; the schema must exist).
        create_schema: create missing tables on first use (``metadata.create_all``; never alters tables).
        part_bytes: largest part of a state blob (one INSERT each); lowered automatically below
            MariaDB/MySQL's ``max_allowed_packet / 4``.
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        schema: str | None = None,
        create_schema: bool = True,
        echo: bool = False,
        part_bytes: int = BLOB_PART_BYTES,
    ) -> None:
        self.url: URL = make_url(url if url is not None else default_url())
        self.schema = schema
        backend = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if backend == "sqlite":
            database = self.url.database
            if not database or database == ":memory:" or self.url.query.get("mode") == "memory":
                raise ValueError(
                    "in-memory SQLite is not supported (every connection would see another database); "
                    "use a file, e.g. sqlite:///memory.db"
                )
            if not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_recycle"] = 1800
        engine = sa.create_engine(self.url, **kwargs)
        if backend == "sqlite":
            _install_sqlite_hooks(engine)
        self._base_engine: Engine = engine
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine: Engine = engine
        self._read_session = sessionmaker(engine, expire_on_commit=False)
        self._write_session = sessionmaker(engine.execution_options(comet_write=True), expire_on_commit=False)
        self.part_bytes = part_bytes
        if backend in ("mysql", "mariadb"):
            with self.engine.connect() as conn:
                packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
            self.part_bytes = max(64 * 1024, min(part_bytes, packet // 4))
        if create_schema:
            self.create_schema()

    # ---- plumbing -------------------------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self._base_engine.dialect.name

    @property
    def key(self) -> str:
        """Identity of the underlying database (for process-wide locks)."""
        return f"{self.url.render_as_string(hide_password=True)}#{self.schema or ''}"

    def __repr__(self) -> str:
        schema = f", schema={self.schema!r}" if self.schema else ""
        return f"Store({self.url.render_as_string(hide_password=True)!r}{schema})"

    def close(self) -> None:
        """Close pooled connections (the store can still be used; it reconnects)."""
        self._base_engine.dispose()

    def create_schema(self) -> None:
        """Create missing tables (safe to race with another process doing the same)."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    Base.metadata.create_all(conn, checkfirst=True)
                return
            except (IntegrityError, OperationalError, sa.exc.ProgrammingError):
                # Two processes creating the same table at once: the loser sees "already exists".
                if attempt == 2:
                    raise

    def drop_schema(self) -> None:
        """Drop every table of this store (tests, tear-down). Irreversible."""
        with self.engine.begin() as conn:
            Base.metadata.drop_all(conn, checkfirst=True)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._read_session() as s, s.begin():
            yield s

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite); lock failures become :class:`ConflictError`."""
        try:
            with self._write_session() as s, s.begin():
                yield s
        except StaleDataError:
            raise ConflictError("the session was changed by another writer at the same time") from None
        except DBAPIError as exc:
            if _is_transient(exc):
                raise ConflictError(f"the session is busy (another writer holds a lock): {exc.orig}") from None
            raise

    def _row(self, s: Session, tenant: str, session_id: str) -> SessionRow:
        row = s.scalars(
            select(SessionRow).where(SessionRow.tenant == tenant, SessionRow.session_id == session_id)
        ).one_or_none()
        if row is None:
            raise SessionNotFoundError(f"no session {session_id!r} for tenant {tenant!r}")
        return row

    # ---- sessions -------------------------------------------------------------------------------------------

    def get_session(self, tenant: str, session_id: str) -> SessionInfo | None:
        _check_name("tenant", tenant, MAX_TENANT_CHARS)
        _check_name("session_id", session_id, MAX_SESSION_ID_CHARS)
        with self._read() as s:
            try:
                return _session_info(self._row(s, tenant, session_id))
            except SessionNotFoundError:
                return None

    def session(self, tenant: str, session_id: str) -> SessionInfo:
        """Like :meth:`get_session` but raises :class:`SessionNotFoundError`."""
        info = self.get_session(tenant, session_id)
        if info is None:
            raise SessionNotFoundError(f"no session {session_id!r} for tenant {tenant!r}")
        return info

    def list_sessions(self, tenant: str) -> list[SessionInfo]:
        _check_name("tenant", tenant, MAX_TENANT_CHARS)
        with self._read() as s:
            rows = s.scalars(select(SessionRow).where(SessionRow.tenant == tenant).order_by(SessionRow.session_id))
            return [_session_info(r) for r in rows]

    def create_session(
        self,
        tenant: str,
        session_id: str,
        *,
        config_fingerprint: str,
        base_fingerprint: str,
        adapter_fingerprint: str,
        config: dict[str, Any],
        model_name: str = "",
        exist_ok: bool = True,
    ) -> SessionInfo:
        """Create a session (with its branch 0); returns the existing one when ``exist_ok``."""
        _check_name("tenant", tenant, MAX_TENANT_CHARS)
        _check_name("session_id", session_id, MAX_SESSION_ID_CHARS)
        existing = self.get_session(tenant, session_id)
        if existing is not None:
            if not exist_ok:
                raise SessionExistsError(f"session {session_id!r} already exists for tenant {tenant!r}")
            return existing
        now = _utcnow()
        try:
            with self._write() as s:
                row = SessionRow(
                    tenant=tenant, session_id=session_id, created_at=now, updated_at=now,
                    model_name=model_name[:255], config_fingerprint=config_fingerprint,
                    base_fingerprint=base_fingerprint, adapter_fingerprint=adapter_fingerprint,
                    config_json=json.dumps(config, sort_keys=True), branch=0, head_version=None, head_seq=0,
                    last_seq=0, last_version=0, last_branch=0, epoch=0,
                )
                s.add(row)
                s.flush()
                s.add(BranchRow(session_pk=row.pk, branch=0, created_at=now))
                s.flush()
                info = _session_info(row)
            return info
        except (IntegrityError, ConflictError):  # created concurrently by another process
            existing = self.get_session(tenant, session_id)
            if existing is None:
                raise
            if not exist_ok:
                raise SessionExistsError(f"session {session_id!r} already exists for tenant {tenant!r}") from None
            return existing

    def update_session_model(
        self, tenant: str, session_id: str, *, config_fingerprint: str, base_fingerprint: str,
        adapter_fingerprint: str, config: dict[str, Any], model_name: str = "",
    ) -> SessionInfo:
        """Record that the session's memory is now made with another model (after a rebuild); bumps the epoch."""
        with self._write() as s:
            row = self._row(s, tenant, session_id)
            row.config_fingerprint, row.base_fingerprint = config_fingerprint, base_fingerprint
            row.adapter_fingerprint, row.config_json = adapter_fingerprint, json.dumps(config, sort_keys=True)
            row.model_name = model_name[:255]
            row.epoch += 1
            row.updated_at = _utcnow()
            s.flush()
            return _session_info(row)

    def delete_session(self, tenant: str, session_id: str) -> None:
        """Delete the session, its events, branches and snapshots, in one transaction."""
        with self._write() as s:
            row = self._row(s, tenant, session_id)
            pk = row.pk
            for table in (SnapshotPartRow, SnapshotRow, EventRow, BranchRow):
                s.execute(delete(table).where(table.session_pk == pk))
            s.delete(row)
            s.flush()
        self._after_erase()

    # ---- lineage ------------------------------------------------------------------------------------------------

    def _branches(self, s: Session, pk: int) -> dict[int, BranchRow]:
        return {b.branch: b for b in s.scalars(select(BranchRow).where(BranchRow.session_pk == pk))}

    @staticmethod
    def _chain_from(branches: dict[int, BranchRow], branch: int, upto: int | None) -> Chain:
        chain: Chain = []
        cutoff = upto
        b: int | None = branch
        while b is not None:
            chain.append((b, cutoff))
            row = branches[b]
            if row.base_branch is None:
                break
            cutoff = row.base_seq if cutoff is None else min(cutoff, row.base_seq)
            b = row.base_branch
        return chain

    def chain(self, tenant: str, session_id: str, branch: int | None = None, upto: int | None = None) -> Chain:
        """Lineage of ``branch`` (default: the current one) up to event ``upto`` (default: all)."""
        with self._read() as s:
            row = self._row(s, tenant, session_id)
            return self._chain_from(self._branches(s, row.pk), row.branch if branch is None else branch, upto)

    @staticmethod
    def _chain_filter(chain: Chain):
        return or_(*[
            and_(EventRow.branch == b, EventRow.seq <= c) if c is not None else EventRow.branch == b
            for b, c in chain
        ])

    def lineage_events(
        self,
        tenant: str,
        session_id: str,
        chain: Chain,
        *,
        after: int = 0,
        include_deleted: bool = False,
        page: int = 500,
    ) -> Iterator[EventRecord]:
        """Events of a lineage with ``seq > after``, in seq order, fetched ``page`` rows per read transaction."""
        last = after
        while True:
            with self._read() as s:
                row = self._row(s, tenant, session_id)
                q = select(EventRow).where(EventRow.session_pk == row.pk, EventRow.seq > last,
                                           self._chain_filter(chain))
                if not include_deleted:
                    q = q.where(EventRow.deleted_at.is_(None))
                rows = [_event_record(r) for r in s.scalars(q.order_by(EventRow.seq).limit(page))]
            yield from rows
            if len(rows) < page:
                return
            last = rows[-1].id

    def count_events(self, tenant: str, session_id: str, chain: Chain) -> int:
        """Live (not forgotten) events of a lineage."""
        with self._read() as s:
            row = self._row(s, tenant, session_id)
            return int(s.scalar(
                select(func.count()).select_from(EventRow).where(
                    EventRow.session_pk == row.pk, EventRow.deleted_at.is_(None), self._chain_filter(chain)
                )
            ))

    def all_events(self, tenant: str, session_id: str) -> list[EventRecord]:
        """Every event of the session, all branches, forgotten ones included (as tombstones)."""
        with self._read() as s:
            row = self._row(s, tenant, session_id)
            q = select(EventRow).where(EventRow.session_pk == row.pk).order_by(EventRow.seq)
            return [_event_record(r) for r in s.scalars(q)]

    # ---- appending ------------------------------------------------------------------------------------------

    def append_events(
        self, tenant: str, session_id: str, events: Sequence[NewEvent], *, expect_version: int
    ) -> tuple[list[int], SessionInfo]:
        """Append events to the current branch, in one transaction; returns their ids and the new session info.

        Raises :class:`ConflictError` (nothing written) unless the session row still has ``expect_version``.
        """
        if not events:
            raise ValueError("no events to append")
        now = _utcnow()
        with self._write() as s:
            row = self._row(s, tenant, session_id)
            if row.version != expect_version:
                raise ConflictError(
                    f"session {session_id!r} was changed by another writer (version {row.version}, this writer "
                    f"last saw {expect_version})"
                )
            first = row.last_seq + 1
            row.last_seq = first + len(events) - 1
            row.updated_at = now
            s.flush()  # UPDATE ... WHERE version = :seen first: a concurrent writer fails here, before inserting
            s.execute(sa.insert(EventRow), [
                {"session_pk": row.pk, "seq": first + i, "branch": row.branch, "created_at": now, "kind": e.kind,
                 "payload": e.payload, "text": e.text, "n_tokens": e.n_tokens, "deleted_at": None}
                for i, e in enumerate(events)
            ])
            info = _session_info(row)
        return list(range(first, first + len(events))), info

    # ---- snapshots ------------------------------------------------------------------------------------------

    def snapshots(self, tenant: str, session_id: str) -> list[SnapshotInfo]:
        """Every version of the session, oldest first (blob-less ones included)."""
        with self._read() as s:
            row = self._row(s, tenant, session_id)
            q = select(SnapshotRow).where(SnapshotRow.session_pk == row.pk).order_by(SnapshotRow.version)
            return [_snapshot_info(r) for r in s.scalars(q)]

    def snapshot_info(self, tenant: str, session_id: str, version: int) -> SnapshotInfo:
        with self._read() as s:
            row = self._row(s, tenant, session_id)
            snap = s.get(SnapshotRow, (row.pk, int(version)))
            if snap is None:
                raise VersionNotFoundError(f"session {session_id!r} has no version {version}")
            return _snapshot_info(snap)

    def save_snapshot(
        self,
        tenant: str,
        session_id: str,
        blob: bytes,
        *,
        branch: int,
        epoch: int,
        last_seq: int,
        events: int,
        parent_version: int | None,
        reason: str,
        state_digest: str,
        tokens_absorbed: int,
        tokens_pending: int,
        chunks: int,
        config_fingerprint: str,
        base_fingerprint: str,
        adapter_fingerprint: str,
        config: dict[str, Any],
        retries: int = 8,
    ) -> tuple[SnapshotInfo, SessionInfo]:
        """Store a state covering the lineage of ``branch`` up to ``last_seq``; returns its info.

        The state must have been built in ``epoch`` on ``branch``: if a restore or forget happened since, it
        may hold forgotten data or another history, and :class:`ConflictError` is raised. Concurrent appends
        or snapshots by other writers do not invalidate it (a snapshot may cover a prefix); the version
        number is re-allocated and the write retried up to ``retries`` times.
        """
        digest = hashlib.sha256(blob).hexdigest()
        for attempt in range(retries + 1):
            try:
                with self._write() as s:
                    row = self._row(s, tenant, session_id)
                    if row.epoch != epoch or row.branch != branch:
                        raise StaleStateError(
                            f"session {session_id!r} was restored or had events forgotten since this state was "
                            "built; reload it before taking a snapshot"
                        )
                    if last_seq > row.last_seq:
                        raise ValueError(f"snapshot covers event {last_seq} but the log ends at {row.last_seq}")
                    version = row.last_version + 1
                    now = _utcnow()
                    row.last_version = version
                    if row.head_version is None or last_seq >= row.head_seq:
                        row.head_version, row.head_seq = version, last_seq
                    row.updated_at = now
                    s.flush()
                    snap = SnapshotRow(
                        session_pk=row.pk, version=version, parent_version=parent_version, branch=branch,
                        last_seq=last_seq, events=events, tokens_absorbed=tokens_absorbed,
                        tokens_pending=tokens_pending, chunks=chunks, size=len(blob), sha256=digest,
                        state_digest=state_digest,
                        config_fingerprint=config_fingerprint, base_fingerprint=base_fingerprint,
                        adapter_fingerprint=adapter_fingerprint, config_json=json.dumps(config, sort_keys=True),
                        reason=reason, created_at=now,
                    )
                    s.add(snap)
                    s.flush()
                    self._write_parts(s, row.pk, version, blob)
                    return _snapshot_info(snap), _session_info(row)
            except StaleStateError:
                raise
            except ConflictError:
                if attempt == retries:
                    raise
            except IntegrityError:  # version taken by a concurrent snapshot
                if attempt == retries:
                    raise ConflictError(
                        "could not allocate a snapshot version (too many concurrent writers)"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_parts(self, s: Session, pk: int, version: int, blob: bytes) -> None:
        # One INSERT per part: a multi-row INSERT could exceed MariaDB's max_allowed_packet.
        table = SnapshotPartRow.__table__
        n = max(1, -(-len(blob) // self.part_bytes))
        for i in range(n):
            s.execute(table.insert().values(session_pk=pk, version=version, part=i,
                                            data=blob[i * self.part_bytes : (i + 1) * self.part_bytes]))

    def load_snapshot(self, tenant: str, session_id: str, version: int) -> tuple[SnapshotInfo, bytes]:
        """The snapshot's info and blob, with size and sha256 verified.

        Raises :class:`VersionNotFoundError`, :class:`SnapshotPurgedError` (deleted by forget),
        ``LookupError`` for a pruned blob (the memory layer rebuilds those by replay) and
        :class:`CorruptSnapshotError` for a truncated or tampered blob.
        """
        with self._read() as s:
            row = self._row(s, tenant, session_id)
            snap = s.get(SnapshotRow, (row.pk, int(version)))
            if snap is None:
                raise VersionNotFoundError(f"session {session_id!r} has no version {version}")
            info = _snapshot_info(snap)
            if info.purged:
                raise SnapshotPurgedError(
                    f"version {version} of session {session_id!r} was deleted by forget() (its state held "
                    "forgotten events)"
                )
            if not info.has_blob:
                raise LookupError(f"the state of version {version} was pruned; rebuild it from the event log")
            parts = s.execute(
                select(SnapshotPartRow.part, SnapshotPartRow.data)
                .where(SnapshotPartRow.session_pk == row.pk, SnapshotPartRow.version == int(version))
                .order_by(SnapshotPartRow.part)
            ).all()
        if [p for p, _ in parts] != list(range(len(parts))):
            raise CorruptSnapshotError(f"version {version} of session {session_id!r}: blob parts are missing")
        blob = b"".join(bytes(d) for _, d in parts)
        if len(blob) != info.size:
            raise CorruptSnapshotError(
                f"version {version} of session {session_id!r} is truncated or padded: {len(blob):,} bytes stored, "
                f"{info.size:,} expected"
            )
        digest = hashlib.sha256(blob).hexdigest()
        if digest != info.sha256:
            raise CorruptSnapshotError(
                f"version {version} of session {session_id!r} is damaged: sha256 {digest[:16]}... does not match "
                f"the recorded {str(info.sha256)[:16]}..."
            )
        return info, blob

    def prune_snapshots(self, tenant: str, session_id: str, *, keep: int, reasons: Sequence[str] = ("auto", "close")
                        ) -> list[int]:
        """Delete the blobs of all but the newest ``keep`` snapshots whose reason is in ``reasons``.

        The head snapshot is never pruned (with ``keep=0`` it is the one blob left). Rows (and digests) stay: a
        pruned version can be rebuilt exactly by replaying the event log. Returns the versions pruned.
        """
        if keep < 0:
            raise ValueError("keep must be >= 0")
        with self._write() as s:
            row = self._row(s, tenant, session_id)
            q = select(SnapshotRow).where(
                SnapshotRow.session_pk == row.pk, SnapshotRow.blob_deleted_at.is_(None),
                SnapshotRow.reason.in_(list(reasons)),
            ).order_by(SnapshotRow.version.desc())
            doomed = [r for r in list(s.scalars(q))[keep:] if r.version != row.head_version]
            if not doomed:
                return []
            now = _utcnow()
            for snap in doomed:
                s.execute(delete(SnapshotPartRow).where(SnapshotPartRow.session_pk == row.pk,
                                                        SnapshotPartRow.version == snap.version))
                snap.blob_deleted_at, snap.blob_deleted_reason = now, "prune"
            return sorted(r.version for r in doomed)

    # ---- time travel ----------------------------------------------------------------------------------------

    def restore(self, tenant: str, session_id: str, version: int, *, expect_version: int) -> SessionInfo:
        """Make ``version`` the head: start a new branch based on it (later events stay in the log).

        Optimistic: raises :class:`ConflictError` unless the session row still has ``expect_version``
        (a restore decided on a stale view is not retried).
        """
        with self._write() as s:
            row = self._row(s, tenant, session_id)
            if row.version != expect_version:
                raise ConflictError(
                    f"session {session_id!r} was changed by another writer (version {row.version}, this writer "
                    f"last saw {expect_version}); refresh and decide again"
                )
            snap = s.get(SnapshotRow, (row.pk, int(version)))
            if snap is None:
                raise VersionNotFoundError(f"session {session_id!r} has no version {version}")
            if snap.blob_deleted_reason == "forget":
                raise SnapshotPurgedError(
                    f"version {version} of session {session_id!r} was deleted by forget() and cannot be restored"
                )
            now = _utcnow()
            new_branch = row.last_branch + 1
            row.last_branch = new_branch
            row.branch = new_branch
            row.head_version, row.head_seq = snap.version, snap.last_seq
            row.epoch += 1
            row.updated_at = now
            s.flush()
            s.add(BranchRow(session_pk=row.pk, branch=new_branch, base_branch=snap.branch, base_seq=snap.last_seq,
                            base_version=snap.version, created_at=now))
            s.flush()
            return _session_info(row)

    def forget(self, tenant: str, session_id: str, event_ids: Sequence[int]) -> ForgetResult:
        """Erase events (payload and text blanked, row kept as a tombstone) and the states derived from them.

        Every snapshot whose lineage includes a forgotten event loses its blob and digest (``purged``). Unknown
        ids raise ``LookupError`` and nothing changes. Bumps the epoch, so cached states rebuild.
        """
        ids = sorted({int(i) for i in event_ids})
        if not ids:
            raise ValueError("no event ids given")
        with self._write() as s:
            row = self._row(s, tenant, session_id)
            found = {e.seq: e for e in s.scalars(
                select(EventRow).where(EventRow.session_pk == row.pk, EventRow.seq.in_(ids)))}
            missing = [i for i in ids if i not in found]
            if missing:
                raise LookupError(f"session {session_id!r} has no events with ids {missing[:10]}")
            now = _utcnow()
            fresh = [i for i in ids if found[i].deleted_at is None]
            for i in ids:
                ev = found[i]
                if ev.deleted_at is None:
                    ev.deleted_at = now
                ev.payload, ev.text = "", ""
            targets = [(found[i].branch, i) for i in ids]
            branches = self._branches(s, row.pk)
            purged: list[int] = []
            snaps = list(s.scalars(select(SnapshotRow).where(SnapshotRow.session_pk == row.pk)))
            for snap in snaps:
                if snap.blob_deleted_reason == "forget":
                    continue
                chain = self._chain_from(branches, snap.branch, snap.last_seq)
                if any(chain_covers(chain, b, q) for b, q in targets):
                    s.execute(delete(SnapshotPartRow).where(SnapshotPartRow.session_pk == row.pk,
                                                            SnapshotPartRow.version == snap.version))
                    snap.sha256 = snap.state_digest = None
                    snap.blob_deleted_at, snap.blob_deleted_reason = now, "forget"
                    purged.append(snap.version)
            head_chain = self._chain_from(branches, row.branch, None)
            head_affected = any(chain_covers(head_chain, b, q) for b, q in targets)
            if row.head_version in purged:
                alive = [sn for sn in snaps if sn.blob_deleted_reason != "forget"
                         and chain_covers(head_chain, sn.branch, sn.last_seq)]
                best = max(alive, key=lambda sn: (sn.last_seq, sn.version), default=None)
                row.head_version, row.head_seq = (best.version, best.last_seq) if best else (None, 0)
            row.epoch += 1
            row.updated_at = now
            s.flush()
            info = _session_info(row)
        self._after_erase()
        return ForgetResult(forgotten=fresh, purged_versions=sorted(purged), head_affected=head_affected, info=info)

    def _after_erase(self) -> None:
        """SQLite: move erased pages out of the WAL (secure_delete already zeroes freed space in the file)."""
        if self.dialect == "sqlite":
            try:
                with self._base_engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except DBAPIError:  # a reader holds the WAL; the next checkpoint will do it
                log.debug("WAL checkpoint after erase deferred", exc_info=True)

    def fork(
        self,
        tenant: str,
        session_id: str,
        new_session_id: str,
        *,
        chain: Chain,
        epoch: int,
        blob: bytes,
        state_digest: str,
        label: str,
        tokens_absorbed: int,
        tokens_pending: int,
        chunks: int,
        config_fingerprint: str,
        base_fingerprint: str,
        adapter_fingerprint: str,
        config: dict[str, Any],
        model_name: str = "",
    ) -> SessionInfo:
        """Copy the live events of ``chain`` into a new session (renumbered from 1) with ``blob`` as version 1.

        The source session is only read. Raises :class:`SessionExistsError` when ``new_session_id`` exists and
        :class:`ConflictError` when the source was restored / had events forgotten since ``epoch``.
        """
        _check_name("session_id", new_session_id, MAX_SESSION_ID_CHARS)
        now = _utcnow()
        try:
            with self._write() as s:
                src = self._row(s, tenant, session_id)
                if src.epoch != epoch:
                    raise StaleStateError(f"session {session_id!r} was restored or had events forgotten meanwhile")
                if s.scalars(select(SessionRow.pk).where(SessionRow.tenant == tenant,
                                                          SessionRow.session_id == new_session_id)).first():
                    raise SessionExistsError(f"session {new_session_id!r} already exists for tenant {tenant!r}")
                new = SessionRow(
                    tenant=tenant, session_id=new_session_id, created_at=now, updated_at=now,
                    model_name=model_name[:255], config_fingerprint=config_fingerprint,
                    base_fingerprint=base_fingerprint, adapter_fingerprint=adapter_fingerprint,
                    config_json=json.dumps(config, sort_keys=True), branch=0, head_version=1, head_seq=0,
                    last_seq=0, last_version=1, last_branch=0, epoch=0, forked_from=f"{session_id}@{label}"[:400],
                )
                s.add(new)
                s.flush()
                s.add(BranchRow(session_pk=new.pk, branch=0, created_at=now))
                q = (select(EventRow).where(EventRow.session_pk == src.pk, EventRow.deleted_at.is_(None),
                                            self._chain_filter(chain)).order_by(EventRow.seq))
                n = 0
                batch: list[dict[str, Any]] = []
                for ev in s.scalars(q):
                    n += 1
                    batch.append({"session_pk": new.pk, "seq": n, "branch": 0, "created_at": ev.created_at,
                                  "kind": ev.kind, "payload": ev.payload, "text": ev.text, "n_tokens": ev.n_tokens,
                                  "deleted_at": None})
                    if len(batch) >= 500:
                        s.execute(sa.insert(EventRow), batch)
                        batch = []
                if batch:
                    s.execute(sa.insert(EventRow), batch)
                new.last_seq = new.head_seq = n
                s.flush()
                s.add(SnapshotRow(
                    session_pk=new.pk, version=1, parent_version=None, branch=0, last_seq=n, events=n,
                    tokens_absorbed=tokens_absorbed, tokens_pending=tokens_pending, chunks=chunks, size=len(blob),
                    sha256=hashlib.sha256(blob).hexdigest(), state_digest=state_digest,
                    config_fingerprint=config_fingerprint,
                    base_fingerprint=base_fingerprint, adapter_fingerprint=adapter_fingerprint,
                    config_json=json.dumps(config, sort_keys=True), reason="fork", created_at=now,
                ))
                s.flush()
                self._write_parts(s, new.pk, 1, blob)
                return _session_info(new)
        except IntegrityError:
            raise SessionExistsError(f"session {new_session_id!r} already exists for tenant {tenant!r}") from None


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys=ON",
                       "synchronous=FULL", "secure_delete=ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):  # pragma: no cover
        # Writers take the write lock up front: a deferred transaction that reads, then writes after another
        # writer committed fails at once with SQLITE_BUSY_SNAPSHOT, which the busy timeout cannot cure.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("comet_write") else "BEGIN")


_STORES: dict[tuple[str, str | None], Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(store: Store | str | URL | None = None, *, schema: str | None = None) -> Store:
    """A :class:`Store` for ``store`` (a Store is returned as is; URLs share one Store per process).

    A relative SQLite path is resolved against the current directory when opened, so the same relative URL
    opened after a ``chdir`` names the other directory's database, as it would for any other program.
    """
    if isinstance(store, Store):
        return store
    url = make_url(store if store is not None else default_url())
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:") and not Path(url.database).is_absolute():
        url = url.set(database=str(Path(url.database).resolve()))
    key = (url.render_as_string(hide_password=False), schema)
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = Store(url, schema=schema)
        return _STORES[key]
