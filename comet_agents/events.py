"""Typed events and the ONE text rendering that CoMeT memories absorb.

A memory absorbs *text*. Everything an agent framework hands us -- plain documents, chat messages, agent steps,
user behaviour events -- is first validated into one of the frozen dataclasses below and then turned into text
by :func:`render`. The same function renders the synthetic training data (``comet_agents.training.data``) and the
events seen at run time, so a trained adapter only ever reads this format.

.. important::
   The rendering is a **contract**. Changing a single character of it (a tag, a separator, the quoting of values,
   the order of attributes) changes what trained adapters see at run time and silently degrades them. Change it
   only together with a retraining, and bump :data:`RENDER_FORMAT_VERSION`.

Rendering format (version 1)
============================

Every event renders to one *record* that ends with exactly one ``"\\n"``, so concatenated records read as lines.
A record is ``[<header>] <body>\\n``; when the body is empty it is ``[<header>]\\n``. Free text bodies (message
content, thoughts, observations, final answers, plain text) are written verbatim except that ``\\r\\n`` and ``\\r``
become ``\\n``, leading blank lines are dropped and trailing whitespace is stripped; a body may therefore span several
lines (file contents, shell output). Values written as JSON use ``json.dumps(value, ensure_ascii=False,
sort_keys=True)`` with the default ``", "`` / ``": "`` separators, so strings are double-quoted with JSON escapes
(a newline inside an argument becomes ``\\n`` and the record stays on one line).

=================  ==========================================================================================
event              rendering
=================  ==========================================================================================
TextEvent          the text itself, no header: ``The grass is green.\\n``
ChatMessage        ``[<role>] <content>`` or, with a name, ``[<role> <name>] <content>``:
                   ``[user] I'm vegetarian.\\n``, ``[tool weather] 21 C, sunny\\n``
Thought            ``[thought] <text>``: ``[thought] I should search for the schedule.\\n``
ToolCall           ``[tool_call] <tool>(<key>=<json>, ...)`` with keys sorted, or
                   ``[tool_call id=<call_id>] ...``: ``[tool_call] search(limit=5, query="train times")\\n``
Observation        ``[observation <tool>] <content>``; ``error`` follows the tool name for failed calls and
                   ``id=<call_id>`` comes last: ``[observation search error id=c1] timeout after 30 s\\n``
FinalAnswer        ``[final_answer] <text>``: ``[final_answer] The 8:15 train.\\n``
UserEvent          ``[event <timestamp> <kind>] item=<json> <key>=<json> ...`` with the attribute keys sorted;
                   the timestamp is omitted when absent, ``item=`` when there is no item:
                   ``[event 2026-03-01T10:22:00 purchase] item="Blue running shoes" category="shoes" price=59.9\\n``
=================  ==========================================================================================

:func:`render_many` is the plain concatenation of the records. No event may render to more than
:data:`MAX_EVENT_CHARS` characters; split long documents into several :class:`TextEvent`.

Dict form
=========

:func:`to_dict` gives a JSON-ready dict with a ``"type"`` field (``text``, ``message``, ``thought``, ``tool_call``,
``observation``, ``final_answer``, ``user_event``) and every field of the event, and :func:`parse_event` turns it
back into the same event. :func:`parse_jsonl` reads one such dict per line. Optional fields (``name``,
``call_id``, ``error``, ``item``, ``attributes``, ``timestamp``) may be omitted on input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar, Literal, Union

__all__ = [
    "MAX_EVENT_CHARS",
    "RENDER_FORMAT_VERSION",
    "ROLES",
    "EVENT_TYPES",
    "EventError",
    "TextEvent",
    "ChatMessage",
    "Thought",
    "ToolCall",
    "Observation",
    "FinalAnswer",
    "UserEvent",
    "Event",
    "parse_event",
    "parse_jsonl",
    "render",
    "render_many",
    "to_dict",
    "RECORD_HEADS",
    "cut_at_record",
]

MAX_EVENT_CHARS = 200_000
"""Largest rendering (in characters, newline included) of a single event."""

RENDER_FORMAT_VERSION = 1
"""Version of the rendering contract described in the module docstring."""

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

AttributeValue = Union[str, int, float, bool]

# Names that appear inside a ``[...]`` header must not contain spaces or brackets.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@\-]{0,63}")
_TOOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_CALL_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
_ISO_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}"  # date
    r"(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"  # optional time
    r"(?:Z|[+-]\d{2}:\d{2})?)?"  # optional zone
)


class EventError(ValueError):
    """An event (or a line of JSON Lines) failed validation.

    Attributes:
        field: dotted path of the offending field (``"tool_call.arguments['q']"``), or ``None``.
        line: 1-based line number for :func:`parse_jsonl` errors, or ``None``.
    """

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


def _fail(path: str, problem: str) -> EventError:
    return EventError(f"{path}: {problem}", field=path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ----------------------------------------------------------------------------------------------- field checks


def _check_str(path: str, value: Any, *, allow_empty: bool = True) -> None:
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise _fail(path, "must not be empty" if not value else "must not be blank (only whitespace)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(path, f"is not valid Unicode (lone surrogate at index {exc.start})") from None


def _check_pattern(path: str, value: Any, pattern: re.Pattern[str], what: str) -> None:
    _check_str(path, value, allow_empty=False)
    if not pattern.fullmatch(value):
        raise _fail(path, f"{value!r} is not a valid {what} (expected {pattern.pattern})")


def _check_optional_pattern(path: str, value: Any, pattern: re.Pattern[str], what: str) -> None:
    if value is not None:
        _check_pattern(path, value, pattern, what)


def _check_json_value(path: str, value: Any, depth: int = 0) -> None:
    """Raise unless ``value`` is plain JSON data (str keys, finite numbers, no cycles)."""
    if depth > 64:
        raise _fail(path, "nested more than 64 levels deep (or contains a cycle)")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(path, f"{value!r} is not JSON-serializable (only finite numbers are allowed)")
        return
    if isinstance(value, str):
        _check_str(path, value)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(f"{path}[{i}]", item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(path, f"key {key!r} is not JSON-serializable (keys must be strings, got {_type_name(key)})")
            _check_json_value(f"{path}[{key!r}]", item, depth + 1)
        return
    raise _fail(path, f"value of type {_type_name(value)} is not JSON-serializable")


def _json_copy(value: Any) -> Any:
    """Deep copy of checked JSON data with tuples turned into lists and mappings into dicts."""
    if isinstance(value, Mapping):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_copy(v) for v in value]
    return value


def _check_timestamp(path: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, date):  # datetime is a date too
        value = value.isoformat()
    _check_str(path, value, allow_empty=False)
    if not _ISO_RE.fullmatch(value):
        raise _fail(
            path,
            f"{value!r} is not an ISO 8601 timestamp "
            "(expected YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|+HH:MM], with 'T' between date and time)",
        )
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        raise _fail(path, f"{value!r} is not a valid ISO 8601 timestamp ({exc})") from None
    return value


def _check_size(event: "_EventBase") -> None:
    n = len(render(event))
    if n > MAX_EVENT_CHARS:
        # Name the field that carries most of the text.
        sizes = {
            name: len(val) if isinstance(val, str) else len(json.dumps(val, ensure_ascii=False, default=str))
            for name, val in event.__dict__.items()
            if val is not None
        }
        biggest = max(sizes, key=sizes.__getitem__)
        raise _fail(
            f"{event.TYPE}.{biggest}",
            f"the event renders to {n:,} characters, more than MAX_EVENT_CHARS = {MAX_EVENT_CHARS:,} "
            "characters of rendered text; split it into several events",
        )


# ----------------------------------------------------------------------------------------------- event classes


class _EventBase:
    TYPE: ClassVar[str]


@dataclass(frozen=True)
class TextEvent(_EventBase):
    """A piece of plain text (a document, a note, a transcript)."""

    TYPE: ClassVar[str] = "text"
    text: str

    def __post_init__(self) -> None:
        _check_str("text.text", self.text, allow_empty=False)
        _check_size(self)


@dataclass(frozen=True)
class ChatMessage(_EventBase):
    """One chat turn. ``role`` is one of :data:`ROLES`; ``name`` an optional speaker or tool name."""

    TYPE: ClassVar[str] = "message"
    role: Role
    content: str
    name: str | None = None

    def __post_init__(self) -> None:
        _check_str("message.role", self.role, allow_empty=False)
        if self.role not in ROLES:
            raise _fail("message.role", f"{self.role!r} is not a known role (expected one of: {', '.join(ROLES)})")
        _check_str("message.content", self.content, allow_empty=False)
        _check_optional_pattern("message.name", self.name, _NAME_RE, "name")
        _check_size(self)


@dataclass(frozen=True)
class Thought(_EventBase):
    """An agent's reasoning step."""

    TYPE: ClassVar[str] = "thought"
    text: str

    def __post_init__(self) -> None:
        _check_str("thought.text", self.text, allow_empty=False)
        _check_size(self)


