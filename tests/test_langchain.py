"""ComeTMemoryMiddleware, ComeTSummarizer, the recall tool and ComeTRetriever inside real ``create_agent`` runs
(fake tool-calling chat model, real tools, real ComeTMemory on the tiny model)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("langchain")

from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from comet_agents import ComeTMemory
from comet_agents import events as ev
from comet_agents.store import SessionNotFoundError
from langchain_comet import (
    ComeTMemoryMiddleware,
    ComeTRetriever,
    ComeTSessions,
    ComeTSummarizer,
    UnsupportedContentError,
    create_recall_memory_tool,
)
from langchain_comet import _convert

from lc_helpers import STAND_IN, LabelledRecall, call, script
from tiny import tiny_chat_model

WEIGHTS = Path(__file__).resolve().parents[1] / "comet_agents" / "weights" / "comet_adapter.safetensors"


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"In {city} it is 21 C and sunny."


@tool
def vault(name: str) -> str:
    """Open a vault and read its code."""
    return f"The code of vault {name} is 4711."


@dataclass
class Ctx:
    tenant: str


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'lc.db'}"


@pytest.fixture
def memory(url, model):
    with ComeTMemory("base", store=url, model=model) as mem:
        yield mem


@pytest.fixture
def stand_in(url, model):
    with LabelledRecall("base", store=url, model=model) as mem:
        yield mem


def texts(url, model, session, tenant="default"):
    with ComeTMemory(session, tenant=tenant, store=url, model=model, create=False) as mem:
        return [e.text for e in mem.events()]


def thread(tid: str) -> dict:
    return {"configurable": {"thread_id": tid}}


# ---------------------------------------------------------------------------------------------- absorbing


def test_each_message_is_absorbed_once_and_in_order(memory, url, model):
    fake = script(call("weather", "c1", city="Lyon"), "Sunny in Lyon.", call("weather", "c2", city="Oslo"), "Oslo too.")
    agent = create_agent(fake, [weather], middleware=[ComeTMemoryMiddleware(memory)], checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("Weather in Lyon?")]}, thread("t1"))
    agent.invoke({"messages": [HumanMessage("And in Oslo?")]}, thread("t1"))
    assert texts(url, model, "t1") == [
        "[user] Weather in Lyon?\n",
        '[tool_call id=c1] weather(city="Lyon")\n',
        "[observation weather id=c1] In Lyon it is 21 C and sunny.\n",
        "[assistant] Sunny in Lyon.\n",
        "[user] And in Oslo?\n",
        '[tool_call id=c2] weather(city="Oslo")\n',
        "[observation weather id=c2] In Oslo it is 21 C and sunny.\n",
        "[assistant] Oslo too.\n",
    ]
    assert memory.events() == []  # the template session is not the thread's


def test_without_a_thread_the_given_memory_is_used_and_each_invoke_adds_only_its_messages(memory):
    fake = script("Hi.", "Bye.")
    agent = create_agent(fake, [], middleware=[ComeTMemoryMiddleware(memory)])
    agent.invoke({"messages": [HumanMessage("Hello")]})
    agent.invoke({"messages": [HumanMessage("Goodbye")]})
    assert [e.text for e in memory.events()] == ["[user] Hello\n", "[assistant] Hi.\n", "[user] Goodbye\n",
                                                 "[assistant] Bye.\n"]


def test_resumed_thread_absorbs_only_new_messages(memory, url, model):
    saver = InMemorySaver()
    mw = ComeTMemoryMiddleware(memory)
    create_agent(script("One."), [], middleware=[mw], checkpointer=saver).invoke(
        {"messages": [HumanMessage("First")]}, thread("r"))
    # A new agent object over the same checkpointer: the thread's history comes back from the checkpoint.
    agent = create_agent(script("Two."), [], middleware=[mw], checkpointer=saver)
    out = agent.invoke({"messages": [HumanMessage("Second")]}, thread("r"))
    assert [m.text for m in out["messages"]] == ["First", "One.", "Second", "Two."]
    assert texts(url, model, "r") == ["[user] First\n", "[assistant] One.\n", "[user] Second\n", "[assistant] Two.\n"]
    assert "comet_absorbed" not in out  # private state


def test_threads_map_to_sessions_and_tenants_are_isolated(stand_in, url, model):
    fake = script("ok", "ok", "ok", call("recall_memory", "q1", question="What is the code of the vault?"), "done")
    agent = create_agent(fake, [], middleware=[ComeTMemoryMiddleware(stand_in, recall_tool=True)],
                         checkpointer=InMemorySaver(), context_schema=Ctx)
    agent.invoke({"messages": [HumanMessage("The vault code is 1234.")]}, thread("a"), context=Ctx("acme"))
    agent.invoke({"messages": [HumanMessage("The vault code is 9999.")]}, thread("b"), context=Ctx("acme"))
    agent.invoke({"messages": [HumanMessage("My vault code is 5555.")]}, thread("a"), context=Ctx("globex"))
    out = agent.invoke({"messages": [HumanMessage("Which vault code?")]}, thread("a"), context=Ctx("acme"))
    assert texts(url, model, "a", "acme")[:2] == ["[user] The vault code is 1234.\n", "[assistant] ok\n"]
    assert texts(url, model, "b", "acme") == ["[user] The vault code is 9999.\n", "[assistant] ok\n"]
    assert texts(url, model, "a", "globex") == ["[user] My vault code is 5555.\n", "[assistant] ok\n"]
    with pytest.raises(SessionNotFoundError):
        texts(url, model, "a", "default")
    # The recall tool answered from thread a of tenant acme only.
    answer = [m for m in out["messages"] if isinstance(m, ToolMessage)][0].text
    assert "1234" in answer and "9999" not in answer and "5555" not in answer
    # ... and so did the injected memory of every model call of that run.
    for msgs in fake.calls[-2:]:
        assert "1234" in msgs[0].text and "9999" not in msgs[0].text and "5555" not in msgs[0].text


def test_concurrent_threads_in_a_batch(memory, url, model):
    fake = script(*["ok"] * 4)
    agent = create_agent(fake, [], middleware=[ComeTMemoryMiddleware(memory)], checkpointer=InMemorySaver())
    inputs = [{"messages": [HumanMessage(f"I am user {i}.")]} for i in range(4)]
    agent.batch(inputs, [thread(f"p{i}") for i in range(4)], max_concurrency=4)
    for i in range(4):
        assert texts(url, model, f"p{i}") == [f"[user] I am user {i}.\n", "[assistant] ok\n"]


# ---------------------------------------------------------------------------------------------- injecting


def test_recall_is_in_the_system_message_of_each_model_call_and_never_in_the_history(stand_in):
    fake = script(call("weather", "c1", city="Lyon"), "Sunny.")
    agent = create_agent(fake, [weather], system_prompt="You are terse.",
                         middleware=[ComeTMemoryMiddleware(stand_in)], checkpointer=InMemorySaver())
    out = agent.invoke({"messages": [HumanMessage("What is the weather in Lyon?")]}, thread("w"))
    assert len(fake.calls) == 2
    first, second = (c[0] for c in fake.calls)
    assert isinstance(first, SystemMessage) and first.text.startswith("You are terse.\n\n")
    assert f"{STAND_IN} [user] What is the weather in Lyon?" in first.text
    # The second call sees the tool output, absorbed before the call.
    assert "[observation weather id=c1] In Lyon it is 21 C and sunny." in second.text
    assert all("<memory>" not in m.text and STAND_IN not in m.text for m in out["messages"])
    assert not any(isinstance(m, SystemMessage) for m in out["messages"])
    state = agent.get_state(thread("w")).values
    assert all(STAND_IN not in m.text for m in state["messages"])


def test_injected_text_is_what_the_real_memory_recalls(memory, url, model):
    """With the real (tiny, untrained) model: the note in the prompt is exactly the session's recall."""
    fake = script("Fine.")
    agent = create_agent(fake, [], middleware=[ComeTMemoryMiddleware(memory, max_new_tokens=12)],
                         checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("How are you today?")]}, thread("real"))
    with ComeTMemory("replica", store=url, model=model) as replica:
        replica.absorb([ev.ChatMessage("user", "How are you today?")])
        expected = replica.recall("How are you today?", max_new_tokens=12)
    assert expected and f"<memory>\n{expected}\n</memory>" in fake.calls[0][0].text


