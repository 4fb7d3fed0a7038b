"""ComeTMemory: a durable, versioned CoMeT memory session (the object users hold).

A session's memory state is a deterministic function of (model, config, event log): every event is rendered
once (:func:`comet_agents.events.render`), tokenized, and absorbed by the single-session engine path, which is
bit-exact repeatable on one device and dtype. So:

* ``absorb`` first appends the events to the log in one transaction, *then* updates the state. Once it
  returns, the events are durable; a crash at any point loses nothing acknowledged.
* Reopening loads the newest snapshot of the session's lineage (sha256 and fingerprints verified) and
  replays the events after it: the state is bit-identical to that of an uninterrupted run.
* ``restore(v)`` starts a new branch based on snapshot ``v`` (later events stay in the log, on their branch,
  and later versions stay restorable); ``fork`` copies a lineage into a new session; ``forget`` erases events
  and every stored state derived from them, then rebuilds by replay.

Concurrency: writers are optimistic. Every write checks the session row's version (``UPDATE ... WHERE
version = :seen``). ``absorb`` and ``snapshot`` catch up with the other writers' events and retry (up to
``max_retries`` times, then :class:`~comet_agents.store.ConflictError`); ``restore`` never retries (its
intent depends on what the caller saw) and raises ConflictError after refreshing. Within a process, calls on
one session are serialised by a lock shared by every ComeTMemory of that session; calls on one model by a
per-model lock. The ``a*`` coroutines run the same code in a worker thread.

Answering (``recall``, ``chat``, ``stream_chat``) reads the state and never writes it. A stream reads a copy
taken when it starts and holds the model lock one decoding step at a time, so absorbs run between its steps
and do not change its answer.

``absorb`` never batches sessions: the batched engine path pads chunks, and padded batches are not
bit-identical to single-session runs, which replay relies on. :func:`absorb_batch` runs several sessions'
chunks through the shared model together (opt-in): the events are stored exactly as by ``absorb``, snapshots
then restore the batched state exactly, and a crash rebuild (a single-session replay) lands within float
rounding of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import events as ev
from .engine import MemoryEngine
from .modeling import CometModel
from .state import CorruptStateError, MemoryState, StateMismatchError
from .store import (
    Chain,
    ConflictError,
    CorruptSnapshotError,
    EventRecord,
    ForgetResult,
    NewEvent,
    SessionInfo,
    SnapshotInfo,
    SnapshotPurgedError,
    StaleStateError,
    Store,
    chain_covers,
    open_store,
)

log = logging.getLogger(__name__)

__all__ = ["ComeTMemory", "CoMeTMemory", "MemoryStats", "absorb_batch", "shared_engine", "state_digest"]

T = TypeVar("T")

EventsLike = Any  # str | bytes | Event | Mapping | Iterable of those
Messages = Sequence[Mapping[str, str]]  # [{"role": ..., "content": ...}], see engine.check_messages


# ----------------------------------------------------------------------------------------------- digests


def state_digest(state: MemoryState) -> str:
    """sha256 of a state's content: every tensor (dtype, shape, bytes), the pending tokens and the fingerprints.

    Two states have the same digest exactly when they are bit-identical. (Blobs of equal states may differ:
    safetensors writes its metadata in arbitrary order, so blob digests only check integrity.)
    """
    h = hashlib.sha256()
    for name in ("global_state", "has_global", "fifo", "fifo_len", "tokens_absorbed", "chunks"):
        t = getattr(state, name).detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    h.update(json.dumps([state.pending, state.config_fingerprint, state.base_fingerprint,
                         state.adapter_fingerprint]).encode())
    if any(state.context):  # overlap tokens (CometConfig.chunk_overlap); states without them hash as before
        h.update(json.dumps(["context", state.context]).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- shared models


class _Shared:
    """A model's engine and the lock that serialises forward passes on it."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine
        self.lock = threading.Lock()


_BY_MODEL: "weakref.WeakKeyDictionary[CometModel, _Shared]" = weakref.WeakKeyDictionary()
_BY_NAME: dict[tuple[str, str], CometModel] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(name: str, device: str | None) -> CometModel:
    """Load a CoMeT model by name or path (tests replace this)."""
    return CometModel.from_pretrained(name, device=device).eval()


def shared_engine(model: CometModel | MemoryEngine | str | Path = "default", device: str | None = None) -> MemoryEngine:
    """The process-wide engine of ``model``: models loaded by name are loaded once and shared by all sessions."""
    return _shared(model, device).engine