@dataclass(frozen=True)
class ToolCall(_EventBase):
    """An agent's call of ``tool`` with JSON ``arguments`` (copied; tuples become lists). Not hashable."""

    TYPE: ClassVar[str] = "tool_call"
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None

    def __post_init__(self) -> None:
        _check_pattern("tool_call.tool", self.tool, _TOOL_RE, "tool name")
        if not isinstance(self.arguments, Mapping):
            raise _fail("tool_call.arguments", f"expected an object (dict), got {_type_name(self.arguments)}")
        _check_json_value("tool_call.arguments", self.arguments)
        object.__setattr__(self, "arguments", _json_copy(self.arguments))
        _check_optional_pattern("tool_call.call_id", self.call_id, _CALL_ID_RE, "call id")
        _check_size(self)


@dataclass(frozen=True)
class Observation(_EventBase):
    """What ``tool`` returned (``error=True`` when the call failed). ``content`` may be empty."""

    TYPE: ClassVar[str] = "observation"
    tool: str
    content: str
    call_id: str | None = None
    error: bool = False

    def __post_init__(self) -> None:
        _check_pattern("observation.tool", self.tool, _TOOL_RE, "tool name")
        _check_str("observation.content", self.content)
        _check_optional_pattern("observation.call_id", self.call_id, _CALL_ID_RE, "call id")
        if not isinstance(self.error, bool):
            raise _fail("observation.error", f"expected a boolean, got {_type_name(self.error)}")
        _check_size(self)