def test_a_tool_fact_absorbed_5_chunks_earlier_reaches_the_prompt_while_history_stays_bounded(stand_in, url, model):
    turns = [HumanMessage("Open the vault named Orion.")] + [
        HumanMessage(f"Note {i}: the weather report for day {i} says mild winds and light rain all day long.")
        for i in range(6)
    ] + [HumanMessage("What is the code of the vault?")]
    fake = script(call("vault", "v1", name="Orion"), "Opened.", *["Noted."] * 6, "Let me see.")
    mw = ComeTMemoryMiddleware(stand_in, keep_turns=2)
    agent = create_agent(fake, [vault], middleware=[mw], checkpointer=InMemorySaver())
    chunk = model.config.chunk_size
    sizes = []
    for msg in turns:
        out = agent.invoke({"messages": [msg]}, thread("v"))
        sizes.append(len(out["messages"]))
        if msg is turns[0]:
            with ComeTMemory("v", store=url, model=model, create=False) as m:
                chunks_at_fact = m.stats.chunks
    with ComeTMemory("v", store=url, model=model, create=False) as m:
        assert m.stats.chunks - chunks_at_fact >= 5, (m.stats.chunks, chunks_at_fact, chunk)
    last = fake.calls[-1]
    # The agent's own history: bounded by 2 turns (8 turns, 18 messages were exchanged), without the tool output ...
    assert max(sizes) <= 6 and sizes[-1] == 4 and not any(isinstance(m, ToolMessage) for m in last[1:])
    assert all("4711" not in m.text for m in last[1:])
    # ... yet the fact reaches the prompt through memory.
    assert "The code of vault Orion is 4711." in last[0].text