def _shared(model: CometModel | MemoryEngine | str | Path, device: str | None) -> _Shared:
    with _MODELS_LOCK:
        if isinstance(model, (str, Path)):
            key = (str(model), str(device or ""))
            if key not in _BY_NAME:
                _BY_NAME[key] = _load_model(str(model), device)
            model = _BY_NAME[key]
        if isinstance(model, MemoryEngine):
            shared = _BY_MODEL.get(model.model)
            if shared is None or shared.engine is not model:
                shared = _BY_MODEL.setdefault(model.model, _Shared(model))
            return shared
        if not isinstance(model, CometModel):
            raise TypeError(
                f"model must be a CometModel, a MemoryEngine, 'default' or a path; got {type(model).__name__}"
            )
        if model not in _BY_MODEL:
            _BY_MODEL[model] = _Shared(MemoryEngine(model))
        return _BY_MODEL[model]


# ----------------------------------------------------------------------------------------------- session locks

class _SessionLock:
    """A re-entrant lock shared by every ComeTMemory of one session in this process (weakly registered)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> "_SessionLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


_SESSION_LOCKS: "weakref.WeakValueDictionary[tuple[str, str, str], _SessionLock]" = weakref.WeakValueDictionary()
_SESSION_LOCKS_GUARD = threading.Lock()


def _session_lock(store: Store, tenant: str, session_id: str) -> _SessionLock:
    key = (store.key, tenant, session_id)
    with _SESSION_LOCKS_GUARD:
        lock = _SESSION_LOCKS.get(key)
        if lock is None:
            lock = _SESSION_LOCKS[key] = _SessionLock()
        return lock


# ----------------------------------------------------------------------------------------------- input


def _as_events(events: EventsLike) -> list[ev.Event]:
    """Validate what ``absorb`` accepts into events; raises :class:`EventError` naming the bad item."""
    if isinstance(events, (bytes, bytearray, memoryview)):
        return [ev.TextEvent(_decode_utf8(bytes(events)))]
    if isinstance(events, (str, Mapping)) or type(events) in ev.EVENT_TYPES.values():
        return [ev.parse_event(events)]
    if not isinstance(events, Iterable):
        raise ev.EventError(f"expected text, an event or a list of events; got {type(events).__name__}")
    out = []
    for i, item in enumerate(events):
        try:
            if isinstance(item, (bytes, bytearray, memoryview)):
                out.append(ev.TextEvent(_decode_utf8(bytes(item))))
            else:
                out.append(ev.parse_event(item))
        except ev.EventError as exc:
            raise ev.EventError(f"event {i}: {exc}", field=exc.field, line=exc.line) from None
    if not out:
        raise ev.EventError("no events given")
    return out


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ev.EventError(
            f"input is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} ({exc.reason})"
        ) from None


# ----------------------------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class MemoryStats:
    """What :attr:`ComeTMemory.stats` reports. Also readable as a mapping (``stats["version"]``)."""

    tenant: str
    session_id: str
    version: int | None  # the snapshot the state descends from (None before the first)
    events: int  # live events absorbed (the current lineage, forgotten ones excluded)
    events_since_snapshot: int
    last_event_id: int
    tokens_absorbed: int  # text tokens folded into the compressed state
    tokens_pending: int  # tail tokens waiting for a full chunk (kept verbatim in the state)
    chunks: int
    state_bytes: int  # in-memory size of the state (constant, whatever the stream length)
    branch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def keys(self):
        return self.to_dict().keys()


# ----------------------------------------------------------------------------------------------- the memory


class ComeTMemory:
    """A durable CoMeT memory session.

    Args:
        session_id: the session (created on first use unless ``create=False``).
        tenant: sessions are looked up by (tenant, session_id); another tenant cannot see them.
        store: a :class:`~comet_agents.store.Store`, a SQLAlchemy URL, or ``None`` for the default SQLite file
            (``$COMET_AGENTS_STORE`` overrides it).
        model: ``"default"``, an adapter directory / base model name (loaded once per process and shared), a
            :class:`CometModel` or a :class:`MemoryEngine`.
        device: where to load a model given by name.
        snapshot_every: take a snapshot after every this many absorbed chunks (``None``: only on
            ``snapshot()`` / ``close()``). Reopening replays at most this many chunks.
        keep_snapshots: keep the blobs of only the newest this many automatic snapshots (``None``: keep all).
            Manual snapshots are kept; a pruned version is still restorable (rebuilt by replay).
        snapshot_on_close: snapshot un-snapshotted events on :meth:`close`.
        max_retries: how often ``absorb`` / ``snapshot`` catch up with other writers and retry before raising
            :class:`~comet_agents.store.ConflictError`.
        create: create the session when missing (else :class:`~comet_agents.store.SessionNotFoundError`).
        rebuild: skip stored snapshots that cannot be used (another model or config, damaged) and rebuild
            the state from the event log; also adopts a session made with another model.
        max_new_tokens: default answer length of :meth:`recall`.
    """

    def __init__(
        self,
        session_id: str = "default",
        *,
        tenant: str = "default",
        store: Store | str | None = None,
        model: CometModel | MemoryEngine | str | Path = "default",
        device: str | None = None,
        snapshot_every: int | None = 8,
        keep_snapshots: int | None = 4,
        snapshot_on_close: bool = True,
        max_retries: int = 8,
        create: bool = True,
        rebuild: bool = False,
        max_new_tokens: int = 64,
    ) -> None:
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError("snapshot_every must be >= 1 or None")
        if keep_snapshots is not None and keep_snapshots < 0:
            raise ValueError("keep_snapshots must be >= 0 or None")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.session_id = session_id
        self.tenant = tenant
        self.store = open_store(store)
        self._shared = _shared(model, device)
        self.engine = self._shared.engine
        self.model = self.engine.model
        self.snapshot_every = snapshot_every
        self.keep_snapshots = keep_snapshots
        self.snapshot_on_close = snapshot_on_close
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self._key = (self.store.key, tenant, session_id)  # one session in this process, whatever the object
        self._lock = _session_lock(self.store, tenant, session_id)
        self._async_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        self._state: MemoryState | None = None
        self.conflicts_retried = 0  # optimistic-version conflicts this object resolved by catching up
        fp = self._fingerprints()
        with self._lock:
            if create:
                info = self.store.create_session(tenant, session_id, model_name=self.model.base_name, **fp)
            else:
                info = self.store.session(tenant, session_id)
            mismatch = self._model_mismatch(info)
            if mismatch:
                if not rebuild:
                    raise StateMismatchError(
                        f"session {session_id!r} (tenant {tenant!r}) was made with another {mismatch}; open it "
                        "with the model it was made with, or pass rebuild=True to re-derive its memory from the "
                        "event log with this model"
                    )
                info = self.store.update_session_model(tenant, session_id, model_name=self.model.base_name, **fp)
            self._load(info, strict=not rebuild)
            if rebuild and self._events_since_snapshot():
                self._snapshot("rebuild")

    # ---- model facts ------------------------------------------------------------------------------------------

    def _fingerprints(self) -> dict[str, Any]:
        return {
            "config_fingerprint": self.model.config.fingerprint(),
            "base_fingerprint": self.model.base_fingerprint,
            "adapter_fingerprint": self.model.adapter_fingerprint,
            "config": self.model.config.to_dict(),
        }

    def _model_mismatch(self, info: SessionInfo | SnapshotInfo) -> str | None:
        if info.config_fingerprint != self.model.config.fingerprint():
            return f"CometConfig (stored {info.config_fingerprint}, model {self.model.config.fingerprint()})"
        if info.base_fingerprint != self.model.base_fingerprint:
            return f"base model (stored {info.base_fingerprint or '-'}, model {self.model.base_fingerprint or '-'})"
        if info.adapter_fingerprint != self.model.adapter_fingerprint:
            return f"CoMeT adapter (stored {info.adapter_fingerprint}, model {self.model.adapter_fingerprint})"
        return None

    # ---- building states --------------------------------------------------------------------------------------

    def _state_from_blob(self, blob: bytes, info: SnapshotInfo) -> MemoryState:
        mismatch = self._model_mismatch(info)
        if mismatch:
            raise StateMismatchError(
                f"version {info.version} of session {self.session_id!r} was made with another {mismatch}"
            )
        state = MemoryState.from_bytes(blob, device=self.model.device)
        self.model.check_state(state)  # the blob's own metadata must agree too
        if state.batch_size != 1:
            raise CorruptStateError(f"version {info.version} holds {state.batch_size} sessions, not one")
        if info.state_digest and state_digest(state) != info.state_digest:
            raise CorruptSnapshotError(f"version {info.version} of session {self.session_id!r} decodes to another "
                                       "state than the one saved (content digest mismatch)")
        if state.fifo.dtype != self.model.dtype:
            state = state.to(self.model.device, dtype=self.model.dtype)
        return state

    def _absorb_tokens(self, state: MemoryState, tokens: list[int]) -> None:
        if tokens:
            with self._shared.lock, torch.no_grad():
                self.engine.absorb(state, tokens)

    def _replay(self, state: MemoryState, records: Iterable[EventRecord]) -> tuple[int, int]:
        """Absorb stored events (their stored text); returns (events, last id)."""
        n, last = 0, 0
        batch: list[int] = []
        for rec in records:
            batch.extend(self.engine.encode(rec.text))
            n, last = n + 1, rec.id
            if len(batch) >= 8 * self.model.config.chunk_size:
                self._absorb_tokens(state, batch)
                batch = []
        self._absorb_tokens(state, batch)
        return n, last

    def _build_state(self, chain: Chain, *, strict: bool = True) -> tuple[MemoryState, SnapshotInfo | None, int, int]:
        """State of a lineage: its newest usable snapshot plus a replay of the events after it.

        Returns (state, base snapshot or None, live events, last event id).
        """
        upto = chain[0][1]
        candidates = [
            s for s in self.store.snapshots(self.tenant, self.session_id)
            if s.has_blob and chain_covers(chain, s.branch, s.last_seq) and (upto is None or s.last_seq <= upto)
        ]
        candidates.sort(key=lambda s: (s.last_seq, s.version), reverse=True)
        state: MemoryState | None = None
        base: SnapshotInfo | None = None
        for snap in candidates:
            try:
                info, blob = self.store.load_snapshot(self.tenant, self.session_id, snap.version)
                state, base = self._state_from_blob(blob, info), info
                break
            except (CorruptStateError, StateMismatchError) as exc:
                if strict:
                    exc.add_note("pass rebuild=True to ComeTMemory to skip it and rebuild the state from the event log")
                    raise
                log.warning("skipping version %s of session %r: %s", snap.version, self.session_id, exc)
            except LookupError:  # pruned or purged meanwhile
                continue
        if state is None:
            state = self.engine.new_state()
        after = base.last_seq if base else 0
        events = self.store.lineage_events(self.tenant, self.session_id, chain, after=after)
        n, last = self._replay(state, events)
        return state, base, (base.events if base else 0) + n, max(after, last)

    def _load(self, info: SessionInfo, *, strict: bool = True) -> None:
        """(Re)build the in-memory state of the session as ``info`` describes it."""
        chain = self.store.chain(self.tenant, self.session_id, branch=info.branch)
        state, base, n, last = self._build_state(chain, strict=strict)
        self._state = state
        self._chain = chain
        self._branch, self._epoch, self._seen_version = info.branch, info.epoch, info.version
        self._events, self._last_seq = n, last
        self._set_snapshot_mark(base)

    def _set_snapshot_mark(self, snap: SnapshotInfo | None) -> None:
        self._snap_version = snap.version if snap else None
        self._snap_seq = snap.last_seq if snap else 0
        self._snap_events = snap.events if snap else 0
        self._snap_chunks = snap.chunks if snap else 0
        self._snap_epoch = self._epoch

    def _version_state(self, snap: SnapshotInfo) -> MemoryState:
        """The state of a stored version: its blob, or a replay when the blob was pruned."""
        if snap.purged:
            raise SnapshotPurgedError(
                f"version {snap.version} of session {self.session_id!r} was deleted by forget() and cannot be used"
            )
        if snap.has_blob:
            info, blob = self.store.load_snapshot(self.tenant, self.session_id, snap.version)
            return self._state_from_blob(blob, info)
        mismatch = self._model_mismatch(snap)
        if mismatch:
            raise StateMismatchError(f"version {snap.version} was made with another {mismatch}")
        chain = self.store.chain(self.tenant, self.session_id, branch=snap.branch, upto=snap.last_seq)
        state, _, _, _ = self._build_state(chain)
        if snap.state_digest and state_digest(state) != snap.state_digest:
            log.warning("version %s of session %r was rebuilt by replay but differs from the stored digest "
                        "(another device or dtype, or absorbed by absorb_batch?)", snap.version, self.session_id)
        return state

    def _ensure_state(self) -> MemoryState:
        self._check_open()
        if self._state is None:
            self._load(self.store.session(self.tenant, self.session_id))
        assert self._state is not None
        return self._state

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this ComeTMemory (session {self.session_id!r}) is closed")

    def _events_since_snapshot(self) -> int:
        if self._snap_epoch != self._epoch:
            return self._events
        return self._events - self._snap_events if self._last_seq != self._snap_seq else 0

    # ---- syncing with other writers -----------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Catch up with other writers (their events are absorbed; a restore or forget reloads the state).

        Returns whether anything changed. Called by :meth:`recall` and on conflicts.
        """
        with self._lock:
            self._check_open()
            info = self.store.session(self.tenant, self.session_id)
            if self._state is not None and info.version == self._seen_version:
                return False
            if self._state is None or info.epoch != self._epoch or info.branch != self._branch:
                self._load(info)
                return True
            records = self.store.lineage_events(self.tenant, self.session_id, self._chain, after=self._last_seq)
            try:
                n, last = self._replay(self._state, records)
            except BaseException:
                self._state = None
                raise
            self._events += n
            self._last_seq = max(self._last_seq, last)
            self._seen_version = info.version
            return True

    # ---- absorbing --------------------------------------------------------------------------------------------

    def _prepare(self, events: list[ev.Event]) -> tuple[list[NewEvent], list[int]]:
        """Render, tokenize and check every event before anything is stored."""
        first_special = self.model.first_special_id
        rows: list[NewEvent] = []
        tokens: list[int] = []
        for i, event in enumerate(events):
            text = ev.render(event)
            ids = self.engine.encode(text)
            bad = sorted({t for t in ids if not 0 <= t < first_special})
            if bad:
                names = self.engine.tokenizer.convert_ids_to_tokens(bad[:5])
                raise ev.EventError(
                    f"event {i}: its text contains the reserved token(s) {', '.join(map(repr, names))}, which only "
                    "CoMeT may place in a stream"
                )
            payload = json.dumps(ev.to_dict(event), ensure_ascii=False, sort_keys=True)
            rows.append(NewEvent(kind=event.TYPE, payload=payload, text=text, n_tokens=len(ids)))
            tokens.extend(ids)
        return rows, tokens

    def absorb(self, events: EventsLike) -> list[int]:
        """Store events in the log, then absorb them into memory; returns their ids (for :meth:`forget`).

        Accepts text (``str``, or UTF-8 ``bytes``), an event (dataclass or dict with a ``"type"``, see
        :mod:`comet_agents.events`) or a list of those. All events are validated, rendered and tokenized
        first: on :class:`~comet_agents.events.EventError` nothing is stored. Once this returns, the events are
        durable. Conflicts with other writers are resolved by catching up and retrying.
        """
        rows, tokens = self._prepare(_as_events(events))
        with self._lock:
            self._ensure_state()
            ids, info = self._append(rows)
            # The events are durable now; the state follows.
            try:
                self._absorb_tokens(self._state, tokens)
            except BaseException as exc:
                self._state = None  # rebuilt from the log on next use
                exc.add_note(f"events {ids[0]}..{ids[-1]} were stored; the memory state is rebuilt on next use")
                raise
            self._acknowledge(ids, info)
        return ids

    def _append(self, rows: list[NewEvent]) -> tuple[list[int], SessionInfo]:
        """Append prepared events to the log under the optimistic version check, catching up with other
        writers and retrying on conflict (``max_retries`` times). Call with the session lock held and the
        state loaded; the state is not updated with ``rows`` (see :meth:`_acknowledge`)."""
        attempt = 0
        while True:
            try:
                return self.store.append_events(self.tenant, self.session_id, rows, expect_version=self._seen_version)
            except ConflictError:
                if attempt >= self.max_retries:
                    raise
                attempt += 1
                self.conflicts_retried += 1
                time.sleep(random.uniform(0, 0.005 * attempt))
                self.refresh()

    def _acknowledge(self, ids: list[int], info: SessionInfo) -> None:
        """Record that events ``ids`` (appended as ``info`` says) are now in the state; maybe snapshot."""
        self._events += len(ids)
        self._last_seq = ids[-1]
        self._seen_version = info.version
        self._maybe_auto_snapshot()

    def absorb_jsonl(self, data: bytes | str | Iterable[str | bytes]) -> list[int]:
        """Absorb JSON Lines events (one event dict per line). The whole input is validated first."""
        return self.absorb(ev.parse_jsonl(data))

    def _maybe_auto_snapshot(self) -> None:
        if self.snapshot_every is None or self._state is None:
            return
        if int(self._state.chunks) - self._snap_chunks < self.snapshot_every:
            return
        try:
            self._snapshot("auto")
        except Exception as exc:  # never fail an absorb whose events are already stored (conflicts, DB errors)
            log.warning("automatic snapshot of session %r failed (the events are stored): %s", self.session_id, exc)

    # ---- snapshots ----------------------------------------------------------------------------------------------

    def snapshot(self) -> int:
        """Persist the current state as a version; returns its number (the existing one if nothing changed)."""
        with self._lock:
            return self._snapshot("manual")

    def _snapshot(self, reason: str) -> int:
        state = self._ensure_state()
        if self._snap_version is not None and self._snap_epoch == self._epoch and self._snap_seq == self._last_seq:
            return self._snap_version
        for attempt in range(2):
            try:
                snap, info = self.store.save_snapshot(
                    self.tenant, self.session_id, state.to_bytes(),
                    branch=self._branch, epoch=self._epoch, last_seq=self._last_seq, events=self._events,
                    parent_version=self._snap_version, reason=reason, state_digest=state_digest(state),
                    tokens_absorbed=int(state.tokens_absorbed[0]), tokens_pending=len(state.pending[0]),
                    chunks=int(state.chunks[0]), **self._fingerprints(),
                )
                break
            except StaleStateError:
                if attempt:
                    raise
                self.refresh()  # restored / forgotten meanwhile: snapshot the reloaded state instead
                state = self._ensure_state()
                if self._snap_version is not None and self._snap_seq == self._last_seq:
                    return self._snap_version
        if info.epoch == self._epoch and info.last_seq == self._last_seq:
            self._seen_version = info.version  # nobody appended meanwhile: we are still in sync
        self._set_snapshot_mark(snap)
        if reason in ("auto", "close") and self.keep_snapshots is not None:
            try:
                self.store.prune_snapshots(self.tenant, self.session_id, keep=self.keep_snapshots)
            except Exception as exc:
                log.warning("pruning old snapshots of session %r failed: %s", self.session_id, exc)
        return snap.version

    def history(self) -> list[SnapshotInfo]:
        """Every version of this session, oldest first (see :class:`~comet_agents.store.SnapshotInfo`)."""
        with self._lock:
            self._check_open()
            return self.store.snapshots(self.tenant, self.session_id)

    def events(self, *, all_branches: bool = False, include_deleted: bool = False) -> list[EventRecord]:
        """The events the current state is made of (or every stored event with ``all_branches``)."""
        with self._lock:
            self._check_open()
            if all_branches:
                out = self.store.all_events(self.tenant, self.session_id)
                return out if include_deleted else [e for e in out if not e.deleted]
            return list(self.store.lineage_events(self.tenant, self.session_id, self._chain,
                                                  include_deleted=include_deleted))

    @property
    def version(self) -> int | None:
        """The version the state descends from (None before the first snapshot)."""
        return self._snap_version

    @property
    def state(self) -> MemoryState:
        """The live memory state (do not modify it)."""
        with self._lock:
            return self._ensure_state()

    @property
    def stats(self) -> MemoryStats:
        with self._lock:
            state = self._ensure_state()
            return MemoryStats(
                tenant=self.tenant, session_id=self.session_id, version=self._snap_version, events=self._events,
                events_since_snapshot=self._events_since_snapshot(), last_event_id=self._last_seq,
                tokens_absorbed=int(state.tokens_absorbed[0]), tokens_pending=len(state.pending[0]),
                chunks=int(state.chunks[0]), state_bytes=state.nbytes(), branch=self._branch,
            )

    # ---- answering ----------------------------------------------------------------------------------------------

    def recall(self, question: str, *, max_new_tokens: int | None = None, refresh: bool = True) -> str:
        """Answer ``question`` from memory only (after catching up with other writers unless ``refresh=False``)."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a string, got {type(question).__name__}")
        with self._lock:
            if refresh:
                self.refresh()
            state = self._ensure_state()
            bad = [t for t in self.engine.encode(question) if t >= self.model.first_special_id]
            if bad:
                raise ValueError("the question contains reserved CoMeT tokens")
            with self._shared.lock:
                return self.engine.recall(state, question, max_new_tokens=max_new_tokens or self.max_new_tokens)

    def chat(self, messages: Messages, *, max_new_tokens: int | None = None, refresh: bool = True) -> str:
        """The assistant's reply to chat ``messages`` (``[{"role": ..., "content": ...}]``), answered from
        memory plus the messages, which are read, not absorbed (absorb them to remember them).

        Catches up with other writers first unless ``refresh=False``. Messages are checked by
        :func:`comet_agents.engine.check_messages`; a prompt longer than the base model's positions is refused
        (:meth:`MemoryEngine.check_fits <comet_agents.engine.MemoryEngine.check_fits>`).
        """
        with self._lock:
            if refresh:
                self.refresh()
            state = self._ensure_state()
            with self._shared.lock:
                return self.engine.chat(state, messages, max_new_tokens=self._answer_length(max_new_tokens))

    def stream_chat(
        self, messages: Messages, *, max_new_tokens: int | None = None, refresh: bool = True
    ) -> Iterator[str]:
        """:meth:`chat` as text pieces, yielded as they are decoded (``"".join`` of them equals :meth:`chat`).

        The stream answers from a copy of the state taken now, and holds the model lock one decoding step at a
        time: absorbs into this or any session run between its steps, without waiting for the stream, and do
        not change its answer. Bad messages raise here, not on the first ``next``.
        """
        with self._lock:
            if refresh:
                self.refresh()
            state = self._ensure_state().clone()
        pieces = self.engine.chat_stream(state, messages, max_new_tokens=self._answer_length(max_new_tokens))
        return self._model_locked(pieces)

    def _model_locked(self, pieces: Iterator[str]) -> Iterator[str]:
        """Advance ``pieces`` under the model lock, releasing it between pieces."""
        while True:
            with self._shared.lock:
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece

    def _answer_length(self, max_new_tokens: int | None) -> int:
        return self.max_new_tokens if max_new_tokens is None else max_new_tokens

    def count_tokens(self, text: str) -> int:
        """How many tokens of the model ``text`` takes (as absorbed, or as part of a prompt)."""
        return self.engine.count_tokens(text)

    # ---- time travel -----------------------------------------------------------------------------------------------

    def restore(self, version: int) -> None:
        """Make ``version`` current. Later events stay in the log (on their branch); later versions stay in
        :meth:`history` and can be restored too. Un-snapshotted events are snapshotted first, so they stay
        reachable. Raises ConflictError (after refreshing) if another writer changed the session meanwhile."""
        with self._lock:
            self._ensure_state()
            if self._events_since_snapshot():
                self._snapshot("auto")
            target = self.store.snapshot_info(self.tenant, self.session_id, version)
            state = self._version_state(target)  # verified before anything changes
            try:
                info = self.store.restore(self.tenant, self.session_id, version, expect_version=self._seen_version)
            except ConflictError:
                self.refresh()
                raise
            self._state = state
            self._chain = self.store.chain(self.tenant, self.session_id, branch=info.branch)
            self._branch, self._epoch, self._seen_version = info.branch, info.epoch, info.version
            self._events, self._last_seq = target.events, target.last_seq
            self._set_snapshot_mark(target)

    def fork(self, new_session_id: str, version: int | None = None, **options: Any) -> "ComeTMemory":
        """Copy this session (its current state, or ``version``) into a new session of the same tenant.

        The new session gets copies of the events (renumbered from 1) and the state as its version 1; this
        session is not modified. ``options`` override this memory's ComeTMemory options for the fork.
        """
        with self._lock:
            state = self._ensure_state()
            if version is None:
                chain = self.store.chain(self.tenant, self.session_id, branch=self._branch, upto=self._last_seq)
                label = f"event{self._last_seq}"
            else:
                target = self.store.snapshot_info(self.tenant, self.session_id, version)
                state = self._version_state(target)
                chain = self.store.chain(self.tenant, self.session_id, branch=target.branch, upto=target.last_seq)
                label = f"v{version}"
            self.store.fork(
                self.tenant, self.session_id, new_session_id, chain=chain, epoch=self._epoch, blob=state.to_bytes(),
                state_digest=state_digest(state),
                label=label, tokens_absorbed=int(state.tokens_absorbed[0]), tokens_pending=len(state.pending[0]),
                chunks=int(state.chunks[0]), model_name=self.model.base_name, **self._fingerprints(),
            )
        kwargs = dict(
            tenant=self.tenant, store=self.store, model=self.engine, snapshot_every=self.snapshot_every,
            keep_snapshots=self.keep_snapshots, snapshot_on_close=self.snapshot_on_close,
            max_retries=self.max_retries, max_new_tokens=self.max_new_tokens, create=False,
        )
        kwargs.update(options)
        return ComeTMemory(new_session_id, **kwargs)

    def forget(self, event_ids: int | Iterable[int]) -> ForgetResult:
        """Erase events and every stored state derived from them, then rebuild the state without them.

        The events' payload and text are erased (their ids stay, as tombstones); every snapshot whose history
        holds one of them loses its state blob; the state is rebuilt from the newest remaining snapshot before
        them plus a replay, and saved as a new version. Other sessions (forks) keep their own copies.
        """
        ids = [event_ids] if isinstance(event_ids, int) else [int(i) for i in event_ids]
        with self._lock:
            self._check_open()
            result = self.store.forget(self.tenant, self.session_id, ids)
            self._load(result.info)
            if result.head_affected and self._events_since_snapshot():
                self._snapshot("forget")
            return result

    def delete_session(self) -> None:
        """Delete this session (events, snapshots, everything) from the store; this object is closed."""
        with self._lock:
            self._check_open()
            self.store.delete_session(self.tenant, self.session_id)
            self._closed = True
            self._state = None

    def close(self) -> None:
        """Snapshot un-snapshotted events (unless ``snapshot_on_close=False``) and close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if self.snapshot_on_close and self._state is not None and self._events_since_snapshot():
                    self._snapshot("close")
            except Exception as exc:  # the events are in the log: nothing is lost
                log.warning("snapshot on close of session %r failed: %s", self.session_id, exc)
            finally:
                self._closed = True
                self._state = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ComeTMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ComeTMemory(session_id={self.session_id!r}, tenant={self.tenant!r}, store={self.store!r}, "
                f"version={self._snap_version if not self._closed else 'closed'})")

    # ---- async ------------------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a worker thread (the event loop keeps running), one call per session at a time."""
        loop = asyncio.get_running_loop()
        lock = self._async_locks.get(loop)
        if lock is None:
            lock = self._async_locks[loop] = asyncio.Lock()
        async with lock:
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def aabsorb(self, events: EventsLike) -> list[int]:
        return await self._run(self.absorb, events)

    async def aabsorb_jsonl(self, data: bytes | str | Iterable[str | bytes]) -> list[int]:
        return await self._run(self.absorb_jsonl, data)

    async def arecall(self, question: str, **kwargs: Any) -> str:
        return await self._run(self.recall, question, **kwargs)

    async def achat(self, messages: Messages, **kwargs: Any) -> str:
        return await self._run(self.chat, messages, **kwargs)

    async def astream_chat(self, messages: Messages, **kwargs: Any) -> AsyncIterator[str]:
        """:meth:`stream_chat` as an async generator: each decoding step runs in a worker thread."""
        pieces = await self._run(self.stream_chat, messages, **kwargs)  # copy taken in order with other a* calls
        try:
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                yield piece
        finally:
            try:
                pieces.close()
            except ValueError:  # cancelled mid-step: the worker thread finishes that step, then it is collected
                pass

    async def asnapshot(self) -> int:
        return await self._run(self.snapshot)

    async def arestore(self, version: int) -> None:
        return await self._run(self.restore, version)

    async def afork(self, new_session_id: str, version: int | None = None, **options: Any) -> "ComeTMemory":
        return await self._run(self.fork, new_session_id, version, **options)

    async def aforget(self, event_ids: int | Iterable[int]) -> ForgetResult:
        return await self._run(self.forget, event_ids)

    async def ahistory(self) -> list[SnapshotInfo]:
        return await self._run(self.history)

    async def aevents(self, **kwargs: Any) -> list[EventRecord]:
        return await self._run(self.events, **kwargs)

    async def arefresh(self) -> bool:
        return await self._run(self.refresh)

    async def adelete_session(self) -> None:
        return await self._run(self.delete_session)

    async def aclose(self) -> None:
        return await self._run(self.close)

    async def __aenter__(self) -> "ComeTMemory":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