@dataclass(frozen=True)
class FinalAnswer(_EventBase):
    """The agent's final answer."""

    TYPE: ClassVar[str] = "final_answer"
    text: str

    def __post_init__(self) -> None:
        _check_str("final_answer.text", self.text, allow_empty=False)
        _check_size(self)


@dataclass(frozen=True)
class UserEvent(_EventBase):
    """A user behaviour event (``view``, ``search``, ``add_to_cart``, ``purchase``, ``rating``, ...).

    ``kind`` is a free identifier-like string, ``item`` the item concerned (if any), ``attributes`` flat scalar
    data (str / int / float / bool; ``"item"`` is reserved), ``timestamp`` an ISO 8601 string (a ``datetime`` or
    ``date`` is converted with ``isoformat()``). Not hashable.
    """

    TYPE: ClassVar[str] = "user_event"
    kind: str
    item: str | None = None
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    timestamp: str | None = None

    def __post_init__(self) -> None:
        _check_pattern("user_event.kind", self.kind, _KIND_RE, "event kind")
        if self.item is not None:
            _check_str("user_event.item", self.item, allow_empty=False)
        if not isinstance(self.attributes, Mapping):
            raise _fail("user_event.attributes", f"expected an object (dict), got {_type_name(self.attributes)}")
        for key, value in self.attributes.items():
            if not isinstance(key, str):
                raise _fail("user_event.attributes", f"key {key!r} must be a string, got {_type_name(key)}")
            path = f"user_event.attributes[{key!r}]"
            if not _KEY_RE.fullmatch(key):
                raise _fail(path, f"{key!r} is not a valid attribute name (expected {_KEY_RE.pattern})")
            if key == "item":
                raise _fail(path, "'item' is reserved; put the item in the item field")
            if isinstance(value, float):
                if not math.isfinite(value):
                    raise _fail(path, f"{value!r} is not JSON-serializable (only finite numbers are allowed)")
            elif isinstance(value, str):
                _check_str(path, value)
            elif not isinstance(value, (bool, int)):
                raise _fail(path, f"expected a string, number or boolean, got {_type_name(value)}")
        object.__setattr__(self, "attributes", dict(self.attributes))
        object.__setattr__(self, "timestamp", _check_timestamp("user_event.timestamp", self.timestamp))
        _check_size(self)


Event = Union[TextEvent, ChatMessage, Thought, ToolCall, Observation, FinalAnswer, UserEvent]
"""Any event that :func:`render` accepts."""

EVENT_TYPES: dict[str, type] = {
    cls.TYPE: cls for cls in (TextEvent, ChatMessage, Thought, ToolCall, Observation, FinalAnswer, UserEvent)
}
"""``"type"`` value -> event class."""

