"""The LlamaIndex integration with real LlamaIndex engines, agents and Memory, on the tiny random models.

Every test runs offline: sockets other than Unix ones raise, and tiktoken raises if reached (token accounting
must use our tokenizer).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings  # noqa: E402
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock  # noqa: E402
from llama_index.core.chat_engine import CondensePlusContextChatEngine, SimpleChatEngine  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.llms.mock import MockFunctionCallingLLM  # noqa: E402
from llama_index.core.memory import Memory  # noqa: E402
from llama_index.core.storage.chat_store.base_db import MessageStatus  # noqa: E402
from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index_comet import (  # noqa: E402
    DEFAULT_MEMORY_PROMPT,
    ComeTChatMemory,
    ComeTLLM,
    ComeTMemoryBlock,
    comet_tokenizer,
    safe_context_window,
)

from comet_agents import ComeTMemory  # noqa: E402
from comet_agents.memory import state_digest  # noqa: E402

from llamaindex_helpers import RecordingLLM, offline, text_of  # noqa: E402
from tiny import tiny_chat_model  # noqa: E402

FACT = "My pass key is 71432."
RECALL_TOKENS = 8


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    offline(monkeypatch)


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'comet.db'}"


def chat_memory(url: str, model, session: str = "alice", **kw) -> ComeTChatMemory:
    kw.setdefault("window_tokens", 120)
    kw.setdefault("recall_max_new_tokens", RECALL_TOKENS)
    return ComeTChatMemory.from_defaults(session, store=url, model=model, **kw)


def recall_probe(cm: ComeTChatMemory, query=None):
    """What the memory recalls at call time for the newest user message (or ``query``)."""

    def probe(messages):
        q = query() if query else next(m.content for m in reversed(cm.get_all()) if m.role == MessageRole.USER)
        return cm.memory.recall(q, max_new_tokens=RECALL_TOKENS)

    return probe


def turn(i: int) -> str:
    return FACT if i == 0 else f"Turn {i}: the weather is fine today."


# ---- SimpleChatEngine ------------------------------------------------------------------------------------------


def test_simple_chat_engine_34_turns_turn_one_reaches_the_prompt_through_memory(url, model) -> None:
    cm = chat_memory(url, model)
    llm = RecordingLLM(reply="Noted.")
    llm.probe = recall_probe(cm)
    engine = SimpleChatEngine.from_defaults(memory=cm, llm=llm, system_prompt="Be brief.")
    for i in range(34):
        assert engine.chat(turn(i)).response == "Noted."
    sent, expected_recall = llm.calls[-1]
    # Turn 1 left the verbatim window long ago ...
    assert FACT not in text_of(sent[2:])
    assert sent[0].content == "Be brief." and sent[-1].content == turn(33)
    # ... but is in memory, and the prompt's memory message is exactly what memory recalls.
    assert sent[1].role == MessageRole.SYSTEM
    assert sent[1].content == DEFAULT_MEMORY_PROMPT.format(recall=expected_recall)
    history = cm.get_all()
    assert len(history) == 68 and history[0].content == FACT
    assert cm.memory.events()[0].payload == {"type": "message", "role": "user", "content": FACT, "name": None} \
        or cm.memory.events()[0].payload["content"] == FACT
    # The window is cut by our tokenizer at a user turn, within the budget.
    window = sent[2:]
    assert window[0].role == MessageRole.USER
    tokens = sum(len(model.tokenizer(f"[{m.role.value}] {m.content}\n")["input_ids"]) for m in window)
    assert tokens <= cm.window_tokens
    # Early turns (all inside the window) have no memory message: nothing lies before the window.
    first, _ = llm.calls[0]
    assert [m.role for m in first] == [MessageRole.SYSTEM, MessageRole.USER] and first[0].content == "Be brief."


def test_turn_one_changes_the_memory_state_but_not_the_window(url, model) -> None:
    digests, windows = [], []
    for session, fact in (("a", FACT), ("b", "My pass key is 99018.")):
        cm = chat_memory(url, model, session)
        engine = SimpleChatEngine.from_defaults(memory=cm, llm=MockLLM(max_tokens=2))
        for i in range(12):
            engine.chat(fact if i == 0 else turn(i))
        digests.append(state_digest(cm.memory.state))
        windows.append([(m.role, m.content) for m in cm.window()])
    assert windows[0] == windows[1] and digests[0] != digests[1]


def test_async_engine_sends_what_the_sync_engine_sends(url, model) -> None:
    sent = {}
    for session in ("sync", "async"):
        cm = chat_memory(url, model, session)
        llm = RecordingLLM(reply="Fine.")
        engine = SimpleChatEngine.from_defaults(memory=cm, llm=llm)
        if session == "sync":
            for i in range(10):
                engine.chat(turn(i))
        else:
            async def run():
                for i in range(10):
                    await engine.achat(turn(i))

            asyncio.run(run())
        sent[session] = [[(m.role, m.content) for m in msgs] for msgs, _ in llm.calls]
    assert sent["sync"] == sent["async"]
    assert any(msgs[0][0] == MessageRole.SYSTEM for msgs in sent["async"])  # recall reached the async prompts


def test_stream_chat_absorbs_the_streamed_answer(url, model) -> None:
    cm = chat_memory(url, model)
    engine = SimpleChatEngine.from_defaults(memory=cm, llm=MockLLM(max_tokens=3))
    response = engine.stream_chat("Hello there.")
    assert "".join(response.response_gen) == "text text text"
    assert [m.content for m in cm.get_all()] == ["Hello there.", "text text text"]


# ---- window, set, reset -----------------------------------------------------------------------------------------


def test_window_starts_at_a_user_turn_and_keeps_the_newest_one(url, model) -> None:
    cm = chat_memory(url, model, window_tokens=45)
    cm.put_messages([ChatMessage(role="user", content="a" * 30), ChatMessage(role="assistant", content="b" * 5),
                     ChatMessage(role="user", content="c" * 10), ChatMessage(role="assistant", content="d" * 10)])
    # Rendered with the tiny character tokenizer: "[user] aaa...\n" = 38 tokens, then 18, 18 and 23 tokens.
    # From "c" on: 41 <= 45 fits; from "a": 97 does not (and "b" is no user turn).
    assert [m.content[0] for m in cm.window()] == ["c", "d"]
    cm.put(ChatMessage(role="user", content="e" * 200))  # longer than the budget alone: still kept
    assert [m.content[0] for m in cm.window()] == ["e"]
    assert cm.window(initial_token_count=10_000)[0].content[0] == "e"


def test_set_keeps_the_common_prefix_and_reset_forgets_chat_events_only(url, model) -> None:
    cm = chat_memory(url, model)
    cm.memory.absorb("A document about Lyon.")
    msgs = [ChatMessage(role="user", content=f"m{i}") for i in range(4)]
    cm.set(msgs)
    ids = [r.id for r in cm.memory.events()]
    cm.set(msgs[:2] + [ChatMessage(role="user", content="new")])
    after = cm.memory.events()
    assert [r.id for r in after][:3] == ids[:3]  # document + m0 + m1 untouched
    assert [m.content for m in cm.get_all()] == ["m0", "m1", "new"]
    cm.reset()
    assert cm.get_all() == [] and [r.text for r in cm.memory.events()] == ["A document about Lyon.\n"]


def test_a_second_reader_sees_what_the_first_wrote(url, model) -> None:
    a = chat_memory(url, model)
    b = ComeTChatMemory(memory=ComeTMemory("alice", store=url, model=model), window_tokens=120)
    a.put(ChatMessage(role="user", content="Hello from a."))
    assert [m.content for m in b.get_all()] == ["Hello from a."]
    b.put(ChatMessage(role="assistant", content="Hello from b."))
    assert [m.content for m in a.get_all()] == ["Hello from a.", "Hello from b."]


# ---- CondensePlusContextChatEngine -------------------------------------------------------------------------------


class FixedRetriever(BaseRetriever):
    def _retrieve(self, query_bundle):
        return [NodeWithScore(node=TextNode(text="Lyon is in France."), score=1.0)]


def test_condense_plus_context_recalls_for_the_new_message(url, model, monkeypatch) -> None:
    cm = chat_memory(url, model, window_tokens=60)
    monkeypatch.setattr(Settings, "_tokenizer", None)
    Settings.tokenizer = comet_tokenizer(cm)  # the engine's TokenCounter would otherwise load tiktoken
    message = {"text": ""}
    llm = RecordingLLM(reply="Sure.")
    llm.probe = recall_probe(cm, query=lambda: message["text"])
    engine = CondensePlusContextChatEngine.from_defaults(FixedRetriever(), llm=llm, memory=cm)
    for i in range(8):
        message["text"] = turn(i)
        assert str(engine.chat(turn(i))) == "Sure."
    sent, expected = llm.calls[-1]
    assert DEFAULT_MEMORY_PROMPT.format(recall=expected) in text_of(sent)
    assert "Lyon is in France." in text_of(sent) and FACT not in text_of(sent)
    assert len(cm.get_all()) == 16


# ---- agents ------------------------------------------------------------------------------------------------------


def lookup(city: str) -> str:
    """Population of a city."""
    return f"{city}: 522000"


def tool_caller(record: list):
    """A function-calling fake: calls ``lookup`` once per user turn, then answers."""
    counter = {"n": 0}

    def respond(messages, **kwargs):
        record.append(list(messages))
        last_user = max(i for i, m in enumerate(messages) if m.role == MessageRole.USER)
        if any(m.role == MessageRole.TOOL for m in messages[last_user:]):
            return ChatMessage(role="assistant", content="It has 522000 people.")
        counter["n"] += 1
        return ChatMessage(role="assistant", blocks=[
            ToolCallBlock(tool_call_id=f"call-{counter['n']}", tool_name="lookup", tool_kwargs={"city": "Lyon"})])

    return respond


def test_function_agent_keeps_tool_calls_paired_by_id(url, model) -> None:
    cm = chat_memory(url, model, window_tokens=90)
    record: list = []
    llm = MockFunctionCallingLLM(response_generator=tool_caller(record))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=lookup)], llm=llm, system_prompt="Use tools.")

    async def run():
        for i in range(5):
            out = await agent.run(user_msg=f"How many people live in Lyon? ({i})", memory=cm)
            assert "522000" in str(out)

    asyncio.run(run())
    for messages in record:  # every tool result the LLM sees follows the call with its id
        called = set()
        for m in messages:
            called |= {b.tool_call_id for b in m.blocks if isinstance(b, ToolCallBlock)}
            if m.role == MessageRole.TOOL:
                assert m.additional_kwargs["tool_call_id"] in called
    kinds = [(r.kind, r.payload.get("call_id")) for r in cm.memory.events()]
    assert ("tool_call", "call-1") in kinds and ("observation", "call-1") in kinds
    # The history rebuilt from the log (another process, a restart) has the same pairs.
    again = ComeTChatMemory(memory=ComeTMemory("alice", store=url, model=model))
    tool_msgs = [m for m in again.get_all() if m.role == MessageRole.TOOL]
    assert [m.additional_kwargs["tool_call_id"] for m in tool_msgs] == [f"call-{i}" for i in range(1, 6)]
    assert all(m.additional_kwargs["name"] == "lookup" for m in tool_msgs)


REACT_REPLY = "Thought: I can answer without tools.\nAnswer: Fine."


@pytest.mark.parametrize("insert_method, system_prompt, sees_memory", [
    ("system", None, False),   # 0.14 quirk: ReActAgent drops a leading system message when it has no system_prompt
    ("user", None, True),
    ("system", "You are helpful.", True),
])
def test_react_agent(url, model, insert_method, system_prompt, sees_memory) -> None:
    cm = chat_memory(url, model, window_tokens=60, insert_method=insert_method)
    llm = RecordingLLM(reply=REACT_REPLY)
    llm.probe = recall_probe(cm)
    agent = ReActAgent(tools=[FunctionTool.from_defaults(fn=lookup)], llm=llm, system_prompt=system_prompt)

    async def run():
        for i in range(6):
            assert "Fine." in str(await agent.run(user_msg=turn(i), memory=cm))

    asyncio.run(run())
    sent, expected = llm.calls[-1]
    assert (DEFAULT_MEMORY_PROMPT.format(recall=expected) in text_of(sent)) == sees_memory
    assert FACT not in text_of(sent)


# ---- LlamaIndex Memory with a ComeT block --------------------------------------------------------------------------


@pytest.mark.parametrize("by_session", [False, True])
def test_memory_block_absorbs_what_memory_flushes(url, model, by_session) -> None:
    mem = ComeTMemory("alice", store=url, model=model)
    block = (ComeTMemoryBlock(memory_for=lambda sid: mem if sid == "alice" else None, recall_max_new_tokens=8)
             if by_session else ComeTMemoryBlock(memory=mem, recall_max_new_tokens=8))
    memory = Memory.from_defaults(session_id="alice", token_limit=200, chat_history_token_ratio=0.5,
                                  token_flush_size=40, tokenizer_fn=comet_tokenizer(mem), memory_blocks=[block])
    for i in range(10):
        memory.put(ChatMessage(role="user", content=turn(i)))
        memory.put(ChatMessage(role="assistant", content="Noted."))
    absorbed = [r.payload["content"] for r in mem.events()]
    assert absorbed[0] == FACT and len(absorbed) < 20  # the oldest turns were flushed into CoMeT memory
    active = [m.content for m in memory.get_all(status=MessageStatus.ACTIVE)]
    assert FACT not in active and active[-1] == "Noted."
    got = memory.get(input="What is my pass key?")
    expected = mem.recall("What is my pass key?", max_new_tokens=8)
    assert got[0].role == MessageRole.SYSTEM
    assert f"<comet_memory>{expected}</comet_memory>" in got[0].content.replace("\n", "")


# ---- ComeTLLM --------------------------------------------------------------------------------------------------------


def test_comet_llm_complete_stream_chat_and_async_agree(url, model) -> None:
    mem = ComeTMemory("alice", store=url, model=model)
    mem.absorb([{"type": "message", "role": "user", "content": FACT}])
    llm = ComeTLLM(memory=mem, max_new_tokens=12)
    text = llm.complete("What is my pass key?").text
    assert text and text == mem.chat([{"role": "user", "content": "What is my pass key?"}], max_new_tokens=12)
    stream = list(llm.stream_complete("What is my pass key?"))
    assert "".join(r.delta for r in stream) == text and stream[-1].text == text
    msgs = [ChatMessage(role="system", content="Answer briefly."), ChatMessage(role="user", content="Pass key?")]
    reply = llm.chat(msgs).message
    assert reply.role == MessageRole.ASSISTANT
    assert reply.content == mem.chat([{"role": "system", "content": "Answer briefly."},
                                      {"role": "user", "content": "Pass key?"}], max_new_tokens=12)
    assert "".join(r.delta for r in llm.stream_chat(msgs)) == reply.content

    async def run():
        a = (await llm.acomplete("What is my pass key?")).text
        b = (await llm.achat(msgs)).message.content
        c = [r.delta async for r in await llm.astream_complete("What is my pass key?")]
        d = [r.delta async for r in await llm.astream_chat(msgs)]
        return a, b, "".join(c), "".join(d)

    assert asyncio.run(run()) == (text, reply.content, text, reply.content)


def test_comet_llm_metadata_and_a_worst_case_prompt_fits(url, model) -> None:
    mem = ComeTMemory("alice", store=url, model=model)
    cfg = mem.model.config
    meta = ComeTLLM(memory=mem, max_new_tokens=10).metadata
    # P=512, m=3, fifo=5, C=12, no compression tokens in the open chunk: 512 - 8 - 11
    assert meta.context_window == safe_context_window(mem) == 493
    assert meta.num_output == 10 and meta.is_chat_model and not meta.is_function_calling_model
    assert ComeTLLM(memory=mem, context_window=100).metadata.context_window == 100
    # Worst case: global memory and a full FIFO, a pending tail of C - 1 tokens.
    engine = mem.engine
    state = engine.new_state()
    while not (bool(state.has_global[0]) and int(state.fifo_len[0]) == cfg.fifo):
        engine.absorb(state, [5] * cfg.chunk_size)
    engine.absorb(state, [5] * (cfg.chunk_size - 1))
    window, out = meta.context_window, 10
    engine.check_fits(state, cfg.chunk_size - 1 + window - out, out)
    with pytest.raises(ValueError, match="does not fit"):
        engine.check_fits(state, cfg.chunk_size - 1 + window + 8, out)


def test_comet_llm_in_a_chat_engine_with_the_chat_memory(url, model) -> None:
    cm = chat_memory(url, model)
    llm = ComeTLLM(memory=cm.memory, max_new_tokens=6)
    engine = SimpleChatEngine.from_defaults(memory=cm, llm=llm)
    answers = [engine.chat(turn(i)).response for i in range(3)]
    history = cm.get_all()
    assert [m.content for m in history[::2]] == [turn(i) for i in range(3)]
    assert [m.content for m in history[1::2]] == answers


# ---- persistence across a process restart ---------------------------------------------------------------------------

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from tiny import tiny_chat_model
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index_comet import ComeTChatMemory
cm = ComeTChatMemory.from_defaults("alice", store=sys.argv[2], model=tiny_chat_model(), window_tokens=120,
                                   recall_max_new_tokens=8)
engine = SimpleChatEngine.from_defaults(memory=cm, llm=MockLLM(max_tokens=2))
for i in range(12):
    engine.chat("My pass key is 71432." if i == 0 else f"Turn {i}: the weather is fine today.")
from comet_agents.memory import state_digest
print(json.dumps({"history": [[m.role.value, m.content] for m in cm.get_all()],
                  "get": [[m.role.value, m.content] for m in cm.get(input="What is my pass key?")],
                  "digest": state_digest(cm.memory.state)}))
cm.memory.close()
"""


