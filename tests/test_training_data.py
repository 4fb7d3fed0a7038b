"""Tests of the synthetic data generators (comet_agents.training.data)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comet_agents.training.data import (
    FAMILIES,
    QA,
    Sample,
    agent_trajectory,
    approx_tokens,
    conversation,
    generate_mixed,
    grow_stream,
    make_passkey_haystack,
    passkey,
    user_behaviour,
)
from comet_agents.training.data.common import standalone_starts
from comet_agents.events import TextEvent, Thought

ROOT = Path(__file__).resolve().parents[1]
CANONICAL = "The pass key is 71432. Remember it. 71432 is the pass key."


def _gen(family: str, seed: int, target: int, **kw) -> Sample:
    return FAMILIES[family](seed, target, **kw)


# ----------------------------------------------------------------------------------------------- registry & basics


def test_families_registry():
    assert set(FAMILIES) == {"passkey", "passkey_memory", "passkey_multi", "recall_span", "user_behaviour",
                             "agent_trajectory", "conversation"}
    from comet_agents.training.data import common

    assert common.FAMILIES is FAMILIES
    for name, fn in FAMILIES.items():
        s = fn(0, 800)
        assert isinstance(s, Sample) and s.family == name
        assert s.qa and all(isinstance(q, QA) for q in s.qa)
        json.dumps(s.meta)  # JSON-ready


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_deterministic(family):
    a = _gen(family, 7, 3000)
    b = _gen(family, 7, 3000)
    assert a == b
    c = _gen(family, 8, 3000)
    assert c.stream != a.stream
    assert _gen(family, 7, 2000).stream != a.stream


def _digest(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.stream.encode())
        h.update(json.dumps([[q.question, q.answer] for q in s.qa]).encode())
    return h.hexdigest()


def test_deterministic_across_processes():
    """Nothing depends on PYTHONHASHSEED (set / dict ordering of str)."""
    code = (
        "import hashlib, json\n"
        "from comet_agents.training.data import FAMILIES, make_passkey_haystack\n"
        "h = hashlib.sha256()\n"
        "for name in sorted(FAMILIES):\n"
        "    for seed in range(3):\n"
        "        s = FAMILIES[name](seed, 1500)\n"
        "        h.update(s.stream.encode())\n"
        "        h.update(json.dumps([[q.question, q.answer] for q in s.qa]).encode())\n"
        "print(h.hexdigest())\n"
    )
    here = _digest([FAMILIES[name](seed, 1500) for name in sorted(FAMILIES) for seed in range(3)])
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("target", [1000, 4000, 16000])
def test_stream_reaches_target(family, target):
    for seed in range(4):
        s = _gen(family, seed, target)
        n = approx_tokens(s.stream)
        assert 0.9 * target <= n <= 1.1 * target, (family, target, seed, n)
        assert s.meta["tokens"] == n and s.meta["target_tokens"] == target
        assert s.stream.endswith("\n")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_custom_token_counter(family):
    words = lambda text: len(text.split())  # noqa: E731 - a counter that is far from len // 4
    s = _gen(family, 3, 2000, count_tokens=words)
    assert 0.9 * 2000 <= words(s.stream) <= 1.1 * 2000


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sixteen_k_sample_is_fast(family):
    _gen(family, 0, 1000)  # warm up imports
    t0 = time.perf_counter()
    s = _gen(family, 11, 16_000)
    elapsed = time.perf_counter() - t0
    assert approx_tokens(s.stream) >= 16_000 * 0.9
    assert elapsed < 1.0, f"{family}: {elapsed:.3f}s"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_answers_are_short(family):
    """Exact short answers, except recall_span, whose answers are quoted passages of at most 40 words."""
    for seed in range(20):
        for qa in _gen(family, seed, 1500).qa:
            assert qa.answer.strip() == qa.answer and qa.answer
            if family == "recall_span":
                assert len(qa.answer.split()) <= 40, qa
            else:
                assert len(qa.answer) <= 80 and len(qa.answer.split()) <= 10, qa
            assert qa.question.strip() and "{" not in qa.question and "}" not in qa.question


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_invalid_arguments(family):
    for bad in (0, -5, 1.5, "100", True):
        with pytest.raises(ValueError, match="target_tokens"):
            _gen(family, 0, bad)
    with pytest.raises(ValueError, match="seed"):
        _gen(family, "0", 100)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_template_variety(family):
    """Many seeds give many distinct question phrasings (the model must learn the skill, not a template)."""
    questions = set()
    for seed in range(60):
        for qa in _gen(family, seed, 1200).qa:
            questions.add(re.sub(r"\d+", "N", qa.question))
    assert len(questions) >= 10, sorted(questions)


# ----------------------------------------------------------------------------------------------- passkey


@pytest.mark.parametrize("seed", range(40))
def test_passkey_key_only_in_needle(seed):
    s = passkey.generate(seed, 1500)
    key, needle = s.meta["key"], s.meta["needle"]
    assert [q.answer for q in s.qa] == [key]
    assert re.fullmatch(r"[1-9]\d{2,8}|[A-Z0-9]{2,4}-?[A-Z0-9]{2,4}", key), key
    assert key in needle and needle in s.stream
    assert len(standalone_starts(s.stream, key)) == len(standalone_starts(needle, key)) >= 1
    assert s.stream.index(needle) == s.meta["needle_char_offset"]


def test_passkey_variety():
    samples = [passkey.generate(seed, 800) for seed in range(80)]
    assert len({s.meta["filler"] for s in samples}) >= 4
    assert len({s.meta["needle_template"] for s in samples}) >= 5
    assert len({s.qa[0].question for s in samples}) >= 8
    keys = [s.meta["key"] for s in samples]
    assert any(k.isdigit() for k in keys) and any(not k.isdigit() for k in keys)
    lengths = {len(k) for k in keys if k.isdigit()}
    assert lengths <= set(range(3, 10)) and min(lengths) <= 4 and max(lengths) >= 8  # short PINs and long ids


def test_standalone_starts_counts_standalone_keys_only():
    assert standalone_starts("964 and x964", "964") == [0]
    assert len(standalone_starts("key 964. took 19642 ms, id A964, 964", "964")) == 2
    assert len(standalone_starts("K7-Q2M9 and XK7-Q2M9", "K7-Q2M9")) == 1


@pytest.mark.parametrize("family", ["generate", "generate_in_memory", "generate_multi"])
def test_short_keys_build_in_long_streams(family):
    """Keys of 3 digits are common substrings of a log filler's numbers; every stream must still build."""
    for seed in range(60):
        s = getattr(passkey, family)(seed, 16000)
        for q in s.qa:
            assert len(standalone_starts(s.stream, q.answer)) >= 1