@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS.exists(), reason="no trained adapter ships yet (comet_agents/weights/"
                    "comet_adapter.safetensors)")
@pytest.mark.xfail(strict=True, reason="issue 3, fidelity: the shipped step-3,486 adapter recalls '44114' for 4711 "
                   "six chunks back (docs/results.md); strict, so the day it passes this marker must go")
def test_default_model_recalls_a_tool_fact_5_chunks_later(tmp_path):
    """The real thing: the trained default model brings a tool's fact, absorbed 5+ chunks earlier, into the prompt."""
    with ComeTMemory("base", store=f"sqlite:///{tmp_path / 'd.db'}") as mem:
        filler = "The weather report says mild winds and light rain all day. "
        per_note = mem.model.config.chunk_size // len(mem.engine.encode(filler)) + 1  # a note fills a chunk
        turns = [HumanMessage("Open the vault named Orion.")] + [
            HumanMessage(f"Note {i}: " + filler * per_note) for i in range(6)
        ] + [HumanMessage("What is the code of the vault named Orion?")]
        fake = script(call("vault", "v1", name="Orion"), "Opened.", *["Noted."] * 6, "Let me see.")
        mw = ComeTMemoryMiddleware(mem, keep_turns=1, max_new_tokens=16)
        agent = create_agent(fake, [vault], middleware=[mw], checkpointer=InMemorySaver())
        for msg in turns:
            agent.invoke({"messages": [msg]}, thread("v"))
            if msg is turns[0]:
                with ComeTMemory("v", store=mem.store, model=mem.engine, create=False) as m:
                    chunks_at_fact = m.stats.chunks
        with ComeTMemory("v", store=mem.store, model=mem.engine, create=False) as m:
            assert m.stats.chunks - chunks_at_fact >= 5
        assert all("4711" not in m.text for m in fake.calls[-1][1:])  # not in the agent's own history
        assert "4711" in fake.calls[-1][0].text  # recalled into the system message