def test_persistence_across_a_process_restart(url, model) -> None:
    tests = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", CHILD, tests, url], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    cm = chat_memory(url, model)
    assert [[m.role.value, m.content] for m in cm.get_all()] == child["history"]
    assert state_digest(cm.memory.state) == child["digest"]
    got = [[m.role.value, m.content] for m in cm.get(input="What is my pass key?")]
    assert got == child["get"] and got[0][0] == "system"
    assert FACT not in json.dumps(got[1:])


# ---- one memory, two frameworks ----------------------------------------------------------------------------------------


def test_a_session_written_through_langchain_is_read_through_llamaindex(url, model) -> None:
    pytest.importorskip("langchain_comet", reason="the LangChain integration (feat-lc) is not merged")
    from langchain.agents import create_agent
    from langchain_comet import ComeTMemoryMiddleware
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from lc_helpers import call, script

    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"In {city} it is 21 C and sunny."

    written = ComeTMemory("alice", store=url, model=model)
    fake = script(call("weather", "c1", city="Lyon"), "Sunny in Lyon.")
    agent = create_agent(fake, [weather], middleware=[ComeTMemoryMiddleware(written)])
    agent.invoke({"messages": [HumanMessage(FACT)]})
    # Read through LlamaIndex: the same session, the same history, tool pairs included.
    cm = chat_memory(url, model)
    got = cm.get_all()
    assert [(m.role.value, m.content) for m in got] == [
        ("user", FACT), ("assistant", None), ("tool", "In Lyon it is 21 C and sunny."), ("assistant", "Sunny in Lyon.")]
    block = got[1].blocks[0]
    assert isinstance(block, ToolCallBlock) and (block.tool_call_id, block.tool_name, block.tool_kwargs) == (
        "c1", "weather", {"city": "Lyon"})
    assert got[2].additional_kwargs == {"tool_call_id": "c1", "name": "weather"}
    assert state_digest(cm.memory.state) == state_digest(written.state)
    # And LlamaIndex goes on writing the session LangChain started.
    SimpleChatEngine.from_defaults(memory=cm, llm=MockLLM(max_tokens=1)).chat("Thanks.")
    written.refresh()
    assert [e.text for e in written.events()][-2:] == ["[user] Thanks.\n", "[assistant] text\n"]


# ---- the default model -----------------------------------------------------------------------------------------------

ADAPTER = Path(__file__).resolve().parents[1] / "comet_agents" / "weights" / "comet_adapter.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not ADAPTER.exists(), reason="no trained default adapter ships yet (comet_agents/weights)")
@pytest.mark.xfail(strict=True, reason="issue 3, fidelity: the shipped step-3,486 adapter answers '714422' for "
                   "71432 told 30 turns earlier (docs/results.md); strict, so the day it passes this marker must go")
def test_comet_llm_with_the_default_model_answers_from_memory(url) -> None:
    cm = ComeTChatMemory.from_defaults("alice", store=url, window_tokens=200)
    engine = SimpleChatEngine.from_defaults(memory=cm, llm=ComeTLLM(memory=cm.memory, max_new_tokens=24))
    engine.chat(FACT)
    for i in range(1, 31):
        engine.chat(turn(i))
    assert "71432" in engine.chat("What is my pass key?").response
