"""LlamaIndex memories backed by a :class:`~comet_agents.ComeTMemory` session.

* :class:`ComeTChatMemory` is a ``BaseMemory`` for chat engines and agents: every message is absorbed into the
  session (durable in its store) and ``get`` returns a short verbatim window of the newest turns, preceded by
  what memory recalls for the current input.
* :class:`ComeTMemoryBlock` is a ``BaseMemoryBlock`` for LlamaIndex's own ``Memory``: the messages ``Memory``
  flushes out of its short-term queue are absorbed, and its ``get`` shows a recall for the latest input.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Literal, Optional

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.memory import BaseMemory
from llama_index.core.memory.memory import BaseMemoryBlock

from comet_agents.events import render
from comet_agents.memory import ComeTMemory

from .messages import CHAT_KINDS, CometTokenizer, comet_tokenizer, messages_from_records, to_events

__all__ = ["ComeTChatMemory", "ComeTMemoryBlock", "DEFAULT_MEMORY_PROMPT"]

DEFAULT_MEMORY_PROMPT = "What you remember of this conversation: {recall}"


def _last_user_text(messages: list[ChatMessage]) -> str:
    for m in reversed(messages):
        if m.role == MessageRole.USER and (m.content or "").strip():
            return m.content or ""
    return ""


class _Turn:
    """A message of the history with the ids of its events and their token count (our tokenizer)."""

    __slots__ = ("message", "ids", "tokens")

    def __init__(self, message: ChatMessage, ids: list[int], tokens: int) -> None:
        self.message, self.ids, self.tokens = message, ids, tokens


class ComeTChatMemory(BaseMemory):
    """Chat memory for LlamaIndex engines and agents: a verbatim window plus CoMeT recall.

    The history is the session's event log (messages, tool calls, tool results), so it survives restarts and
    is shared with every other reader of the session (another process, the LangChain adapter). ``get``:

    1. cuts the history to the newest messages that fit ``window_tokens`` (counted with the CoMeT model's
       tokenizer), starting at a user message, so an assistant's tool calls and their results stay together;
       the newest user turn is always kept;
    2. when anything lies before the window (older turns, other events), asks memory ``input`` (by default the
       newest user message) and adds the answer, formatted with ``memory_prompt``, as a system message before
       the window (``insert_method="system"``) or in front of the newest user message (``"user"``, for
       ``ReActAgent`` without a ``system_prompt``, which drops a leading system message).

    ``reset`` forgets the session's chat events (exact forgetting: the memory state is rebuilt without them);
    other events (absorbed documents, user events) stay. ``set`` keeps the common prefix and replaces the rest.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: ComeTMemory = Field(exclude=True, description="The CoMeT memory session.")
    window_tokens: int = Field(default=1024, ge=1, description="Budget of the verbatim window, in our tokens.")
    insert_method: Literal["system", "user"] = Field(default="system")
    memory_prompt: str = Field(default=DEFAULT_MEMORY_PROMPT, description="Format of the recall; has {recall}.")
    recall_max_new_tokens: int = Field(default=64, ge=1)

    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _turns: list[_Turn] = PrivateAttr(default_factory=list)
    _seen: Optional[tuple[int, int, int]] = PrivateAttr(default=None)
    _first_event: int = PrivateAttr(default=0)
    _tool_names: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "ComeTChatMemory"

    @classmethod
    def from_defaults(
        cls,
        session_id: str = "default",
        *,
        memory: ComeTMemory | None = None,
        chat_history: list[ChatMessage] | None = None,
        window_tokens: int | None = None,
        token_limit: int | None = None,
        insert_method: Literal["system", "user"] = "system",
        memory_prompt: str = DEFAULT_MEMORY_PROMPT,
        recall_max_new_tokens: int = 64,
        **memory_options: Any,
    ) -> "ComeTChatMemory":
        """A chat memory on ``memory``, or on ``ComeTMemory(session_id, **memory_options)`` (``store=``,
        ``model=``, ``tenant=``, ...). ``token_limit`` (what LlamaIndex engines pass) caps ``window_tokens``;
        ``chat_history`` is ``set`` first."""
        if memory is None:
            memory_options.pop("llm", None)  # engines' from_defaults pass an llm; ComeT counts with its own tokenizer
            memory = ComeTMemory(session_id, **memory_options)
        elif memory_options:
            raise TypeError(f"unexpected options with memory=: {', '.join(sorted(memory_options))}")
        window = window_tokens or 1024
        if token_limit is not None:
            window = min(window, token_limit)
        out = cls(memory=memory, window_tokens=window, insert_method=insert_method, memory_prompt=memory_prompt,
                  recall_max_new_tokens=recall_max_new_tokens)
        if chat_history:
            out.set(chat_history)
        return out

    @property
    def tokenizer_fn(self) -> CometTokenizer:
        """Our tokenizer (``SimpleChatEngine`` counts its prefix messages with it)."""
        return comet_tokenizer(self.memory)

    # ---- the history (the session's chat events) -----------------------------------------------------------------

    def _sync(self) -> None:
        """Rebuild the history from the event log when the session changed other than through this object."""
        self.memory.refresh()
        stats = self.memory.stats
        key = (stats.last_event_id, stats.events, stats.branch)
        if key == self._seen:
            return
        records = self.memory.events()
        self._first_event = records[0].id if records else 0
        self._turns = [_Turn(m, ids, n) for m, ids, n in messages_from_records(records)]
        self._tool_names = {
            b.tool_call_id: b.tool_name for t in self._turns for b in t.message.blocks
            if getattr(b, "tool_call_id", None)
        }
        self._seen = key

    def _absorb(self, messages: list[ChatMessage]) -> None:
        with self._lock:
            self._sync()
            per_message = to_events(messages, self._tool_names)
            flat = [e for events in per_message for e in events]
            if not flat:
                return
            ids = self.memory.absorb(flat)
            stats = self.memory.stats
            if self._seen is None or ids[0] != self._seen[0] + 1:
                self._seen = None  # someone else wrote meanwhile: rebuild from the log on next use
                return
            encode = self.memory.engine.encode
            it = iter(ids)
            for message, events in zip(messages, per_message):
                if events:
                    own = [next(it) for _ in events]
                    self._turns.append(_Turn(message, own, sum(len(encode(render(e))) for e in events)))
            if not self._first_event:
                self._first_event = ids[0]
            self._seen = (stats.last_event_id, stats.events, stats.branch)

    def put(self, message: ChatMessage) -> None:
        """Absorb ``message`` into the session (durable once this returns) and add it to the history."""
        self._absorb([message])

    def put_messages(self, messages: list[ChatMessage]) -> None:
        self._absorb(list(messages))

    def get_all(self) -> list[ChatMessage]:
        """The whole chat history of the session (rebuilt from its event log)."""
        with self._lock:
            self._sync()
            return [t.message for t in self._turns]

    def _window_start(self, budget: int) -> int:
        """Index of the first message of the window: the oldest user message whose suffix fits ``budget``."""
        turns = self._turns
        users = [i for i, t in enumerate(turns) if t.message.role == MessageRole.USER]
        if not users:
            return max(len(turns) - 1, 0)
        suffix = 0
        sizes = {}
        for i in range(len(turns) - 1, -1, -1):
            suffix += turns[i].tokens
            sizes[i] = suffix
        fitting = [i for i in users if sizes[i] <= budget]
        return fitting[0] if fitting else users[-1]

    def window(self, initial_token_count: int = 0) -> list[ChatMessage]:
        """The verbatim window (what ``get`` returns, without the recall)."""
        with self._lock:
            self._sync()
            start = self._window_start(max(self.window_tokens - initial_token_count, 0))
            return [t.message for t in self._turns[start:]]

    def get(self, input: Optional[str] = None, initial_token_count: int = 0, **kwargs: Any) -> list[ChatMessage]:
        """The verbatim window, with what memory recalls for ``input`` (default: the newest user message)."""
        with self._lock:
            self._sync()
            start = self._window_start(max(self.window_tokens - initial_token_count, 0))
            window = [t.message for t in self._turns[start:]]
            first_in_window = self._turns[start].ids[0] if start < len(self._turns) else None
            older = self._first_event and (first_in_window is None or self._first_event < first_in_window)
            query = input if isinstance(input, str) and input.strip() else _last_user_text(window)
            if not older or not query.strip():
                return window
            recall = self.memory.recall(query, max_new_tokens=self.recall_max_new_tokens, refresh=False)
        return self._insert(window, recall)

    def _insert(self, window: list[ChatMessage], recall: str) -> list[ChatMessage]:
        if not recall.strip():
            return window
        note = self.memory_prompt.format(recall=recall)
        if self.insert_method == "system":
            return [ChatMessage(role=MessageRole.SYSTEM, content=note), *window]
        out = list(window)
        for i in range(len(out) - 1, -1, -1):
            if out[i].role == MessageRole.USER:
                m = out[i].model_copy(deep=True)
                m.blocks = [TextBlock(text=note + "\n\n"), *m.blocks]
                out[i] = m
                return out
        return [ChatMessage(role=MessageRole.USER, content=note), *out]

    def set(self, messages: list[ChatMessage]) -> None:
        """Make ``messages`` the chat history: the common prefix stays, the rest of the old history is forgotten
        and the rest of ``messages`` absorbed."""
        messages = list(messages)
        with self._lock:
            self._sync()
            keep = 0
            for turn, message in zip(self._turns, messages):
                if to_events([turn.message], dict(self._tool_names)) != to_events([message], dict(self._tool_names)):
                    break
                keep += 1
            drop = [i for t in self._turns[keep:] for i in t.ids]
            if drop:
                self.memory.forget(drop)
                self._seen = None
            self._absorb(messages[keep:])

    def reset(self) -> None:
        """Forget the session's chat events (messages, tool calls, tool results); other events stay."""
        with self._lock:
            self._sync()
            ids = [r.id for r in self.memory.events() if r.kind in CHAT_KINDS]
            if ids:
                self.memory.forget(ids)
            self._seen = None

    # ---- async twins (the work runs in a worker thread; the event loop keeps running) ---------------------------

    async def aget(self, input: Optional[str] = None, initial_token_count: int = 0, **kwargs: Any) -> list[ChatMessage]:
        return await asyncio.to_thread(self.get, input, initial_token_count, **kwargs)

    async def aget_all(self) -> list[ChatMessage]:
        return await asyncio.to_thread(self.get_all)

    async def aput(self, message: ChatMessage) -> None:
        await asyncio.to_thread(self.put, message)

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        await asyncio.to_thread(self.put_messages, messages)

    async def aset(self, messages: list[ChatMessage]) -> None:
        await asyncio.to_thread(self.set, messages)

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)


