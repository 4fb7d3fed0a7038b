"""The engine's chat API on the tiny random models: streaming equals one-shot, the state is never written,
prompts that cannot fit are refused with the numbers, messages are validated, text streams whole characters."""

from __future__ import annotations

import pytest
import torch

from comet_agents.engine import MemoryEngine, check_messages, render_chat, stream_text
from comet_agents.memory import state_digest

from tiny import tiny_chat_model, tiny_model, tiny_tokenizer

STREAM = "The grass is green and the sky is blue. I live in Lyon and my cat is called Tom. "
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Where do I live?"},
    {"role": "assistant", "content": "In Lyon."},
    {"role": "user", "content": "And the cat?"},
]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def engine(request) -> MemoryEngine:
    return MemoryEngine(tiny_chat_model(request.param))


def states(engine: MemoryEngine):
    """Fresh (first chunk, nothing pending), a pending tail only, and several chunks plus a tail."""
    yield engine.new_state()
    yield engine.absorb_text(engine.new_state(), "short tail")
    yield engine.absorb_text(engine.new_state(), STREAM * 2)


@pytest.mark.parametrize("max_new_tokens", [0, 1, 4, 5, 37])
def test_generate_stream_yields_what_generate_returns(engine: MemoryEngine, max_new_tokens: int) -> None:
    prompt = engine.encode(engine.chat_prompt(MESSAGES))
    for state in states(engine):
        digest = state_digest(state)
        whole = engine.generate(state, prompt, max_new_tokens=max_new_tokens, stop_ids=[])
        stream = engine.generate_stream(state, prompt, max_new_tokens=max_new_tokens, stop_ids=[])
        first = next(stream, None)
        assert [first] + list(stream) == whole if whole else first is None
        assert len(whole) == max_new_tokens  # no stop ids: exactly max_new_tokens
        assert state_digest(state) == digest


def test_chat_stream_joins_to_chat_and_leaves_the_state_unchanged(engine: MemoryEngine) -> None:
    for state in states(engine):
        digest, pending = state_digest(state), list(state.pending[0])
        answer = engine.chat(state, MESSAGES, max_new_tokens=40)
        pieces = list(engine.chat_stream(state, MESSAGES, max_new_tokens=40))
        assert answer and "".join(pieces) == answer and len(pieces) > 1
        assert state_digest(state) == digest and state.pending[0] == pending
        # A single user turn is exactly a recall: one prompt format for both.
        question = [{"role": "user", "content": "Where do I live?"}]
        assert engine.chat(state, question, max_new_tokens=12) == engine.recall(state, "Where do I live?",
                                                                                 max_new_tokens=12)
        assert state_digest(state) == digest


def test_chat_prompt_uses_the_chat_template_or_a_plain_fallback() -> None:
    engine = MemoryEngine(tiny_chat_model())
    assert engine.chat_prompt(MESSAGES[:2]) == "<system>Answer briefly.\n<user>Where do I live?\n<assistant>"
    assert engine.chat_prompt(MESSAGES[:2], add_generation_prompt=False).endswith("live?\n")
    plain = tiny_tokenizer()
    plain.chat_template = None
    assert render_chat(plain, MESSAGES[:2]) == "System: Answer briefly.\nUser: Where do I live?\nAssistant:"
    # Extra keys (names, tool calls) are not passed to the template.
    assert check_messages([{"role": "tool", "content": "21 C", "name": "weather"}]) == [
        {"role": "tool", "content": "21 C"}]


def test_count_tokens_and_max_context_positions(engine: MemoryEngine) -> None:
    assert engine.count_tokens("hello") == 5 == len(engine.encode("hello"))  # one token per character
    assert engine.count_tokens("") == 0
    assert engine.max_context_positions == 512  # tests/tiny.py: max_position_embeddings


@pytest.mark.parametrize("open_compression", [False, True])
def test_a_prompt_that_cannot_fit_the_positions_is_refused_with_the_numbers(engine: MemoryEngine,
                                                                            open_compression: bool) -> None:
    if open_compression:
        engine = MemoryEngine(tiny_chat_model(engine.model.inner.config.model_type, open_chunk_compression=True))
    state = engine.new_state()  # no memory slots, nothing pending: the open chunk is text (and beacons) only
    # Without open-chunk compression n text tokens need n positions: 512 fits, 513 does not. With it (s = 4)
    # they need n + (n - 1) // 4: 410 fits, 411 -> 513 does not.
    fits, beacons = (10, 102) if open_compression else (112, 0)
    prompt = engine.encode("x" * 400)
    out = engine.generate(state, prompt, max_new_tokens=fits, stop_ids=[])  # the last positions work
    assert len(out) == fits
    with pytest.raises(ValueError, match=rf"needs 513 positions \(memory slots 0 \+ pending tail 0 \+ prompt 400 "
                                         rf"\+ max_new_tokens {fits + 1} \+ compression tokens {beacons}\) but the "
                                         r"base model has 512 \(max_position_embeddings\)"):
        engine.generate_stream(state, prompt, max_new_tokens=fits + 1)  # refused at the call, before computing
    full = engine.absorb_text(engine.new_state(), STREAM * 2)
    slots = engine.config.m + int(full.fifo_len[0])
    pending = len(full.pending[0])
    with pytest.raises(ValueError, match=f"memory slots {slots} \\+ pending tail {pending} \\+ prompt"):
        engine.chat(full, [{"role": "user", "content": "y" * 600}], max_new_tokens=8)
    with pytest.raises(ValueError, match="does not fit"):
        engine.chat_stream(full, [{"role": "user", "content": "y" * 600}])


