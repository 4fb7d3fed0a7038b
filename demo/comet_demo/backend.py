"""The demo's logic, without any UI: model loading, per-browser sessions, uploads, absorb, chat, pass key.

The Gradio app (:mod:`comet_demo.app`) only wires these functions to components, so everything here can be
tested (and reused) without a browser.

Sessions live in one tenant (``demo`` by default) of an ordinary :class:`~comet_agents.store.Store`. A browser
gets a random id, kept in its local storage; its sessions are named ``<browser id>:<name>`` and a browser
sees only its own, unless the server runs with ``show_all_sessions`` (then every session of the tenant is
listed, and any can be opened).
"""

from __future__ import annotations

import math
import os
import random
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comet_agents import events as ev
from comet_agents.engine import MemoryEngine
from comet_agents.memory import ComeTMemory, MemoryStats, shared_engine
from comet_agents.store import Store, open_store

DEFAULT_TENANT = "demo"
DEFAULT_MAX_UPLOAD_MB = 10.0
MAIN_SESSION = "main"
PASSKEY_SESSION = "passkey"
PASSKEY_QUESTION = "What is the pass key?"
STREAM_KINDS = ("user_behaviour", "agent_trajectory")
_BROWSER_RE = re.compile(r"[0-9a-f]{32}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

ProgressFn = Callable[[int, int], None]  # (tokens done, tokens total)


class DemoError(ValueError):
    """A user error: shown in the page as is."""


class ModelNotReady(DemoError):
    pass


# ----------------------------------------------------------------------------------------------- pure helpers


def kv_cache_bytes(model_config: Any, tokens: int, bytes_per_value: int) -> int:
    """Bytes a plain transformer's KV cache takes for ``tokens`` tokens of history, from the base config:
    2 (K and V) x layers x KV heads x head size x tokens x bytes per value."""
    layers = int(model_config.num_hidden_layers)
    heads = int(model_config.num_attention_heads)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(model_config, "head_dim", None) or model_config.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * int(tokens) * int(bytes_per_value)


def read_upload(path: str | os.PathLike[str] | None, max_bytes: int) -> bytes:
    """The bytes of an uploaded file; its size is checked before anything is read."""
    if not path:
        raise DemoError("no file uploaded")
    size = os.stat(path).st_size  # before reading: a huge upload is refused without loading it
    if size > max_bytes:
        raise DemoError(f"the file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB "
                        "(start the demo with --max-upload-mb to change it)")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def parse_events(data: bytes, name: str = "") -> list[ev.Event]:
    """Events of an uploaded or pasted log, validated exactly as ``comet-agents absorb`` does."""
    from comet_agents.cli import parse_input

    try:
        return [ev.parse_event(e) for e in parse_input(data, name, "auto")]
    except ev.EventError as exc:
        raise DemoError(f"invalid input: {exc}") from None


def synthetic_events(kind: str, target_tokens: int, count_tokens: Callable[[str], int], seed: int = 0) -> list[ev.Event]:
    """A synthetic stream of about ``target_tokens`` tokens: a shopper's events or an agent's trajectory
    (the generators of :mod:`comet_agents.training.data`)."""
    from comet_agents.training.data import agent_trajectory, user_behaviour

    if kind not in STREAM_KINDS:
        raise DemoError(f"unknown stream kind {kind!r} (known: {', '.join(STREAM_KINDS)})")
    if target_tokens < 1:
        raise DemoError("the stream length must be at least 1 token")
    gen = (user_behaviour if kind == "user_behaviour" else agent_trajectory).iter_filler_events(random.Random(seed))
    out: list[ev.Event] = []
    total = 0
    while total < target_tokens:
        e = next(gen)
        out.append(e)
        total += count_tokens(ev.render(e))
    return out


def events_jsonl(events: Sequence[ev.Event]) -> str:
    import json

    return "".join(json.dumps(ev.to_dict(e), ensure_ascii=False) + "\n" for e in events)


def suggested_question(events: Sequence[ev.Event]) -> tuple[str, str] | None:
    """A question about the stream and its answer read off the log (to compare with the model's answer)."""
    for e in reversed(events):
        if isinstance(e, ev.UserEvent) and e.kind == "purchase" and e.item:
            return "What did the user buy last?", e.item
    for e in reversed(events):
        if isinstance(e, ev.UserEvent) and e.kind == "add_to_cart" and e.item:
            return "What did the user last add to the cart?", e.item
    for e in reversed(events):
        if isinstance(e, ev.UserEvent) and e.kind == "search" and "query" in e.attributes:
            return "What did the user search for last?", str(e.attributes["query"])
    for e in reversed(events):
        if isinstance(e, ev.UserEvent) and e.item:
            return f"Which item did the user {e.kind.replace('_', ' ')} last?", e.item
    for e in reversed(events):
        if isinstance(e, ev.ToolCall) and "path" in e.arguments:
            return f"Which file did the agent open last with {e.tool}?", str(e.arguments["path"])
    for e in reversed(events):
        if isinstance(e, ev.ToolCall):
            return "Which tool did the agent call last?", e.tool
    return None


def chunk_events(events: Sequence[ev.Event], sizes: Sequence[int], parts: int) -> list[tuple[list[ev.Event], int]]:
    """Split events into about ``parts`` consecutive groups of similar token counts: [(events, tokens)]."""
    total = sum(sizes)
    target = max(1, math.ceil(total / max(1, parts)))
    groups: list[tuple[list[ev.Event], int]] = []
    cur: list[ev.Event] = []
    n = 0
    for e, k in zip(events, sizes):
        cur.append(e)
        n += k
        if n >= target:
            groups.append((cur, n))
            cur, n = [], 0
    if cur:
        groups.append((cur, n))
    return groups


def new_browser_id() -> str:
    return uuid.uuid4().hex


def valid_browser_id(value: Any) -> bool:
    return isinstance(value, str) and _BROWSER_RE.fullmatch(value) is not None


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Panel:
    """What the side panel shows for a session."""

    session_id: str
    tokens: int  # absorbed + pending: the whole history the memory holds
    tokens_absorbed: int
    tokens_pending: int
    chunks: int
    events: int
    version: int | None
    state_bytes: int
    kv_cache_bytes: int
    points: list[tuple[int, int, int]]  # (tokens, state bytes, KV cache bytes) along the session's versions


@dataclass(frozen=True)
class AbsorbResult:
    events: int
    tokens: int
    seconds: float
    version: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class PasskeyResult:
    key: str
    depth: float
    tokens: int
    answer: str
    correct: bool
    absorb_seconds: float
    answer_seconds: float
    state_bytes: int
    kv_cache_bytes: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.absorb_seconds, 1e-9)