class ComeTMemoryBlock(BaseMemoryBlock[str]):
    """A memory block for LlamaIndex's ``Memory``: absorbs what ``Memory`` flushes, shows a recall.

    Give it one ``memory`` (a :class:`ComeTMemory`), or ``memory_for``, a function of the ``Memory``'s
    ``session_id`` returning the session's ComeTMemory. ``priority`` defaults to 1 (0 would mean "never
    truncated"); when ``Memory`` must shrink its blocks, the recall is dropped.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = Field(default="comet_memory")
    description: Optional[str] = Field(default="What CoMeT memory recalls of the archived conversation.")
    priority: int = Field(default=1)
    memory: Optional[ComeTMemory] = Field(default=None, exclude=True)
    memory_for: Optional[Callable[[str], ComeTMemory]] = Field(default=None, exclude=True)
    recall_max_new_tokens: int = Field(default=64, ge=1)

    def _memory(self, session_id: str | None) -> ComeTMemory:
        if self.memory_for is not None:
            if session_id is None:
                raise ValueError("ComeTMemoryBlock(memory_for=...) needs the session_id that Memory passes")
            return self.memory_for(session_id)
        if self.memory is None:
            raise ValueError("ComeTMemoryBlock needs memory= or memory_for=")
        return self.memory

    async def _aput(self, messages: list[ChatMessage]) -> None:
        by_session: dict[str | None, list[ChatMessage]] = {}
        for m in messages:
            by_session.setdefault(m.additional_kwargs.get("session_id"), []).append(m)
        for session_id, batch in by_session.items():
            events = [e for evs in to_events(batch) for e in evs]
            if events:
                await self._memory(session_id).aabsorb(events)

    async def _aget(self, messages: Optional[list[ChatMessage]] = None, **block_kwargs: Any) -> str:
        mem = self._memory(block_kwargs.get("session_id"))
        query = _last_user_text(list(messages or []))
        if not query.strip() or not (await asyncio.to_thread(lambda: mem.stats.events)):
            return ""
        return await mem.arecall(query, max_new_tokens=self.recall_max_new_tokens)

    async def atruncate(self, content: str, tokens_to_truncate: int) -> Optional[str]:
        return None