_EVENT_CLASSES = tuple(EVENT_TYPES.values())
_REQUIRED: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "message": ("role", "content"),
    "thought": ("text",),
    "tool_call": ("tool",),
    "observation": ("tool", "content"),
    "final_answer": ("text",),
    "user_event": ("kind",),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "text": (),
    "message": ("name",),
    "thought": (),
    "tool_call": ("arguments", "call_id"),
    "observation": ("call_id", "error"),
    "final_answer": (),
    "user_event": ("item", "attributes", "timestamp"),
}


# ----------------------------------------------------------------------------------------------- parsing


def parse_event(obj: Any) -> Event:
    """Validate ``obj`` into an :data:`Event`.

    Accepts an event instance (returned as is), a plain ``str`` (a :class:`TextEvent`) or a mapping with a
    ``"type"`` field (see :data:`EVENT_TYPES`) and the fields of that event. Raises :class:`EventError`.
    """
    if isinstance(obj, _EVENT_CLASSES):
        return obj
    if isinstance(obj, str):
        return TextEvent(obj)
    if not isinstance(obj, Mapping):
        raise EventError(
            f"expected an event: a dict with a 'type' field, an Event instance or a str; got {_type_name(obj)}"
        )
    known = ", ".join(EVENT_TYPES)
    if "type" not in obj:
        raise EventError(f"missing 'type' field (known types: {known})", field="type")
    kind = obj["type"]
    if not isinstance(kind, str):
        raise EventError(f"type: expected a string, got {_type_name(kind)} (known types: {known})", field="type")
    if kind not in EVENT_TYPES:
        raise EventError(f"type: unknown event type {kind!r} (known types: {known})", field="type")
    required, optional = _REQUIRED[kind], _OPTIONAL[kind]
    for key in obj:
        if not isinstance(key, str):
            raise EventError(f"{kind}: field names must be strings, got {key!r}", field=kind)
    missing = [f for f in required if f not in obj]
    if missing:
        raise EventError(
            f"{kind}: missing required field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            field=f"{kind}.{missing[0]}",
        )
    extra = [k for k in obj if k != "type" and k not in required and k not in optional]
    if extra:
        allowed = ", ".join(("type",) + required + optional)
        raise EventError(
            f"{kind}: unexpected field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} "
            f"(allowed: {allowed})",
            field=f"{kind}.{extra[0]}",
        )
    kwargs = {k: obj[k] for k in required + optional if k in obj}
    # ``null`` for a container / flag field means "absent".
    for k in ("arguments", "attributes"):
        if k in kwargs and kwargs[k] is None:
            del kwargs[k]
    if kind == "observation" and kwargs.get("error", False) is None:
        del kwargs["error"]
    return EVENT_TYPES[kind](**kwargs)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EventError(f"duplicate key {key!r} in JSON object", field=key)
        out[key] = value
    return out


def _parse_line(text: str, lineno: int) -> Event:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except EventError as exc:
        raise EventError(f"line {lineno}: {exc}", field=exc.field, line=lineno) from None
    except json.JSONDecodeError as exc:
        raise EventError(
            f"line {lineno}: invalid JSON: {exc.msg} (column {exc.colno})", line=lineno
        ) from None
    if not isinstance(obj, dict):
        raise EventError(
            f"line {lineno}: expected a JSON object with a 'type' field, got {_json_kind(obj)}", line=lineno
        )
    try:
        return parse_event(obj)
    except EventError as exc:
        raise EventError(f"line {lineno}: {exc}", field=exc.field, line=lineno) from None


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, (int, float)):
        return "a number"
    if obj is None:
        return "null"
    return _type_name(obj)


