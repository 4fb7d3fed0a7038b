"""Tests of comet_agents.events: validation, JSON Lines parsing, the rendering contract and dict round trips."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comet_agents import events as ev
from comet_agents.events import (
    EVENT_TYPES,
    MAX_EVENT_CHARS,
    ChatMessage,
    EventError,
    FinalAnswer,
    Observation,
    TextEvent,
    Thought,
    ToolCall,
    UserEvent,
    parse_event,
    parse_jsonl,
    render,
    render_many,
    to_dict,
)

# ----------------------------------------------------------------------------------------------- golden renderings

GOLDEN = [
    (TextEvent("The grass is green. The sky is blue."), "The grass is green. The sky is blue.\n"),
    (ChatMessage("system", "You are a helpful assistant."), "[system] You are a helpful assistant.\n"),
    (ChatMessage("user", "I'm vegetarian."), "[user] I'm vegetarian.\n"),
    (ChatMessage("assistant", "Noted!"), "[assistant] Noted!\n"),
    (ChatMessage("user", "hi", name="alice"), "[user alice] hi\n"),
    (ChatMessage("tool", "21 C, sunny", name="weather"), "[tool weather] 21 C, sunny\n"),
    (Thought("I should search for the schedule."), "[thought] I should search for the schedule.\n"),
    (
        ToolCall("search", {"query": "train times", "limit": 5}),
        '[tool_call] search(limit=5, query="train times")\n',
    ),
    (
        ToolCall("sql_query", {"sql": "SELECT 1;\nSELECT 2;", "params": [1, None, True], "opts": {"b": 1.5, "a": "x"}}),
        '[tool_call] sql_query(opts={"a": "x", "b": 1.5}, params=[1, null, true], sql="SELECT 1;\\nSELECT 2;")\n',
    ),
    (ToolCall("list_tasks"), "[tool_call] list_tasks()\n"),
    (ToolCall("search", {"query": "x"}, call_id="call_1"), '[tool_call id=call_1] search(query="x")\n'),
    (Observation("search", "3 results found"), "[observation search] 3 results found\n"),
    (Observation("search", "timeout after 30 s", error=True), "[observation search error] timeout after 30 s\n"),
    (
        Observation("search", "timeout", call_id="call_1", error=True),
        "[observation search error id=call_1] timeout\n",
    ),
    (Observation("run_shell", ""), "[observation run_shell]\n"),
    (
        Observation("read_file", "\n\ndef f():\r\n    return 1\r\n\n  "),
        "[observation read_file] def f():\n    return 1\n",
    ),
    (FinalAnswer("The 8:15 train."), "[final_answer] The 8:15 train.\n"),
    (
        UserEvent("purchase", "Blue running shoes", {"price": 59.9, "category": "shoes"}, "2026-03-01T10:22:00"),
        '[event 2026-03-01T10:22:00 purchase] item="Blue running shoes" category="shoes" price=59.9\n',
    ),
    (
        UserEvent("search", None, {"query": "trail shoes", "page": 2, "logged_in": True}),
        '[event search] logged_in=true page=2 query="trail shoes"\n',
    ),
    (UserEvent("logout", timestamp="2026-03-01T10:22:00Z"), "[event 2026-03-01T10:22:00Z logout]\n"),
    (UserEvent("view", 'The "best" mug', {}), '[event view] item="The \\"best\\" mug"\n'),
    (UserEvent("rating", "Café crème", {"stars": 5}), '[event rating] item="Café crème" stars=5\n'),
]


@pytest.mark.parametrize("event, expected", GOLDEN, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(GOLDEN)])
def test_render_golden(event, expected):
    assert render(event) == expected
    # The dict form and the instance render identically.
    assert render(to_dict(event)) == expected


def test_every_event_type_has_a_golden_rendering():
    assert {type(e) for e, _ in GOLDEN} == set(EVENT_TYPES.values())


def test_render_many_concatenates_lines():
    events = [ChatMessage("user", "Find flights."), Thought("Search first."), FinalAnswer("None found.")]
    assert render_many(events) == "[user] Find flights.\n[thought] Search first.\n[final_answer] None found.\n"
    assert render_many([]) == ""


def test_render_accepts_str_and_dict():
    assert render("hello") == "hello\n"
    assert render({"type": "thought", "text": "hmm"}) == "[thought] hmm\n"
    with pytest.raises(EventError):
        render({"type": "thought"})


def test_every_rendering_ends_with_exactly_one_newline():
    for event, _ in GOLDEN:
        out = render(event)
        assert out.endswith("\n") and not out.endswith("\n\n")


def test_format_version_is_documented():
    assert ev.RENDER_FORMAT_VERSION == 1
    assert "contract" in ev.__doc__
    for tag in ("[thought]", "[tool_call]", "[observation", "[final_answer]", "[event"):
        assert tag in ev.__doc__


# ----------------------------------------------------------------------------------------------- parse_event


def test_parse_event_passthrough_and_str():
    t = Thought("x")
    assert parse_event(t) is t
    assert parse_event("some text") == TextEvent("some text")


def test_parse_event_optional_fields_may_be_omitted_or_null():
    assert parse_event({"type": "tool_call", "tool": "now"}) == ToolCall("now", {}, None)
    assert parse_event({"type": "tool_call", "tool": "now", "arguments": None}) == ToolCall("now")
    assert parse_event({"type": "observation", "tool": "now", "content": "9:00"}) == Observation("now", "9:00")
    assert parse_event({"type": "user_event", "kind": "view"}) == UserEvent("view")
    assert parse_event({"type": "message", "role": "user", "content": "x", "name": None}) == ChatMessage("user", "x")


def test_unknown_type_lists_known_types():
    with pytest.raises(EventError) as info:
        parse_event({"type": "tool_result", "content": "x"})
    msg = str(info.value)
    assert "tool_result" in msg
    for known in EVENT_TYPES:
        assert known in msg


def test_missing_type():
    with pytest.raises(EventError, match="missing 'type' field.*known types: text, message"):
        parse_event({"text": "x"})
    with pytest.raises(EventError, match="type: expected a string, got int"):
        parse_event({"type": 3})


def test_missing_field_is_named():
    with pytest.raises(EventError, match=r"tool_call: missing required field 'tool'") as info:
        parse_event({"type": "tool_call", "arguments": {}})
    assert info.value.field == "tool_call.tool"
    with pytest.raises(EventError, match=r"message: missing required fields 'role', 'content'"):
        parse_event({"type": "message"})


def test_extra_field_is_named():
    with pytest.raises(EventError, match=r"observation: unexpected field 'status' \(allowed: type, tool, content"):
        parse_event({"type": "observation", "tool": "t", "content": "c", "status": 200})


@pytest.mark.parametrize(
    "obj, pattern",
    [
        ({"type": "text", "text": 5}, r"text\.text: expected a string, got int"),
        ({"type": "message", "role": "user", "content": None}, r"message\.content: expected a string, got null"),
        ({"type": "message", "role": "robot", "content": "x"}, r"message\.role: 'robot' is not a known role.*system"),
        ({"type": "message", "role": "user", "content": "x", "name": "a b"}, r"message\.name: 'a b' is not a valid"),
        ({"type": "tool_call", "tool": "t", "arguments": [1, 2]}, r"tool_call\.arguments: expected an object.*list"),
        ({"type": "tool_call", "tool": "my tool"}, r"tool_call\.tool: 'my tool' is not a valid tool name"),
        ({"type": "tool_call", "tool": "t", "call_id": 7}, r"tool_call\.call_id: expected a string, got int"),
        ({"type": "observation", "tool": "t", "content": "c", "error": "yes"}, r"observation\.error: expected a bool"),
        ({"type": "observation", "tool": "t", "content": "c", "error": 1}, r"observation\.error: expected a bool"),
        ({"type": "observation", "tool": "t", "content": b"c"}, r"observation\.content: expected a string, got bytes"),
        ({"type": "user_event", "kind": "add to cart"}, r"user_event\.kind: 'add to cart' is not a valid event kind"),
        ({"type": "user_event", "kind": ""}, r"user_event\.kind: must not be empty"),
        ({"type": "user_event", "kind": "view", "item": ""}, r"user_event\.item: must not be empty"),
        ({"type": "user_event", "kind": "view", "attributes": "x"}, r"user_event\.attributes: expected an object"),
        (
            {"type": "user_event", "kind": "view", "attributes": {"tags": ["a"]}},
            r"user_event\.attributes\['tags'\]: expected a string, number or boolean, got list",
        ),
        (
            {"type": "user_event", "kind": "view", "attributes": {"price": None}},
            r"user_event\.attributes\['price'\]: expected a string, number or boolean, got null",
        ),
        (
            {"type": "user_event", "kind": "view", "attributes": {"price": float("nan")}},
            r"user_event\.attributes\['price'\]: nan is not JSON-serializable",
        ),
        (
            {"type": "user_event", "kind": "view", "attributes": {"item": "x"}},
            r"user_event\.attributes\['item'\]: 'item' is reserved",
        ),
        (
            {"type": "user_event", "kind": "view", "attributes": {"bad key": 1}},
            r"user_event\.attributes\['bad key'\]: 'bad key' is not a valid attribute name",
        ),
        ({"type": "user_event", "kind": "view", "timestamp": 1700000000}, r"user_event\.timestamp: expected a str"),
        (
            {"type": "user_event", "kind": "view", "timestamp": "yesterday"},
            r"user_event\.timestamp: 'yesterday' is not an ISO 8601",
        ),
        (
            {"type": "user_event", "kind": "view", "timestamp": "2026-13-01"},
            r"user_event\.timestamp: '2026-13-01' is not a valid ISO 8601",
        ),
        ({"type": "user_event", "kind": "view", "timestamp": "2026-03-01 10:00"}, r"'T' between date and time"),
        ({"type": "user_event", "kind": "view", "timestamp": "2026-03-01T25:00"}, r"is not a valid ISO 8601"),
    ],
)
def test_wrong_types_and_values(obj, pattern):
    with pytest.raises(EventError, match=pattern):
        parse_event(obj)


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        ({"s": {1, 2}}, r"tool_call\.arguments\['s'\]: value of type set is not JSON-serializable"),
        ({"when": datetime(2026, 1, 1)}, r"tool_call\.arguments\['when'\]: value of type datetime is not JSON"),
        ({"x": float("inf")}, r"tool_call\.arguments\['x'\]: inf is not JSON-serializable"),
        ({"nested": {"deep": [1, object()]}}, r"tool_call\.arguments\['nested'\]\['deep'\]\[1\]: value of type object"),
        ({"m": {1: "a"}}, r"tool_call\.arguments\['m'\]: key 1 is not JSON-serializable"),
        ({2: "a"}, r"tool_call\.arguments: key 2 is not JSON-serializable"),
    ],
)
def test_non_json_serializable_arguments(arguments, pattern):
    with pytest.raises(EventError, match=pattern):
        ToolCall("t", arguments)
    with pytest.raises(EventError, match=pattern):
        parse_event({"type": "tool_call", "tool": "t", "arguments": arguments})


def test_cyclic_arguments_are_refused():
    cyc: list = []
    cyc.append(cyc)
    with pytest.raises(EventError, match="nested more than 64 levels"):
        ToolCall("t", {"c": cyc})


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: TextEvent(""), "text.text"),
        (lambda: TextEvent(" \n\t "), "text.text"),
        (lambda: parse_event(""), "text.text"),
        (lambda: Thought(""), "thought.text"),
        (lambda: FinalAnswer("   "), "final_answer.text"),
        (lambda: ChatMessage("user", ""), "message.content"),
        (lambda: parse_event({"type": "thought", "text": ""}), "thought.text"),
    ],
)
def test_empty_text(make, field):
    with pytest.raises(EventError, match=rf"{field}: must not be (empty|blank)") as info:
        make()
    assert info.value.field == field


def test_oversize_event_names_the_limit():
    with pytest.raises(EventError) as info:
        TextEvent("a" * (MAX_EVENT_CHARS + 1))
    msg = str(info.value)
    assert msg.startswith("text.text:")
    assert "MAX_EVENT_CHARS = 200,000 characters of rendered text" in msg
    assert info.value.field == "text.text"
    # Exactly at the limit (text + newline) is fine; the header counts toward the limit.
    TextEvent("a" * (MAX_EVENT_CHARS - 1))
    with pytest.raises(EventError, match=r"observation\.content: the event renders to 200,024 characters"):
        Observation("read_file", "a" * (MAX_EVENT_CHARS - 1))
    with pytest.raises(EventError, match=r"tool_call\.arguments: .*MAX_EVENT_CHARS"):
        ToolCall("write", {"text": "b" * MAX_EVENT_CHARS})
    with pytest.raises(EventError, match=r"user_event\.attributes: .*MAX_EVENT_CHARS"):
        parse_event({"type": "user_event", "kind": "note", "attributes": {"body": "c" * MAX_EVENT_CHARS}})


def test_lone_surrogate_is_refused():
    with pytest.raises(EventError, match=r"thought\.text: is not valid Unicode \(lone surrogate at index 2\)"):
        Thought("ab\ud800")


def test_non_event_object():
    with pytest.raises(EventError, match="expected an event: a dict with a 'type' field.*got list"):
        parse_event([1, 2])
    with pytest.raises(EventError, match="expected an Event instance"):
        to_dict({"type": "text", "text": "x"})


def test_events_are_frozen_and_copy_their_containers():
    args = {"q": ["a"]}
    call = ToolCall("search", args)
    args["q"].append("b")
    args["extra"] = 1
    assert call.arguments == {"q": ["a"]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.tool = "other"  # type: ignore[misc]
    attrs = {"price": 3}
    ue = UserEvent("view", "mug", attrs)
    attrs["price"] = 4
    assert ue.attributes == {"price": 3}
    assert ToolCall("t", {"xs": (1, 2)}).arguments == {"xs": [1, 2]}


def test_timestamps():
    assert UserEvent("v", timestamp="2026-03-01").timestamp == "2026-03-01"
    assert UserEvent("v", timestamp="2026-03-01T10:22:00.123+05:30").timestamp == "2026-03-01T10:22:00.123+05:30"
    dt = datetime(2026, 3, 1, 10, 22, tzinfo=timezone.utc)
    assert UserEvent("v", timestamp=dt).timestamp == "2026-03-01T10:22:00+00:00"


# ----------------------------------------------------------------------------------------------- parse_jsonl


def _line(event) -> str:
    return json.dumps(to_dict(event), ensure_ascii=False)


def test_parse_jsonl_inputs():
    events = [e for e, _ in GOLDEN]
    text = "\n".join(_line(e) for e in events)
    with_blanks = "\n\n" + text.replace("\n", "\n  \n", 3) + "\n\n"
    assert parse_jsonl(text) == events
    assert parse_jsonl(with_blanks) == events
    assert parse_jsonl(with_blanks.encode()) == events
    assert parse_jsonl(b"\xef\xbb\xbf" + text.encode()) == events
    assert parse_jsonl(line + "\n" for line in text.split("\n")) == events
    assert parse_jsonl([line.encode() for line in text.split("\n")]) == events
    assert parse_jsonl(text.replace("\n", "\r\n")) == events
    assert parse_jsonl("") == [] and parse_jsonl(b"") == [] and parse_jsonl([]) == []


def test_parse_jsonl_file(tmp_path):
    events = [Thought("a"), FinalAnswer("b")]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(_line(e) + "\n" for e in events), encoding="utf-8")
    with path.open(encoding="utf-8") as fh:
        assert parse_jsonl(fh) == events
    assert parse_jsonl(path.read_bytes()) == events


def test_parse_jsonl_line_numbers():
    good = _line(Thought("fine"))
    data = "\n".join([good, "", good, '{"type": "thought", "text": ""}'])
    with pytest.raises(EventError, match=r"^line 4: thought\.text: must not be empty") as info:
        parse_jsonl(data)
    assert info.value.line == 4 and info.value.field == "thought.text"
    with pytest.raises(EventError, match=r"^line 2: invalid JSON: .*\(column \d+\)") as info:
        parse_jsonl(good + "\n{not json}\n")
    assert info.value.line == 2
    with pytest.raises(EventError, match=r"^line 3: type: unknown event type 'nope'"):
        parse_jsonl([good, good, '{"type": "nope"}'])


@pytest.mark.parametrize(
    "line, kind",
    [("[1, 2]", "an array"), ('"text"', "a string"), ("3", "a number"), ("null", "null"), ("true", "a boolean")],
)
def test_parse_jsonl_non_object_line(line, kind):
    with pytest.raises(EventError, match=rf"^line 2: expected a JSON object with a 'type' field, got {kind}$"):
        parse_jsonl(_line(Thought("x")) + "\n" + line)


def test_parse_jsonl_duplicate_key():
    with pytest.raises(EventError, match=r"^line 1: duplicate key 'text'"):
        parse_jsonl('{"type": "text", "text": "a", "text": "b"}')


def test_parse_jsonl_invalid_utf8_names_byte_offset():
    first = (_line(Thought("ok")) + "\n").encode()
    bad = first + b'{"type": "text", "text": "caf\xe9"}\n'
    offset = len(first) + len(b'{"type": "text", "text": "caf')
    pattern = rf"^line 2: input is not valid UTF-8: byte 0xe9 at byte offset {offset}"
    with pytest.raises(EventError, match=pattern) as info:
        parse_jsonl(bad)
    assert info.value.line == 2
    # Offsets are of the original bytes, BOM included, and also for an iterable of byte lines.
    with pytest.raises(EventError, match=rf"byte offset {offset + 3}"):
        parse_jsonl(b"\xef\xbb\xbf" + bad)
    with pytest.raises(EventError, match=rf"^line 2: .*byte offset {offset}"):
        parse_jsonl(bad.splitlines(keepends=True))


def test_parse_jsonl_nan_is_refused():
    with pytest.raises(EventError, match=r"line 1: tool_call\.arguments\['x'\]: nan is not JSON-serializable"):
        parse_jsonl('{"type": "tool_call", "tool": "t", "arguments": {"x": NaN}}')


# ----------------------------------------------------------------------------------------------- round trips

_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
_any_text = st.text(max_size=40)
_name = st.from_regex(ev._NAME_RE, fullmatch=True)
_tool = st.from_regex(ev._TOOL_RE, fullmatch=True)
_call_id = st.none() | st.from_regex(ev._CALL_ID_RE, fullmatch=True)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _finite | _any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_attr_key = st.from_regex(ev._KEY_RE, fullmatch=True).filter(lambda k: k != "item")
_timestamp = st.none() | st.builds(
    lambda d, spec, zone: d.isoformat(timespec=spec) + zone,
    st.datetimes(min_value=datetime(1000, 1, 1)),
    st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]),
    st.sampled_from(["", "Z", "+05:30", "-08:00"]),
) | st.dates(min_value=datetime(1000, 1, 1).date()).map(lambda d: d.isoformat())

event_dicts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
    st.fixed_dictionaries(
        {"type": st.just("message"), "role": st.sampled_from(ev.ROLES), "content": _text, "name": st.none() | _name}
    ),
    st.fixed_dictionaries({"type": st.just("thought"), "text": _text}),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_call"),
            "tool": _tool,
            "arguments": st.dictionaries(st.text(max_size=8), _json, max_size=4),
            "call_id": _call_id,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("observation"),
            "tool": _tool,
            "content": _any_text,
            "call_id": _call_id,
            "error": st.booleans(),
        }
    ),
    st.fixed_dictionaries({"type": st.just("final_answer"), "text": _text}),
    st.fixed_dictionaries(
        {
            "type": st.just("user_event"),
            "kind": st.from_regex(ev._KIND_RE, fullmatch=True),
            "item": st.none() | _text,
            "attributes": st.dictionaries(_attr_key, _any_text | st.integers() | _finite | st.booleans(), max_size=4),
            "timestamp": _timestamp,
        }
    ),
)


@settings(max_examples=300, deadline=None)
@given(event_dicts)
def test_dict_event_dict_round_trip(d):
    event = parse_event(d)
    assert to_dict(event) == d
    assert parse_event(to_dict(event)) == event
    out = render(event)
    assert out.endswith("\n") and len(out) <= MAX_EVENT_CHARS


@settings(max_examples=100, deadline=None)
@given(st.lists(event_dicts, max_size=6))
def test_jsonl_round_trip(dicts):
    events = [parse_event(d) for d in dicts]
    data = "\n".join(json.dumps(to_dict(e), ensure_ascii=False) for e in events)
    assert parse_jsonl(data) == events
    assert parse_jsonl(data.encode("utf-8")) == events
    assert render_many(parse_jsonl(data)) == render_many(events)


@settings(max_examples=100, deadline=None)
@given(event_dicts)
def test_to_dict_is_json_ready(d):
    out = to_dict(parse_event(d))
    assert parse_event(json.loads(json.dumps(out, allow_nan=False))) == parse_event(d)