CoMeTMemory = ComeTMemory
"""Alias of :class:`ComeTMemory`."""


# ----------------------------------------------------------------------------------------------- batched absorb


def absorb_batch(
    batches: Mapping[ComeTMemory, EventsLike] | Iterable[tuple[ComeTMemory, EventsLike]],
) -> list[list[int]]:
    """Absorb events into several sessions at once, running their ready chunks through the model together.

    ``batches`` maps each memory to what its :meth:`ComeTMemory.absorb` would take (or is a list of
    ``(memory, events)`` pairs). Returns the new event ids of each session, in the given order.

    Every event of every session is validated, rendered and tokenized first: one bad event raises
    :class:`~comet_agents.events.EventError` (naming its session) and nothing is stored anywhere. Then each
    session's events are appended to its log exactly as ``absorb`` does (optimistic version check, catching up
    and retrying on conflict), and the sessions' chunks are absorbed in batches of up to the engine's
    ``max_batch``. Sessions are locked in a stable order, so concurrent batches cannot deadlock.

    Opt-in, because it is not bit-exact: padded batches round differently from single-session runs. Snapshots
    keep (and restore) the batched state exactly; a rebuild by replay (after a crash, or of a pruned version)
    runs one session at a time and lands within float rounding of it.

    Raises ValueError for memories on different loaded models or the same session given twice. The log of
    each session is its own transaction: if appending fails for one session (after retries), the sessions
    appended before it keep their events and rebuild their state on next use.
    """
    pairs = list(batches.items()) if isinstance(batches, Mapping) else [tuple(p) for p in batches]
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not isinstance(pair[0], ComeTMemory):
            raise TypeError(f"absorb_batch item {i}: expected (ComeTMemory, events), got {pair!r:.80}")
    mems = [m for m, _ in pairs]
    seen: dict[tuple[str, str, str], ComeTMemory] = {}
    for m in mems:
        if m._key in seen:
            raise ValueError(f"session {m.session_id!r} (tenant {m.tenant!r}) is given twice to absorb_batch; "
                             "pass all its events in one list")
        seen[m._key] = m
    if not pairs:
        return []
    shared = mems[0]._shared
    for m in mems[1:]:
        if m._shared is not shared:
            raise ValueError(
                f"sessions {mems[0].session_id!r} and {m.session_id!r} are on different loaded models; "
                "absorb_batch batches the sessions of one model (open them with the same model object or name)"
            )
    prepared = []
    for m, events in pairs:
        try:
            prepared.append(m._prepare(_as_events(events)))
        except ev.EventError as exc:
            raise ev.EventError(f"session {m.session_id!r}: {exc}", field=exc.field, line=exc.line) from None
    order = sorted(range(len(pairs)), key=lambda i: mems[i]._key)
    appended: dict[int, tuple[list[int], SessionInfo]] = {}
    with ExitStack() as locks:
        for i in order:
            locks.enter_context(mems[i]._lock)
        for i in order:
            mems[i]._ensure_state()
        try:
            for i in order:
                appended[i] = mems[i]._append(prepared[i][0])
        except BaseException as exc:
            for i in appended:
                mems[i]._state = None  # rebuilt from the log on next use
            if appended:
                stored = ", ".join(repr(mems[i].session_id) for i in appended)
                exc.add_note(f"the events of session(s) {stored} were stored; their memory is rebuilt on next use")
            raise
        # The events are durable now; the states follow.
        try:
            with shared.lock, torch.no_grad():
                shared.engine.absorb_many([mems[i]._state for i in order], [prepared[i][1] for i in order])
        except BaseException as exc:
            for i in order:
                mems[i]._state = None
            exc.add_note("the events were stored; the memory states are rebuilt on next use")
            raise
        for i in order:
            mems[i]._acknowledge(*appended[i])
    return [appended[i][0] for i in range(len(pairs))]

# Re-exported for ``from comet_agents.memory import ...`` convenience.
__all__ += ["ConflictError", "CorruptSnapshotError", "SnapshotPurgedError"]