@pytest.mark.parametrize("filler", passkey.FILLER_STYLES)
def test_keys_the_filler_itself_produces_stand_alone_only_in_their_needles(filler):
    """A key that the filler writes on its own ("500", an HTTP status of the log filler) still builds: filler
    units holding it are skipped. On 2026-12-04 such a key ended a GPU training run ("could not build")."""
    keys = ["500", "200", "682795286"]
    needles = [f"The pass key is {k}." for k in keys]
    text = passkey._build(random.Random(3), 16000, [0.2, 0.5, 0.8], keys, needles, filler, approx_tokens)
    for k, n in zip(keys, needles):
        assert len(standalone_starts(text, k)) == 1 and n in text


@pytest.mark.parametrize("filler", passkey.FILLER_STYLES)
def test_passkey_depth_zero_and_one(filler):
    for seed in range(3):
        first = passkey.generate(seed, 2000, depth=0.0, filler=filler)
        needle = first.meta["needle"]
        prefix = "[user] " if first.meta["needle_role"] else ""
        assert first.stream.startswith(prefix + needle)
        last = passkey.generate(seed, 2000, depth=1.0, filler=filler)
        assert last.stream.endswith(last.meta["needle"] + "\n")


@pytest.mark.parametrize("filler", passkey.FILLER_STYLES)
@pytest.mark.parametrize("target", [1000, 4000, 16000])
def test_haystack_honours_depth(filler, target):
    for depth in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        h = make_passkey_haystack(target, depth, "71432", filler)
        assert 0.9 * target <= approx_tokens(h) <= 1.1 * target
        assert h.count("71432") == 2 and h.count(CANONICAL) == 1
        pos = h.index(CANONICAL)
        rel = pos / (len(h) - len(CANONICAL) - 1)
        tol = 0.06 if target == 1000 else 0.03
        assert abs(rel - depth) <= tol, (filler, target, depth, rel)
        if depth == 0.0:
            assert h.startswith(CANONICAL)
        if depth == 1.0:
            assert h.endswith(CANONICAL + "\n")