def test_keep_turns_drops_old_turns_whole(memory, url, model):
    fake = script(call("weather", "c1", city="Lyon"), "Sunny.", "B.", call("weather", "c2", city="Rome"), "Warm.")
    agent = create_agent(fake, [weather], middleware=[ComeTMemoryMiddleware(memory, keep_turns=1)],
                         checkpointer=InMemorySaver())
    for q in ("Lyon?", "Hello", "Rome?"):
        out = agent.invoke({"messages": [HumanMessage(q)]}, thread("k"))
    assert [type(m).__name__ for m in out["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert out["messages"][0].text == "Rome?"
    # The model never saw an orphaned tool result: every call's history starts with a user message.
    assert all(isinstance(c[1], HumanMessage) for c in fake.calls)
    assert len(texts(url, model, "k")) == 10  # memory holds everything


def test_inject_false_leaves_the_prompt_alone(memory):
    fake = script("Hi.")
    create_agent(fake, [], middleware=[ComeTMemoryMiddleware(memory, inject=False)]).invoke(
        {"messages": [HumanMessage("Hello")]})
    assert [type(m) for m in fake.calls[0]] == [HumanMessage]
    assert len(memory.events()) == 2


def test_async_hooks(stand_in, url, model):
    fake = script(call("weather", "c1", city="Lyon"), "Sunny.")
    agent = create_agent(fake, [weather], middleware=[ComeTMemoryMiddleware(stand_in)], checkpointer=InMemorySaver())

    async def run():
        return await agent.ainvoke({"messages": [HumanMessage("Weather in Lyon?")]}, thread("as"))

    out = asyncio.run(run())
    assert out["messages"][-1].text == "Sunny."
    assert texts(url, model, "as") == [
        "[user] Weather in Lyon?\n", '[tool_call id=c1] weather(city="Lyon")\n',
        "[observation weather id=c1] In Lyon it is 21 C and sunny.\n", "[assistant] Sunny.\n"]
    assert "[observation weather id=c1]" in fake.calls[1][0].text


# -------------------------------------------------------------------------------- summarizer, tool, retriever


def test_summarizer_in_summarization_middleware(stand_in, url, model):
    fake = script(*[f"Answer {i}." for i in range(4)])
    summarizer = ComeTSummarizer(stand_in, question="Summarize the conversation so far.")
    mw = SummarizationMiddleware(fake, trigger=("messages", 4), keep=("messages", 2), summarizer=summarizer,
                                 trim_tokens_to_summarize=None)
    agent = create_agent(fake, [], middleware=[mw], checkpointer=InMemorySaver())
    for i in range(3):
        out = agent.invoke({"messages": [HumanMessage(f"Question {i} about the conversation")]}, thread("s"))
    _check_summary(out, url, model, "s")


def _check_summary(out, url, model, session):
    summary = [m for m in out["messages"] if m.additional_kwargs.get("lc_source") == "summarization"]
    assert summary and STAND_IN in summary[0].text and "[user] Question 0 about the conversation" in summary[0].text
    stored = texts(url, model, session)
    assert stored[:2] == ["[user] Question 0 about the conversation\n", "[assistant] Answer 0.\n"]
    assert len(stored) == len(set(stored))  # the previous summary is not absorbed again


def test_summarizer_async(stand_in, url, model):
    fake = script(*[f"Answer {i}." for i in range(4)])
    mw = SummarizationMiddleware(fake, trigger=("messages", 4), keep=("messages", 2),
                                 summarizer=ComeTSummarizer(stand_in, question="Summarize the conversation so far."),
                                 trim_tokens_to_summarize=None)
    agent = create_agent(fake, [], middleware=[mw], checkpointer=InMemorySaver())

    async def run():
        for i in range(3):
            out = await agent.ainvoke({"messages": [HumanMessage(f"Question {i} about the conversation")]},
                                      thread("sa"))
        return out

    _check_summary(asyncio.run(run()), url, model, "sa")


def test_recall_tool_and_retriever_outside_an_agent(stand_in):
    stand_in.absorb("The vault code is 4711.")
    tool_ = create_recall_memory_tool(stand_in)
    assert tool_.name == "recall_memory" and set(tool_.args) == {"question"}
    assert "4711" in tool_.invoke({"question": "What is the vault code?"})
    with pytest.raises(ValueError, match="non-empty question"):
        tool_.invoke({"question": "  "})
    stand_in.absorb("The sky is green today.")
    docs = ComeTRetriever(memory=stand_in, k=3).invoke("What is the vault code?")
    assert [d.metadata["source"] for d in docs] == ["comet_recall", "comet_event", "comet_event"]
    assert "4711" in docs[0].page_content and docs[1].page_content == "The sky is green today."
    assert docs[0].metadata["session_id"] == "base"
    with pytest.raises(ValueError, match="k must be"):
        ComeTRetriever(memory=stand_in).invoke("q", k=0)


def test_sessions_reuse_and_close(memory):
    sessions = ComeTSessions(memory, max_open=1)
    a = sessions.get("x")
    assert sessions.get("x") is a and sessions.get(None) is memory and sessions.get("base") is memory
    b = sessions.get("y", tenant="t2")
    assert a.closed and b.tenant == "t2" and b.session_id == "y"
    sessions.close()
    assert b.closed and not memory.closed


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_content_block_is_refused_before_anything_is_stored(memory):
    agent = create_agent(script("x"), [], middleware=[ComeTMemoryMiddleware(memory)])
    bad = HumanMessage(content=[{"type": "text", "text": "hi"}, {"type": "hologram", "data": "..."}])
    match = r"message 0 \(HumanMessage\), block 1: unknown content block 'hologram'"
    with pytest.raises(UnsupportedContentError, match=match):
        agent.invoke({"messages": [bad]})
    assert memory.events() == []


def test_images_are_absorbed_as_placeholders(memory):
    agent = create_agent(script("A cat."), [], middleware=[ComeTMemoryMiddleware(memory)])
    msg = HumanMessage(content=[{"type": "text", "text": "What is this?"},
                                {"type": "image", "url": "https://example.com/cat.png"}])
    agent.invoke({"messages": [msg]})
    assert [e.text for e in memory.events()] == ["[user] What is this?\n[image]\n", "[assistant] A cat.\n"]


def test_huge_tool_output_is_split_not_dropped(memory, monkeypatch):
    big = "".join(f"line {i}: " + "x" * 60 + "\n" for i in range(8000))  # ~550k characters
    events = _convert.to_events([ToolMessage(big, tool_call_id="c9", name="dump")])
    assert len(events) == 3 and all(isinstance(e, ev.Observation) and e.call_id == "c9" for e in events)
    assert "".join(e.content for e in events) == big
    assert all(len(ev.render(e)) <= ev.MAX_EVENT_CHARS for e in events)
    # Through an agent (pieces made small so the tiny model absorbs quickly).
    monkeypatch.setattr(_convert, "PIECE_CHARS", 40)

    @tool
    def dump() -> str:
        """Dump a log."""
        return "0123456789 " * 10

    agent = create_agent(script(call("dump", "d1"), "Done."), [dump], middleware=[ComeTMemoryMiddleware(memory)])
    agent.invoke({"messages": [HumanMessage("Dump it")]})
    obs = [e.text for e in memory.events() if e.text.startswith("[observation")]
    bodies = [t.split("] ", 1)[1].rstrip("\n") for t in obs]
    assert len(obs) == 3 and "".join(bodies).replace(" ", "") == "0123456789" * 10


def test_bad_arguments(memory):
    with pytest.raises(ValueError, match="keep_turns"):
        ComeTMemoryMiddleware(memory, keep_turns=0)
    with pytest.raises(ValueError, match=r"\{memory\}"):
        ComeTMemoryMiddleware(memory, template="no placeholder")
    with pytest.raises(TypeError, match="ComeTMemory"):
        ComeTMemoryMiddleware("default-please")
    agent = create_agent(script("x"), [], middleware=[ComeTMemoryMiddleware(memory)], context_schema=dict)
    with pytest.raises(TypeError, match="tenant in the runtime context must be a string"):
        agent.invoke({"messages": [HumanMessage("hi")]}, thread("t"), context={"tenant": 7})