def _decode(data: bytes, *, base_offset: int = 0, lineno: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = base_offset + exc.start
        if lineno is None:
            lineno = data.count(b"\n", 0, exc.start) + 1
        raise EventError(
            f"line {lineno}: input is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {offset} "
            f"({exc.reason})",
            line=lineno,
        ) from None


def parse_jsonl(data: bytes | str | Iterable[str | bytes]) -> list[Event]:
    """Parse JSON Lines: one event dict per line (see :func:`parse_event`).

    ``data`` is the whole text (``str`` or UTF-8 ``bytes``, a leading BOM is ignored) or an iterable of lines
    (an open text file works). Blank lines are skipped. Errors name the 1-based line number (and, for invalid
    UTF-8, the byte offset).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        skip = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        lines: Iterable[str | bytes] = _decode(raw[skip:], base_offset=skip).split("\n")
    elif isinstance(data, str):
        lines = data.removeprefix("\ufeff").split("\n")
    else:
        lines = data
    events: list[Event] = []
    offset = 0
    for lineno, line in enumerate(lines, start=1):
        if isinstance(line, (bytes, bytearray)):
            line_bytes = bytes(line)
            line = _decode(line_bytes, base_offset=offset, lineno=lineno)
            offset += len(line_bytes)
        elif not isinstance(line, str):
            raise EventError(f"line {lineno}: expected a str line, got {_type_name(line)}", line=lineno)
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        events.append(_parse_line(line, lineno))
    return events


# ----------------------------------------------------------------------------------------------- rendering


def _body(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.lstrip("\n").rstrip()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _record(header: str, body: str) -> str:
    return f"[{header}] {body}\n" if body else f"[{header}]\n"


def render(event: Event | Mapping[str, Any] | str) -> str:
    """Render one event in the contract format of the module docstring (ends with ``"\\n"``).

    Anything :func:`parse_event` accepts is accepted.
    """
    event = parse_event(event)
    if isinstance(event, TextEvent):
        return _body(event.text) + "\n"
    if isinstance(event, ChatMessage):
        header = event.role if event.name is None else f"{event.role} {event.name}"
        return _record(header, _body(event.content))
    if isinstance(event, Thought):
        return _record("thought", _body(event.text))
    if isinstance(event, ToolCall):
        header = "tool_call" if event.call_id is None else f"tool_call id={event.call_id}"
        args = ", ".join(f"{k}={_json(event.arguments[k])}" for k in sorted(event.arguments))
        return _record(header, f"{event.tool}({args})")
    if isinstance(event, Observation):
        header = f"observation {event.tool}"
        if event.error:
            header += " error"
        if event.call_id is not None:
            header += f" id={event.call_id}"
        return _record(header, _body(event.content))
    if isinstance(event, FinalAnswer):
        return _record("final_answer", _body(event.text))
    if isinstance(event, UserEvent):
        header = "event" if event.timestamp is None else f"event {event.timestamp}"
        header += f" {event.kind}"
        parts = [] if event.item is None else [f"item={_json(event.item)}"]
        parts += [f"{k}={_json(event.attributes[k])}" for k in sorted(event.attributes)]
        return _record(header, " ".join(parts))
    raise EventError(f"cannot render {_type_name(event)}")  # pragma: no cover - parse_event guards this


RECORD_HEADS: tuple[str, ...] = ROLES + ("thought", "tool_call", "observation", "final_answer", "event")
"""The first word of every record header :func:`render` writes (``[user] ...``, ``[event ...] ...``)."""

_RECORD_STARTS = tuple(f"\n[{head}{end}" for head in RECORD_HEADS for end in (" ", "]"))


def cut_at_record(text: str) -> tuple[str, bool]:
    """``text`` up to the first line that starts a rendered record, and whether there was one.

    A model answering from a memory of rendered events sometimes goes on writing the stream itself (an answer,
    then ``"\n[user] ..."``, a turn nobody took). Such a line is never part of the answer. The first line is
    kept whatever it holds. Where ``text`` ends in what may still become such a line (``"\n[us"``), that
    part is held back too (the bool says False), so a caller decoding token by token never emits it early.
    """
    lead = len(text) - len(text.lstrip())  # the first line is the first one with text
    cut = len(text)
    for start in _RECORD_STARTS:
        i = text.find(start, lead)
        if i >= 0:
            cut = min(cut, i)
    if cut < len(text):
        return text[:cut], True
    last = text.rfind("\n")
    if last >= lead and any(start.startswith(text[last:]) for start in _RECORD_STARTS):
        return text[:last], False
    return text, False


def render_many(events: Iterable[Event | Mapping[str, Any] | str]) -> str:
    """Concatenate :func:`render` of each event."""
    return "".join(render(e) for e in events)


def to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready dict of ``event`` with its ``"type"`` and every field; :func:`parse_event` inverts it."""
    if not isinstance(event, _EVENT_CLASSES):
        raise EventError(f"expected an Event instance, got {_type_name(event)}")
    out: dict[str, Any] = {"type": event.TYPE}
    for name in _REQUIRED[event.TYPE] + _OPTIONAL[event.TYPE]:
        out[name] = _json_copy(getattr(event, name))
    return out
