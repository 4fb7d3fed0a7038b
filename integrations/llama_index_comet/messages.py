"""LlamaIndex chat messages <-> CoMeT events, and our tokenizer as a LlamaIndex ``tokenizer_fn``.

A LlamaIndex :class:`~llama_index.core.base.llms.types.ChatMessage` becomes one or more events of
:mod:`comet_agents.events` (the one rendering that memories absorb):

* a text message -> :class:`~comet_agents.events.ChatMessage` (``developer`` is read as ``system``, ``chatbot`` /
  ``model`` as ``assistant``, ``function`` as ``tool``);
* the tool calls of an assistant message (``ToolCallBlock`` blocks, or ``additional_kwargs["tool_calls"]``) ->
  one :class:`~comet_agents.events.ToolCall` each, after the message's text;
* a tool result carrying ``additional_kwargs["tool_call_id"]`` -> :class:`~comet_agents.events.Observation` of
  the tool that call named.

:func:`messages_from_records` inverts it on a session's stored events (an assistant text followed by tool calls
is one message again), so the chat history can be rebuilt from the event log after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock

from comet_agents import events as ev
from comet_agents.engine import MemoryEngine
from comet_agents.modeling import CometModel

__all__ = ["CometTokenizer", "comet_tokenizer", "to_chat_dicts", "to_events", "messages_from_records"]

_ROLE = {"developer": "system", "chatbot": "assistant", "model": "assistant", "function": "tool"}
CHAT_KINDS = ("message", "tool_call", "observation")
"""Event kinds that are chat history (what :func:`messages_from_records` rebuilds)."""


class CometTokenizer:
    """``text -> token ids`` with the CoMeT model's own tokenizer (no special tokens), for ``tokenizer_fn=``."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine

    def __call__(self, text: str) -> list[int]:
        return self.engine.encode(text)

    def __repr__(self) -> str:
        return f"CometTokenizer({self.engine.model.base_name!r})"


def comet_tokenizer(source: Any) -> CometTokenizer:
    """Our tokenizer for LlamaIndex token counting (``Memory(tokenizer_fn=...)``, ``Settings.tokenizer``).

    ``source`` is a :class:`~comet_agents.ComeTMemory`, a :class:`MemoryEngine`, a :class:`CometModel` or
    anything with an ``engine`` / ``memory`` attribute leading to one (``ComeTLLM``, ``ComeTChatMemory``).
    """
    if isinstance(source, MemoryEngine):
        return CometTokenizer(source)
    if isinstance(source, CometModel):
        return CometTokenizer(MemoryEngine(source))
    for attr in ("engine", "memory"):  # ComeTMemory.engine; ComeTChatMemory.memory, ComeTLLM.memory
        inner = getattr(source, attr, None)
        if inner is not None:
            return comet_tokenizer(inner)
    raise TypeError(f"cannot find a CoMeT tokenizer in {type(source).__name__}")


def _role(message: ChatMessage) -> str:
    role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
    return _ROLE.get(role, role)


def _text(message: ChatMessage) -> str:
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def _tool_calls(message: ChatMessage) -> list[tuple[str, dict[str, Any], str | None]]:
    """(tool, arguments, call id) of every tool call an assistant message makes."""
    calls = []
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            calls.append((block.tool_name, block.tool_kwargs, block.tool_call_id))
    for call in message.additional_kwargs.get("tool_calls") or []:
        if isinstance(call, dict):  # OpenAI style: {"id", "function": {"name", "arguments"}}
            fn = call.get("function") or {}
            calls.append((fn.get("name") or call.get("name"), fn.get("arguments", call.get("arguments", {})),
                          call.get("id")))
        else:  # ToolSelection-like
            calls.append((getattr(call, "tool_name", None), getattr(call, "tool_kwargs", {}),
                          getattr(call, "tool_id", None)))
    out = []
    for name, args, call_id in calls:
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                args = {"input": args}
        if not isinstance(args, dict):
            args = {"input": args}
        out.append((str(name), args, call_id or None))
    return out


def to_events(messages: Iterable[ChatMessage], tool_names: dict[str, str] | None = None) -> list[list[ev.Event]]:
    """The events of each message (an empty list for a message with nothing to remember).

    ``tool_names`` maps call ids to tool names, for tool results whose call came earlier; it is updated with
    the calls seen here.
    """
    names = tool_names if tool_names is not None else {}
    out: list[list[ev.Event]] = []
    for message in messages:
        role, text, events = _role(message), _text(message), []
        call_id = message.additional_kwargs.get("tool_call_id")
        if role == "tool" and call_id:
            tool = names.get(call_id) or message.additional_kwargs.get("name") or "tool"
            events.append(ev.Observation(tool=tool, content=text, call_id=call_id))
        elif text.strip():
            events.append(ev.ChatMessage(role=role, content=text))
        if role == "assistant":
            for tool, args, cid in _tool_calls(message):
                events.append(ev.ToolCall(tool=tool, arguments=args, call_id=cid))
                if cid:
                    names[cid] = tool
        out.append(events)
    return out


def messages_from_records(records: Sequence[Any]) -> list[tuple[ChatMessage, list[int], int]]:
    """Chat messages rebuilt from stored events (:class:`~comet_agents.store.EventRecord`), each with the ids of
    the events it was made of and their token count. Events of other kinds are skipped."""
    out: list[tuple[ChatMessage, list[int], int]] = []
    for rec in records:
        if rec.deleted or rec.payload is None or rec.kind not in CHAT_KINDS:
            continue
        p = rec.payload
        if rec.kind == "message":
            out.append((ChatMessage(role=p["role"], content=p["content"]), [rec.id], rec.n_tokens))
        elif rec.kind == "observation":
            msg = ChatMessage(role="tool", content=p["content"],
                              additional_kwargs={"tool_call_id": p.get("call_id"), "name": p["tool"]})
            out.append((msg, [rec.id], rec.n_tokens))
        else:  # a tool call joins the assistant message it follows
            block = ToolCallBlock(tool_call_id=p.get("call_id"), tool_name=p["tool"], tool_kwargs=p["arguments"])
            last = out[-1] if out else None
            if last and last[0].role == MessageRole.ASSISTANT and last[1][-1] == rec.id - 1:
                last[0].blocks.append(block)
                out[-1] = (last[0], last[1] + [rec.id], last[2] + rec.n_tokens)
            else:
                out.append((ChatMessage(role="assistant", blocks=[block]), [rec.id], rec.n_tokens))
    return out


def to_chat_dicts(messages: Iterable[ChatMessage]) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` for the CoMeT chat template (tool calls are written as their event text)."""
    out = []
    for message in messages:
        role = _role(message)
        text = _text(message)
        calls = _tool_calls(message) if role == "assistant" else []
        if calls:
            rendered = "".join(ev.render(ev.ToolCall(tool=t, arguments=a, call_id=c)) for t, a, c in calls)
            text = (text + "\n" if text else "") + rendered.rstrip("\n")
        out.append({"role": role if role in ev.ROLES else "user", "content": text})
    return out