@pytest.mark.parametrize(
    "messages, error, message",
    [
        ([], ValueError, "messages is empty"),
        ([{"role": "wizard", "content": "hi"}], ValueError, "message 0: role 'wizard' is not one of system, user"),
        ([MESSAGES[0], {"content": "hi"}], ValueError, "message 1 has no 'role'"),
        ([{"role": "user"}], ValueError, "message 0 has no 'content'"),
        ([{"role": "user", "content": ["a", "b"]}], TypeError, "message 0: content must be a string"),
        (["hello"], TypeError, "message 0 must be a dict"),
        ("hello", TypeError, "messages must be a list"),
        ({"role": "user", "content": "hi"}, TypeError, "messages must be a list"),
        ([{"role": "user", "content": "say <beacon> now"}], ValueError, "reserved CoMeT token.*'<beacon>'"),
    ],
    ids=["empty", "bad-role", "no-role", "no-content", "content-not-str", "not-a-dict", "a-string", "one-dict",
         "reserved-token"],
)
def test_bad_messages_get_a_clear_error(engine: MemoryEngine, messages, error, message) -> None:
    state = engine.absorb_text(engine.new_state(), STREAM)
    digest = state_digest(state)
    with pytest.raises(error, match=message):
        engine.chat(state, messages)
    with pytest.raises(error, match=message):
        engine.chat_stream(state, messages)  # raised at the call, not on the first next()
    assert state_digest(state) == digest


def test_generate_refuses_bad_arguments() -> None:
    engine = MemoryEngine(tiny_model())
    state = engine.new_state()
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        engine.generate(state, [3, 4], max_new_tokens=-1)
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        engine.generate_stream(state, [3, engine.model.special.compression])
    with pytest.raises(ValueError, match="nothing to answer"):
        engine.generate_stream(state, [])


class ByteTokenizer:
    """Byte-level decoding as BPE tokenizers do it: one id per byte, partial UTF-8 decodes to U+FFFD."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", ["  Héllo, wörld! 日本語 🙂  ", "é", "plain", "   ", "a\n\nb \n"])
def test_stream_text_never_splits_a_character_and_joins_to_the_stripped_decode(text: str) -> None:
    ids = list(text.encode("utf-8"))
    pieces = list(stream_text(ByteTokenizer(), iter(ids)))
    assert "".join(pieces) == text.strip()
    # One piece per visible character (whitespace travels with the character after it), never a fragment.
    assert [p.strip() for p in pieces] == [c for c in text.strip() if not c.isspace()]


@pytest.mark.parametrize(("text", "answer"), [
    ("a Subaru\n[user] How do I get the package?", "a Subaru"),
    ("4711\n[observation search] nothing\n[user] hi", "4711"),
    (" \n[user] What is the code?\n[assistant] 4711", "[user] What is the code?"),  # the first line stays
    ("first\nsecond line\n[event 2026-03-01 purchase] item=\"x\"", "first\nsecond line"),
    ("see [user] notes\n[usual] brackets\n[tool_call] search()", "see [user] notes\n[usual] brackets"),
    ("a list:\n[1] one", "a list:\n[1] one"),
    ("ends in a maybe-record\n[us", "ends in a maybe-record"),  # cut short by the token limit
])
def test_answers_end_where_the_model_starts_writing_the_event_stream(text: str, answer: str) -> None:
    """A model answering from a memory of rendered events may go on writing the stream (``[user] ...``): the
    answer ends before such a line, the same whether decoded at once or streamed token by token, and the
    stream stops drawing tokens there."""
    from comet_agents.engine import answer_text
    from comet_agents.events import cut_at_record

    assert answer_text(text) == answer
    assert "".join(stream_text(ByteTokenizer(), iter(list(text.encode())))) == answer
    drawn: list[int] = []

    def tokens_drawn():
        for t in text.encode():
            drawn.append(t)
            yield t

    list(stream_text(ByteTokenizer(), tokens_drawn()))
    complete = cut_at_record(text)[1]
    assert (len(drawn) < len(text.encode())) == complete
    for cut in range(len(text) + 1):  # a prefix never yields more than the whole answer holds
        assert answer.startswith("".join(stream_text(ByteTokenizer(), iter(list(text[:cut].encode())))))


def test_recall_stops_generating_where_the_model_writes_the_stream_on(monkeypatch) -> None:
    """recall and chat draw no more tokens once the answer is followed by a rendered record line."""
    engine = MemoryEngine(tiny_chat_model())
    tok = engine.tokenizer
    ids = tok("4711\n[user] and then a long made-up turn")["input_ids"]
    drawn: list[int] = []

    def fake_stream(state, prompt_ids, *, max_new_tokens=64, stop_ids=None):
        for t in ids[:max_new_tokens]:
            drawn.append(t)
            yield t

    monkeypatch.setattr(engine, "generate_stream", fake_stream)
    assert engine.recall(engine.new_state(), "What is the code?") == "4711"
    assert len(drawn) == len(tok("4711\n[user]")["input_ids"])  # up to the end of the header
    drawn.clear()
    assert engine.chat(engine.new_state(), [{"role": "user", "content": "code?"}]) == "4711"
    assert "".join(engine.chat_stream(engine.new_state(), [{"role": "user", "content": "code?"}])) == "4711"


def test_clone_is_a_deep_copy() -> None:
    engine = MemoryEngine(tiny_model())
    state = engine.absorb(engine.new_state(), list(range(2, 40)))
    copy = state.clone()
    digest = state_digest(copy)
    assert digest == state_digest(state)
    engine.flush(state)  # writes the state's tensors in place
    engine.absorb(state, list(range(2, 30)))
    assert state_digest(copy) == digest
    assert all(not torch.equal(a, b) for a, b in ((copy.global_state, state.global_state), (copy.chunks, state.chunks)))