def test_haystack_classic_and_needles():
    h = make_passkey_haystack(1000, 0.5, "K7-Q2M9")
    assert passkey.CLASSIC_FILLER in h
    assert "The pass key is K7-Q2M9. Remember it. K7-Q2M9 is the pass key." in h
    assert make_passkey_haystack(1000, 0.5, "K7-Q2M9") == h  # deterministic
    assert make_passkey_haystack(1000, 0.5, "K7-Q2M9", "prose", seed=1) != make_passkey_haystack(
        1000, 0.5, "K7-Q2M9", "prose", seed=2
    )
    custom = make_passkey_haystack(500, 1.0, "55555", needle="Secret: {key}.")
    assert custom.endswith("Secret: 55555.\n")
    tiny = make_passkey_haystack(5, 0.5, "12345")
    assert CANONICAL.replace("71432", "12345") in tiny


def test_haystack_validation():
    with pytest.raises(ValueError, match="depth"):
        make_passkey_haystack(1000, 1.5, "12345")
    with pytest.raises(ValueError, match="depth"):
        make_passkey_haystack(1000, float("nan"), "12345")
    with pytest.raises(ValueError, match="key"):
        make_passkey_haystack(1000, 0.5, "")
    with pytest.raises(ValueError, match="unknown filler style 'poems'"):
        make_passkey_haystack(1000, 0.5, "12345", "poems")
    with pytest.raises(ValueError, match="target_tokens"):
        make_passkey_haystack(0, 0.5, "12345")
    with pytest.raises(ValueError, match="does not contain the key"):
        make_passkey_haystack(100, 0.5, "12345", needle="no key here")


def test_haystack_real_tokenizer_like_counter():
    """A counter that is not additive over pieces (a BOS token per call) still reaches the target."""
    bos = lambda text: len(text.split()) + 1  # noqa: E731
    h = make_passkey_haystack(3000, 0.3, "64321", "prose", count_tokens=bos)
    assert 3000 <= bos(h) <= 3300


# ----------------------------------------------------------------------------------------------- user behaviour

_EVENT_LINE = re.compile(r"^\[event (\S+) (\w+)\](?: (.*))?$", re.M)


def _events(stream: str) -> list[tuple[str, str, str | None, str]]:
    """(timestamp, kind, item, rest) of every rendered user event, parsed back from the stream."""
    out = []
    for ts, kind, rest in _EVENT_LINE.findall(stream):
        m = re.match(r'item=("(?:[^"\\]|\\.)*")', rest)
        out.append((ts, kind, json.loads(m.group(1)) if m else None, rest))
    return out


def _quoted(question: str) -> str:
    m = re.search(r'"([^"]+)"', question)
    assert m, question
    return m.group(1)


def _item_in(question: str, items: set[str]) -> str:
    found = [i for i in items if i in question]
    assert found, question
    return max(found, key=len)


