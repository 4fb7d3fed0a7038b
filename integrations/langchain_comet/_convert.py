"""LangChain messages -> comet events (what memory absorbs) and chat dicts (what ChatComeT reads).

Rendering of message content (documented in docs/langchain.md, "Bad input"):

* a string is used as is; a list of content blocks is joined with newlines: ``"text"`` blocks (and plain strings
  in the list) give their text; ``"reasoning"`` / ``"thinking"`` blocks and tool-call blocks are left out (the
  tool calls are taken from ``AIMessage.tool_calls``);
* image, audio, video and file blocks become a placeholder such as ``[image]`` when absorbed into memory, and are
  refused with :class:`UnsupportedContentError` by :class:`ChatComeT` (the CoMeT models read text only);
* any other block type is refused with :class:`UnsupportedContentError`, naming the message and the block;
* text longer than one event allows (``comet_agents.events.MAX_EVENT_CHARS``) is split into several events of
  the same kind (a huge tool output becomes several ``[observation ...]`` records), so nothing is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, SystemMessage, ToolMessage

from comet_agents import events as ev

__all__ = ["UnsupportedContentError", "content_text", "is_summary", "to_chat_dicts", "to_events"]

MEDIA_BLOCKS = ("image", "image_url", "audio", "input_audio", "video", "file")
SKIPPED_BLOCKS = ("reasoning", "thinking", "redacted_thinking", "tool_call", "tool_call_chunk", "tool_use",
                  "function_call", "server_tool_call", "server_tool_result", "invalid_tool_call")
# Room left for the record header ("[observation some_tool error id=...] ") inside MAX_EVENT_CHARS.
PIECE_CHARS = ev.MAX_EVENT_CHARS - 512

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@\-]{0,63}")
_TOOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")
_CALL_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")


class UnsupportedContentError(ValueError):
    """A message holds content that comet-agents cannot read (an unknown content block, or media for a model)."""


def is_summary(message: BaseMessage) -> bool:
    """Whether ``message`` is the summary that LangChain's SummarizationMiddleware writes into the history."""
    return message.additional_kwargs.get("lc_source") == "summarization"


def content_text(message: BaseMessage, *, media: str = "placeholder", where: str = "message") -> str:
    """The text of a message's content (see the module docstring). ``media``: ``"placeholder"`` or ``"error"``."""
    content = message.content
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise UnsupportedContentError(f"{where}: content must be a string or a list of blocks, "
                                      f"got {type(content).__name__}")
    parts: list[str] = []
    for j, block in enumerate(content):
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in SKIPPED_BLOCKS:
            continue
        elif kind in MEDIA_BLOCKS:
            if media == "error":
                raise UnsupportedContentError(
                    f"{where}, block {j}: {kind!r} content is not supported: the CoMeT models read text only; "
                    "describe the media in text instead")
            parts.append(f"[{'image' if kind == 'image_url' else 'audio' if kind == 'input_audio' else kind}]")
        else:
            shown = kind if kind is not None else type(block).__name__
            raise UnsupportedContentError(
                f"{where}, block {j}: unknown content block {shown!r} (supported: text; media blocks "
                f"{', '.join(MEDIA_BLOCKS)} become placeholders in memory)")
    return "\n".join(p for p in parts if p)


def _pieces(text: str) -> list[str]:
    """``text`` cut into pieces that each fit one event (at line breaks where possible)."""
    out = []
    while len(text) > PIECE_CHARS:
        cut = text.rfind("\n", PIECE_CHARS // 2, PIECE_CHARS)
        cut = PIECE_CHARS if cut < 0 else cut + 1
        out.append(text[:cut])
        text = text[cut:]
    return out + [text] if text.strip() else out


def _ok(pattern: re.Pattern[str], value: Any) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def _tool_name(value: Any, where: str) -> str:
    if isinstance(value, str) and _TOOL_RE.fullmatch(value):
        return value
    if isinstance(value, str) and value:
        cleaned = re.sub(r"[^A-Za-z0-9_.:\-]", "_", value)[:64]
        return cleaned if _TOOL_RE.fullmatch(cleaned) else "_" + cleaned[:63]
    return "tool"


def to_events(messages: Sequence[BaseMessage], *, offset: int = 0) -> list[ev.Event]:
    """Events for human, AI and tool messages (system messages and SummarizationMiddleware summaries are
    skipped; they are not part of the conversation)."""
    out: list[ev.Event] = []
    for i, msg in enumerate(messages, start=offset):
        where = f"message {i} ({type(msg).__name__})"
        if isinstance(msg, (SystemMessage, RemoveMessage)) or is_summary(msg):
            continue
        if not isinstance(msg, BaseMessage):
            raise TypeError(f"{where}: expected a LangChain message")
        text = content_text(msg, where=where)
        if isinstance(msg, ToolMessage):
            tool, call_id = _tool_name(msg.name, where), _ok(_CALL_ID_RE, msg.tool_call_id)
            error = msg.status == "error"
            out += [ev.Observation(tool, p, call_id=call_id, error=error) for p in (_pieces(text) or [""])]
            continue
        if isinstance(msg, HumanMessage):
            role = "user"
        elif isinstance(msg, AIMessage):
            role = "assistant"
        elif msg.type in ("human", "ai", "tool"):  # ChatMessage-like
            role = {"human": "user", "ai": "assistant", "tool": "tool"}[msg.type]
        else:
            role = getattr(msg, "role", None) if getattr(msg, "role", None) in ev.ROLES else "user"
        name = _ok(_NAME_RE, msg.name)
        out += [ev.ChatMessage(role, p, name=name) for p in _pieces(text)]
        for call in getattr(msg, "tool_calls", None) or []:
            args = call.get("args") or {}
            out.append(ev.ToolCall(_tool_name(call.get("name"), where), args if isinstance(args, dict) else
                                   {"input": args}, call_id=_ok(_CALL_ID_RE, call.get("id"))))
    return out


_ROLE = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "chat": "user",
         "developer": "system"}


def to_chat_dicts(messages: Iterable[BaseMessage]) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` for the base model's chat template; media content raises (text-only models).

    Tool calls of AI messages are written as ``[tool_call] ...`` lines and tool results carry the tool's name,
    in the same rendering memory uses.
    """
    out = []
    for i, msg in enumerate(messages):
        where = f"message {i} ({type(msg).__name__})"
        text = content_text(msg, media="error", where=where)
        role = _ROLE.get(msg.type)
        if role is None:
            role = getattr(msg, "role", None) if getattr(msg, "role", None) in ev.ROLES else "user"
        if isinstance(msg, ToolMessage) and msg.name:
            text = f"[{msg.name}] {text}"
        calls = getattr(msg, "tool_calls", None) or []
        if calls:
            rendered = [ev.render(e).rstrip("\n") for e in to_events([AIMessage("", tool_calls=calls)])]
            text = "\n".join([text, *rendered]) if text else "\n".join(rendered)
        out.append({"role": role, "content": text})
    return out