# ----------------------------------------------------------------------------------------------- the backend


def _default_secret_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("comet-agents")) / "demo-browser-secret"


class DemoBackend:
    """Everything the demo does, for many browsers at once.

    Args:
        model: ``"default"``, an adapter directory, a base model, a CometModel or a MemoryEngine. Loaded in a
            background thread when ``background`` (the page is served at once and says it is loading).
        device: where to load a model given by name.
        store: Store or SQLAlchemy URL (default: the library's default SQLite file).
        tenant: the tenant all demo sessions live in.
        show_all_sessions: list every session of the tenant in every browser (default: only its own).
        max_upload_mb: uploads larger than this are refused (checked before reading).
        trained: whether the model's adapter is trained; ``None`` works it out for models given by name.
        secret: key of the browser id kept in local storage (default: one kept in the user data directory,
            so a browser keeps its sessions across restarts).
    """

    def __init__(
        self,
        model: Any = "default",
        *,
        device: str | None = None,
        store: Store | str | None = None,
        tenant: str = DEFAULT_TENANT,
        show_all_sessions: bool = False,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        trained: bool | None = None,
        secret: str | None = None,
        background: bool = True,
    ) -> None:
        if max_upload_mb <= 0:
            raise ValueError("max_upload_mb must be > 0")
        self.store = open_store(store)
        self.tenant = tenant
        self.show_all_sessions = show_all_sessions
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.model_name = model if isinstance(model, (str, Path)) else type(model).__name__
        self.trained = self._is_trained(model) if trained is None else trained
        self.adapter_note = self._adapter_note(model)
        self._secret = secret
        self._engine: MemoryEngine | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._memories: dict[str, ComeTMemory] = {}
        self._memories_lock = threading.Lock()
        self._scratch_dir = tempfile.TemporaryDirectory(prefix="comet-demo-")
        self._scratch = open_store(f"sqlite:///{self._scratch_dir.name}/passkey.db")
        if background:
            threading.Thread(target=self._load, args=(model, device), name="comet-demo-load", daemon=True).start()
        else:
            self._load(model, device)

    # ---- model ------------------------------------------------------------------------------------------------

    @staticmethod
    def _adapter_dir(model: Any) -> Path | None:
        """Where the adapter of a model given by name would be; None for a model object (we cannot tell)."""
        from comet_agents.modeling import WEIGHTS_DIR

        if isinstance(model, (str, Path)):
            return WEIGHTS_DIR if str(model) == "default" else Path(model)
        return None

    @classmethod
    def _is_trained(cls, model: Any) -> bool:
        from comet_agents.modeling import ADAPTER_FILE

        where = cls._adapter_dir(model)
        return where is not None and (where / ADAPTER_FILE).exists()

    @classmethod
    def _adapter_note(cls, model: Any) -> str:
        """The ``note`` in the ``meta`` of an adapter's comet_config.json (the shipped preview says there what it
        cannot do yet), shown in the page header; empty for model objects and adapters without a readable one."""
        from comet_agents.config import CometConfig

        where = cls._adapter_dir(model)
        if where is None:
            return ""
        try:
            _, meta = CometConfig.load(where)
        except (OSError, ValueError, TypeError):
            return ""
        return str(meta.get("note", "")) if isinstance(meta, dict) else ""

    def _load(self, model: Any, device: str | None) -> None:
        try:
            self._engine = shared_engine(model, device)
        except BaseException as exc:  # shown in the page
            self._error = exc
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._engine is not None

    def engine(self, timeout: float | None = None) -> MemoryEngine:
        """The loaded engine (waits for the background load up to ``timeout`` seconds)."""
        if not self._ready.wait(timeout):
            raise ModelNotReady("the model is still loading; try again in a moment")
        if self._engine is None:
            raise DemoError(f"the model could not be loaded: {self._error}")
        return self._engine

    def status(self) -> dict[str, Any]:
        if not self._ready.is_set():
            return {"state": "loading", "model": str(self.model_name), "trained": self.trained,
                    "adapter_note": self.adapter_note}
        if self._engine is None:
            return {"state": "error", "model": str(self.model_name), "trained": self.trained,
                    "adapter_note": self.adapter_note, "error": str(self._error)}
        m = self._engine.model
        return {"state": "ready", "model": m.base_name, "trained": self.trained, "adapter_note": self.adapter_note,
                "device": str(m.device),
                "dtype": str(m.dtype).replace("torch.", ""), "state_bytes": m.new_state().nbytes(),
                "chunk_size": m.config.chunk_size}

    def kv_cache_bytes(self, tokens: int) -> int:
        m = self.engine().model
        return kv_cache_bytes(m.inner.config, tokens, m.dtype.itemsize)

    def count_tokens(self, text: str) -> int:
        return self.engine().count_tokens(text)

    # ---- browsers and sessions --------------------------------------------------------------------------------

    @property
    def browser_secret(self) -> str:
        """Key of the browser id in local storage (kept in a file so that browsers keep their sessions)."""
        if self._secret is None:
            path = _default_secret_file()
            try:
                self._secret = path.read_text().strip() or None
            except OSError:
                pass
            if self._secret is None:
                self._secret = secrets.token_hex(16)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(self._secret)
                    path.chmod(0o600)
                except OSError:
                    pass  # works for this run only
        return self._secret

    def session_id(self, browser: str, name: str) -> str:
        if not valid_browser_id(browser):
            raise DemoError("this browser has no valid id; reload the page")
        name = (name or "").strip()
        if not _NAME_RE.fullmatch(name):
            raise DemoError(f"session name {name!r} is not valid: use 1-64 letters, digits, '_', '-' or '.'")
        return f"{browser}:{name}"

    def visible(self, browser: str, session_id: str) -> bool:
        return self.show_all_sessions or session_id.startswith(f"{browser}:")

    def label(self, browser: str, session_id: str) -> str:
        """How a session is named in this browser: its own sessions by name, others by full id."""
        prefix = f"{browser}:"
        return session_id[len(prefix):] if session_id.startswith(prefix) else session_id

    def sessions(self, browser: str) -> list[str]:
        """Session ids this browser may see (its own, or all with ``show_all_sessions``)."""
        return [s.session_id for s in self.store.list_sessions(self.tenant) if self.visible(browser, s.session_id)]

    def _check(self, browser: str, session_id: str) -> None:
        if not valid_browser_id(browser):
            raise DemoError("this browser has no valid id; reload the page")
        if not self.visible(browser, session_id):
            raise DemoError("no such session")

    def memory(self, browser: str, session_id: str, *, create: bool = True) -> ComeTMemory:
        """The ComeTMemory of a session this browser may see (opened once, shared by its tabs)."""
        self._check(browser, session_id)
        engine = self.engine(timeout=None)
        with self._memories_lock:
            mem = self._memories.get(session_id)
            if mem is None or mem.closed:
                try:
                    mem = ComeTMemory(session_id, tenant=self.tenant, store=self.store, model=engine,
                                      snapshot_every=None, keep_snapshots=None, create=create, rebuild=True)
                except LookupError:
                    raise DemoError(f"session {self.label(browser, session_id)!r} does not exist") from None
                self._memories[session_id] = mem
            return mem

    def panel(self, browser: str, session_id: str) -> Panel:
        mem = self.memory(browser, session_id)
        st: MemoryStats = mem.stats
        tokens = st.tokens_absorbed + st.tokens_pending
        # The state's size is the same at every version: that is the point of the plot.
        points = sorted({0, tokens} | {s.tokens_absorbed + s.tokens_pending for s in mem.history()})
        return Panel(
            session_id=session_id, tokens=tokens, tokens_absorbed=st.tokens_absorbed,
            tokens_pending=st.tokens_pending, chunks=st.chunks, events=st.events, version=st.version,
            state_bytes=st.state_bytes, kv_cache_bytes=self.kv_cache_bytes(tokens),
            points=[(t, st.state_bytes, self.kv_cache_bytes(t)) for t in points],
        )

    # ---- absorbing --------------------------------------------------------------------------------------------

    def absorb(self, browser: str, session_id: str, events: Sequence[ev.Event], progress: ProgressFn | None = None,
               *, parts: int = 40) -> AbsorbResult:
        """Absorb events (in about ``parts`` calls, reporting progress after each) and snapshot."""
        if not events:
            raise DemoError("there are no events to absorb")
        mem = self.memory(browser, session_id)
        engine = self.engine()
        sizes = [engine.count_tokens(ev.render(e)) for e in events]
        total = sum(sizes)
        done = 0
        t0 = time.perf_counter()
        if progress:
            progress(0, total)
        for group, n in chunk_events(events, sizes, parts):
            mem.absorb(group)
            done += n
            if progress:
                progress(done, total)
        seconds = time.perf_counter() - t0
        return AbsorbResult(events=len(events), tokens=total, seconds=seconds, version=mem.snapshot())

    def ask(self, browser: str, session_id: str, question: str, *, max_new_tokens: int = 48) -> str:
        if not question or not question.strip():
            raise DemoError("the question is empty: type a question first")
        mem = self.memory(browser, session_id)
        try:
            return mem.recall(question.strip(), max_new_tokens=max_new_tokens)
        except ValueError as exc:
            raise DemoError(str(exc)) from None

    # ---- chat -------------------------------------------------------------------------------------------------

    def chat_stream(self, browser: str, session_id: str, message: str, *, max_new_tokens: int = 64):
        """The reply to ``message`` as text pieces, answered from the session's memory only (earlier turns are in
        the memory, not in the prompt). Call :meth:`absorb_turn` afterwards to remember the turn."""
        if not message or not message.strip():
            raise DemoError("the message is empty: type something first")
        mem = self.memory(browser, session_id)
        messages = [{"role": "user", "content": message.strip()}]
        try:
            return mem.stream_chat(messages, max_new_tokens=max_new_tokens)
        except (ValueError, TypeError) as exc:
            raise DemoError(str(exc)) from None

    def absorb_turn(self, browser: str, session_id: str, message: str, reply: str) -> int:
        """Absorb a chat turn (the user's message and the reply) and snapshot; returns the version."""
        mem = self.memory(browser, session_id)
        turn = [ev.ChatMessage("user", message.strip())]
        if reply.strip():
            turn.append(ev.ChatMessage("assistant", reply))
        mem.absorb(turn)
        return mem.snapshot()

    # ---- pass key ---------------------------------------------------------------------------------------------

    def passkey(self, tokens: int, depth: float, key: str | None = None, progress: ProgressFn | None = None,
                *, seed: int = 0) -> PasskeyResult:
        """Hide a pass key at ``depth`` in a haystack of ``tokens`` tokens, absorb it into a scratch session, ask."""
        from comet_agents.cli import _text_events
        from comet_agents.training.data.passkey import make_passkey_haystack

        if not 16 <= int(tokens) <= 1_000_000:
            raise DemoError("the haystack length must be between 16 and 1,000,000 tokens")
        if not 0.0 <= float(depth) <= 1.0:
            raise DemoError("the depth must be between 0 and 1")
        engine = self.engine()
        key = key or str(random.Random().randrange(10000, 99999))
        text = make_passkey_haystack(int(tokens), float(depth), key, count_tokens=engine.count_tokens, seed=seed)
        sid = f"passkey-{uuid.uuid4().hex}"
        mem = ComeTMemory(sid, tenant=self.tenant, store=self._scratch, model=engine, snapshot_every=None,
                          snapshot_on_close=False)
        try:
            events = [ev.TextEvent(t) for t in _text_events(text)]
            sizes = [engine.count_tokens(ev.render(e)) for e in events]
            total, done = sum(sizes), 0
            t0 = time.perf_counter()
            for group, n in chunk_events(events, sizes, 40):
                mem.absorb(group)
                done += n
                if progress:
                    progress(done, total)
            absorb_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            answer = mem.recall(PASSKEY_QUESTION, max_new_tokens=16)
            answer_s = time.perf_counter() - t0
            st = mem.stats
            n = st.tokens_absorbed + st.tokens_pending
            return PasskeyResult(key=key, depth=float(depth), tokens=n, answer=answer, correct=key in answer,
                                 absorb_seconds=absorb_s, answer_seconds=answer_s, state_bytes=st.state_bytes,
                                 kv_cache_bytes=self.kv_cache_bytes(n))
        finally:
            mem.delete_session()

    # ---- sessions tab -----------------------------------------------------------------------------------------

    def new_session(self, browser: str, name: str) -> str:
        sid = self.session_id(browser, name)
        self.memory(browser, sid)
        return sid

    def restore(self, browser: str, session_id: str, version: int) -> None:
        try:
            self.memory(browser, session_id).restore(int(version))
        except LookupError as exc:
            raise DemoError(f"version {version} cannot be restored: {exc}") from None

    def fork(self, browser: str, session_id: str, new_name: str, version: int | None = None) -> str:
        new_sid = self.session_id(browser, new_name)
        if any(s.session_id == new_sid for s in self.store.list_sessions(self.tenant)):
            raise DemoError(f"a session named {new_name!r} exists already")
        try:
            child = self.memory(browser, session_id).fork(new_sid, version, snapshot_every=None, keep_snapshots=None)
        except LookupError as exc:
            raise DemoError(str(exc)) from None
        with self._memories_lock:
            self._memories[new_sid] = child
        return new_sid

    def forget(self, browser: str, session_id: str, event_ids: Sequence[int]) -> list[int]:
        if not event_ids:
            raise DemoError("no event ids given: type ids from the events table, e.g. 3, 5")
        try:
            return self.memory(browser, session_id).forget(list(event_ids)).forgotten
        except (LookupError, ValueError) as exc:
            raise DemoError(str(exc)) from None

    def delete(self, browser: str, session_id: str) -> None:
        mem = self.memory(browser, session_id, create=False)
        mem.delete_session()
        with self._memories_lock:
            self._memories.pop(session_id, None)

    def close(self) -> None:
        with self._memories_lock:
            for mem in self._memories.values():
                mem.close()
            self._memories.clear()
        self._scratch_dir.cleanup()


def parse_ids(text: str) -> list[int]:
    """Event ids typed as ``3, 5 7``."""
    parts = [p for p in re.split(r"[,\s]+", text or "") if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise DemoError(f"event ids must be whole numbers, got {text!r}") from None