@pytest.mark.parametrize("seed", range(30))
def test_user_behaviour_answers_are_computable(seed):
    s = user_behaviour.generate(seed, 3000)
    events = _events(s.stream)
    assert events
    stamps = [ts for ts, *_ in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # strictly increasing
    kinds = s.meta["qa_kinds"]
    assert len(s.qa) == len(kinds) and len(s.qa) >= 3
    items = {i for _, _, i, _ in events if i}
    for qa, kind in zip(s.qa, kinds):
        purchases = [i for _, k, i, _ in events if k == "purchase"]
        if kind.startswith("preference:"):
            line = next(line for line in s.stream.splitlines() if line.startswith("[user]") and qa.answer in line)
            assert s.stream.index(line) < 0.3 * len(s.stream)
        elif kind == "last_purchase":
            assert qa.answer == purchases[-1]
        elif kind == "first_purchase":
            assert qa.answer == purchases[0]
        elif kind == "purchase_count":
            assert qa.answer == str(len(purchases))
        elif kind == "search_count":
            q = _quoted(qa.question)
            prefix = f"query={json.dumps(q)} "
            assert qa.answer == str(sum(1 for _, k, _, rest in events if k == "search" and rest.startswith(prefix)))
        elif kind == "first_search":
            first = next(rest for _, k, _, rest in events if k == "search")
            assert first.startswith(f"query={json.dumps(qa.answer)} ")
        elif kind == "first_view_time":
            x = _item_in(qa.question, items)
            assert qa.answer == next(ts for ts, k, i, _ in events if k == "view" and i == x)
        elif kind == "view_count":
            x = _item_in(qa.question, items)
            assert qa.answer == str(sum(1 for _, k, i, _ in events if k == "view" and i == x))
        elif kind == "cart_count":
            assert qa.answer == str(sum(1 for _, k, _, _ in events if k == "add_to_cart"))
        elif kind == "brand_stars":
            n = re.search(r"(\d)", qa.question).group(1)
            brands = {re.search(r'brand="([^"]+)"', rest).group(1) for _, k, _, rest in events
                      if k == "rating" and f"stars={n}" in rest}
            assert brands == {qa.answer}
        else:  # item_stars, item_price, return_reason, returned_item, most_viewed_category
            assert qa.answer in s.stream, (kind, qa)


def test_user_behaviour_preference_variety():
    slots = {p["slot"] for seed in range(60) for p in user_behaviour.generate(seed, 1000).meta["preferences"]}
    assert len(slots) >= 6
    kinds = {k for seed in range(60) for k in user_behaviour.generate(seed, 2000).meta["qa_kinds"]}
    assert {"last_purchase", "search_count", "first_view_time", "brand_stars"} <= kinds


def test_filler_iterators_are_deterministic():
    import random
    from itertools import islice

    a = list(islice(user_behaviour.iter_filler_events(random.Random(1)), 50))
    b = list(islice(user_behaviour.iter_filler_events(random.Random(1)), 50))
    assert a == b
    c = list(islice(agent_trajectory.iter_filler_events(random.Random(2)), 30))
    assert not any(getattr(e, "error", False) for e in c)
    assert not any(getattr(e, "tool", None) == "edit_file" for e in c)
    d = list(islice(conversation.iter_chitchat(random.Random(3)), 20))
    assert [e.role for e in d] == ["user", "assistant"] * 10


# ----------------------------------------------------------------------------------------------- agent trajectories


@pytest.mark.parametrize("seed", range(30))
def test_agent_trajectory_answers_are_computable(seed):
    s = agent_trajectory.generate(seed, 3000)
    lines = s.stream.splitlines()
    calls = re.findall(r"^\[tool_call(?: id=\S+)?\] (\w+)\((.*)\)$", s.stream, re.M)
    assert calls and all(tool in agent_trajectory.TOOLS for tool, _ in calls)
    assert lines[-1].startswith("[final_answer] ")
    kinds = s.meta["qa_kinds"]
    assert len(s.qa) == len(kinds) and len(s.qa) >= 3
    for qa, kind in zip(s.qa, kinds):
        if kind == "final":
            assert lines[-1] == f"[final_answer] {qa.answer}"
        elif kind == "error_tool":
            errors = re.findall(r"^\[observation (\w+) error", s.stream, re.M)
            assert errors == [qa.answer]
        elif kind in ("edit_only", "edit_first", "edit_last"):
            edited = [
                json.loads(re.search(r'path=("[^"]*")', args).group(1)) for tool, args in calls if tool == "edit_file"
            ]
            expected = {"edit_only": edited[0], "edit_first": edited[0], "edit_last": edited[-1]}[kind]
            assert qa.answer == expected
            if kind == "edit_only":
                assert set(edited) == {qa.answer}
        elif kind == "tool_count":
            tool = next(t for t in agent_trajectory.TOOLS if t in qa.question)
            assert qa.answer == str(sum(1 for t, _ in calls if t == tool))
        elif kind == "first_tool":
            assert qa.answer == calls[0][0]
        elif kind == "sql_count":
            m = re.search(r"count of the (\w+) table|count of (\w+)\?|How many (\w+)", qa.question)
            table = next(g for g in m.groups() if g)
            query = re.compile(rf"count\(\*\)(?: AS count)? from {table};", re.I)
            idx = next(i for i, line in enumerate(lines) if query.search(line))
            assert lines[idx + 3].strip() == qa.answer  # [observation] count / ---- / value
        else:
            assert qa.answer in s.stream, (kind, qa)


def test_agent_trajectory_variety():
    kinds: set[str] = set()
    tools: set[str] = set()
    for seed in range(40):
        s = agent_trajectory.generate(seed, 2500)
        kinds |= set(s.meta["qa_kinds"])
        tools |= set(re.findall(r"^\[tool_call(?: id=\S+)?\] (\w+)\(", s.stream, re.M))
    assert set(agent_trajectory.TOOLS) <= tools
    assert {"final", "sql_count", "error_tool", "edit_only", "config", "version", "api_version"} <= kinds


# ----------------------------------------------------------------------------------------------- conversation


@pytest.mark.parametrize("seed", range(30))
def test_conversation_facts_are_stated_early(seed):
    s = conversation.generate(seed, 4000)
    user_lines = [(m.start(), m.group(0)) for m in re.finditer(r"^\[user\] .*$", s.stream, re.M)]
    assert len(s.qa) >= 3
    for qa, kind in zip(s.qa, s.meta["qa_kinds"]):
        stated = [pos for pos, line in user_lines if qa.answer in line]
        assert stated, (kind, qa)
        if kind.endswith("_updated"):
            slot = kind.removesuffix("_updated")
            old = next(f["value"] for f in s.meta["facts"] if f["slot"] == slot and not f["update"])
            old_pos = min(pos for pos, line in user_lines if old in line)
            assert min(stated) > old_pos
        else:
            assert min(stated) < 0.3 * len(s.stream), (kind, qa)


def test_conversation_updates_are_asked():
    kinds = {k for seed in range(80) for k in conversation.generate(seed, 2000).meta["qa_kinds"]}
    assert any(k.endswith("_updated") for k in kinds)
    assert len(kinds) >= 12


def test_conversation_roles():
    s = conversation.generate(5, 2000)
    assert all(re.match(r"^\[(user|assistant|system)\] ", line) for line in s.stream.splitlines())


# ----------------------------------------------------------------------------------------------- mixing & growth


def test_generate_mixed():
    weights = {"passkey": 1.0, "conversation": 3.0, "agent_trajectory": 0.0}
    samples = [generate_mixed(seed, 800, weights) for seed in range(60)]
    families = [s.family for s in samples]
    assert set(families) == {"passkey", "conversation"}
    assert families.count("conversation") > families.count("passkey")
    assert generate_mixed(5, 800, weights) == generate_mixed(5, 800, weights)
    assert all(s.meta["mixed_seed"] == i for i, s in enumerate(samples))
    only = generate_mixed(1, 900, {"user_behaviour": 2})
    assert only.family == "user_behaviour" and 810 <= approx_tokens(only.stream) <= 990
    words = lambda t: len(t.split())  # noqa: E731
    assert 0.9 * 900 <= words(generate_mixed(2, 900, {"conversation": 1}, words).stream) <= 1.1 * 900


@pytest.mark.parametrize(
    "weights, pattern",
    [({}, "at least one"), ({"poems": 1}, "unknown families"), ({"passkey": 0}, "all be zero"),
     ({"passkey": -1}, ">= 0"), ({"passkey": float("nan")}, ">= 0")],
)
def test_generate_mixed_validation(weights, pattern):
    with pytest.raises(ValueError, match=pattern):
        generate_mixed(0, 100, weights)


def test_grow_stream():
    pieces = iter(range(10_000))
    text = grow_stream(lambda remaining: TextEvent(f"piece {next(pieces)} " * 3), 500)
    assert 500 <= approx_tokens(text) <= 520
    # head / tail are kept; pieces may be events, lists of events or strings
    text = grow_stream(lambda r: [Thought("x" * 40)], 100, head=["HEAD\n"], tail=[TextEvent("TAIL")])
    assert text.startswith("HEAD\n[thought] ") and text.endswith("TAIL\n") and approx_tokens(text) >= 100
    # a source that runs dry stops early
    src = iter(["a" * 40, "b" * 40])
    assert grow_stream(lambda r: next(src, None), 1000) == "a" * 40 + "b" * 40
    # a non-additive counter (one extra token per call) still reaches the target with the real count
    bos = lambda t: len(t) // 4 + 1  # noqa: E731
    text = grow_stream(lambda r: "y" * 20, 300, bos)
    assert bos(text) >= 300
    with pytest.raises(ValueError):
        grow_stream(lambda r: "z", 0)


# ---- recall_span and passkey_memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_recall_span_answer_is_the_text_right_after_a_unique_cue(seed: int) -> None:
    from comet_agents.training.data import recall_span

    s = recall_span.generate(seed, 1200)
    assert s == recall_span.generate(seed, 1200)
    cue, answer = s.meta["cue"], s.qa[0].answer
    assert s.stream.count(cue) == 1 and cue in s.qa[0].question
    after = s.stream[s.stream.index(cue) + len(cue):]
    assert after.lstrip().startswith(answer)
    assert 8 <= len(answer.split()) <= 40
    assert s.meta["depth"] <= 0.62


@pytest.mark.parametrize("style", ["prose", "logs", "user_events", "agent_steps", "chat"])
def test_recall_span_works_on_short_streams(style: str) -> None:
    """Training asks for streams from about a chunk long: every style must yield a sample from ~60 tokens on."""
    from comet_agents.training.data import recall_span

    for seed in range(40):
        target = 60 + (seed * 37) % 200
        s = recall_span.generate(seed, target, style=style)
        answer = s.qa[0].answer
        assert s.stream.count(s.meta["cue"]) == 1 and 4 <= len(answer.split()) <= 40


def test_passkey_memory_keeps_the_key_in_the_first_part_of_the_stream() -> None:
    from comet_agents.training.data import passkey

    for seed in range(10):
        s = passkey.generate_in_memory(seed, 3000)
        assert s.meta["depth"] <= 0.55
        assert s.stream.index(s.meta["key"]) < 0.62 * len(s.stream)


@pytest.mark.parametrize("seed", range(16))
def test_passkey_multi_asks_each_labelled_key_once(seed: int) -> None:
    s = FAMILIES["passkey_multi"](seed, 2000)
    keys, labels = s.meta["keys"], s.meta["labels"]
    assert 2 <= len(keys) <= 4 and len(set(labels)) == len(labels) == len(keys)
    assert all(a == b or (a not in b and b not in a) for a in keys for b in keys)
    asked = {}
    for qa in s.qa:
        named = [lab for lab in labels if lab in qa.question]
        assert len(named) == 1, qa.question
        asked[named[0]] = qa.answer
    assert asked == dict(zip(labels, keys))
    offsets = s.meta["needle_char_offsets"]
    in_memory = offsets[:-1] if s.meta["local_key"] else offsets
    assert offsets == sorted(offsets) and in_memory[-1] < 0.7 * len(s.stream)
    if s.meta["local_key"]:
        assert s.stream.rstrip().endswith(s.stream[offsets[-1]:].rstrip())
        assert offsets[-1] > 0.9 * len(s.stream)
    for key, lab, off in zip(keys, labels, offsets):
        needle_end = s.stream.index("\n", off)
        in_needle = len(standalone_starts(s.stream[off:needle_end], key))
        assert len(standalone_starts(s.stream, key)) == in_needle >= 1
        assert lab in s.stream[off:needle_end]


def test_long_passkey_multi_streams_hold_more_keys_and_keys_near_their_end() -> None:
    """A 16k-token stream holds 4-8 labelled keys (2-4 in a 2k one), and its keys in memory reach past 60 % of
    the stream but stay out of its last 1,500 tokens, which training's open chunk may hold."""
    from comet_agents.training.data.passkey import MULTI_TAIL_MARGIN, multi_key_range, multi_max_depth

    assert multi_key_range(2000) == (2, 4) and multi_key_range(8000) == (2, 4) and multi_key_range(16000) == (4, 8)
    assert multi_max_depth(2000) == 0.6 and 0.9 < multi_max_depth(16000) < 0.91
    deepest = []
    for seed in range(6):
        s = FAMILIES["passkey_multi"](seed, 16000)
        assert 4 <= len(s.meta["keys"]) <= 8 and len(s.qa) == len(s.meta["keys"])
        offsets = s.meta["needle_char_offsets"]
        in_memory = offsets[:-1] if s.meta["local_key"] else offsets
        chars_per_token = len(s.stream) / s.meta["tokens"]
        assert in_memory[-1] < len(s.stream) - 0.8 * MULTI_TAIL_MARGIN * chars_per_token
        deepest.append(in_memory[-1] / len(s.stream))
    assert max(deepest) > 0.65, deepest

