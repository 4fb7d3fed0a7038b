"""ChatComeT on the tiny model: answers are the engine's chat over the session's memory, streaming, stop
sequences, token counting, profile, tools refused, bad input."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain")

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from comet_agents import ComeTMemory
from langchain_comet import ChatComeT, ComeTMemoryMiddleware, UnsupportedContentError
from langchain_comet._convert import to_chat_dicts

from tiny import tiny_chat_model


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


@pytest.fixture
def memory(tmp_path, model):
    with ComeTMemory("chat", store=f"sqlite:///{tmp_path / 'c.db'}", model=model) as mem:
        yield mem


def direct(mem: ComeTMemory, messages, n: int) -> str:
    return mem.engine.chat(mem.state, to_chat_dicts(messages), max_new_tokens=n)


def test_answer_is_the_engine_chat_over_memory_plus_messages(memory):
    chat = ChatComeT(memory=memory, max_tokens=12)
    msgs = [SystemMessage("Be brief."), HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")]
    empty = chat.invoke(msgs)
    assert empty.content == direct(memory, msgs, 12) and empty.content
    memory.absorb("The meeting moved to Tuesday at 10. " * 4)
    full = chat.invoke(msgs)
    assert full.content == direct(memory, msgs, 12)
    assert full.content != empty.content  # memory is part of the context
    assert memory.stats.events == 1  # the messages were read, not absorbed
    usage = full.usage_metadata
    n_in = memory.engine.count_tokens(memory.engine.chat_prompt(to_chat_dicts(msgs)))
    assert usage["input_tokens"] == n_in and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert full.response_metadata["model_name"] == "comet-agents"
    assert full.response_metadata["session_id"] == "chat"


def test_stream_joins_to_invoke_and_ends_with_the_last_chunk(memory):
    chat = ChatComeT(memory=memory, max_tokens=10)
    chunks = list(chat.stream("Hello"))
    assert "".join(c.content for c in chunks) == chat.invoke("Hello").content
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] > 0
    assert sum(1 for c in chunks if c.usage_metadata) == 1

    async def astream():
        return [c async for c in chat.astream("Hello")]

    assert "".join(c.content for c in asyncio.run(astream())) == chat.invoke("Hello").content
    assert asyncio.run(chat.ainvoke("Hello")).content == chat.invoke("Hello").content


def test_stop_sequences_cut_the_answer(memory):
    chat = ChatComeT(memory=memory, max_tokens=16)
    full = chat.invoke("Hello").content
    assert len(full) >= 4
    stop = full[2:4]
    cut = full[: full.find(stop)]
    assert chat.invoke("Hello", stop=[stop]).content == cut
    assert ChatComeT(memory=memory, max_tokens=16, stop=[stop]).invoke("Hello").content == cut
    assert "".join(c.content for c in chat.stream("Hello", stop=[stop])) == cut


def test_token_counting_uses_the_comet_tokenizer(memory):
    chat = ChatComeT(memory=memory)
    assert chat.get_num_tokens("hello world") == len(memory.engine.encode("hello world")) == 11  # characters
    msgs = [HumanMessage("hi")]
    assert chat.get_num_tokens_from_messages(msgs) == len(memory.engine.encode(memory.engine.chat_prompt(
        [{"role": "user", "content": "hi"}])))


def test_profile_limits(memory):
    chat = ChatComeT(memory=memory, max_tokens=20)
    p = chat.profile
    assert p["max_output_tokens"] == 20 and p["tool_calling"] is False and p["image_inputs"] is False
    cfg = memory.engine.config
    limit = memory.engine.max_context_positions
    assert 0 < p["max_input_tokens"] < limit - cfg.m - cfg.fifo - 20
    # What the profile promises fits: a prompt of max_input_tokens characters on top of a full pending tail.
    memory.absorb("y" * (cfg.chunk_size - 1))
    text = "x" * (p["max_input_tokens"] - (len(memory.engine.encode(memory.engine.chat_prompt(
        [{"role": "user", "content": ""}])))))
    assert chat.invoke(text).content is not None


def test_tools_are_refused_clearly(memory):
    chat = ChatComeT(memory=memory)

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    with pytest.raises(NotImplementedError, match="does not call tools"):
        chat.bind_tools([add])
    with pytest.raises(NotImplementedError, match="does not call tools"):
        create_agent(chat, [add]).invoke({"messages": [HumanMessage("1 + 2?")]})
    with pytest.raises(NotImplementedError, match="structured output"):
        chat.with_structured_output(dict)
    # Without tools ChatComeT runs an agent, with memory middleware on the same memory.
    agent = create_agent(ChatComeT(memory=memory, max_tokens=6), [], middleware=[ComeTMemoryMiddleware(memory)])
    out = agent.invoke({"messages": [HumanMessage("Hello")]})
    assert isinstance(out["messages"][-1], AIMessage) and memory.stats.events == 2


def test_history_with_tool_calls_is_rendered_as_text(memory):
    msgs = [HumanMessage("Weather?"),
            AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Lyon"}, "id": "c1"}]),
            ToolMessage("sunny", tool_call_id="c1", name="weather")]
    assert to_chat_dicts(msgs) == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": '[tool_call id=c1] weather(city="Lyon")'},
        {"role": "tool", "content": "[weather] sunny"},
    ]
    assert isinstance(ChatComeT(memory=memory, max_tokens=4).invoke(msgs), AIMessage)


def test_bad_input(memory):
    chat = ChatComeT(memory=memory)
    with pytest.raises(UnsupportedContentError, match="'image' content is not supported"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "hi"}, {"type": "image", "url": "x"}])])
    with pytest.raises(UnsupportedContentError, match="unknown content block 'hologram'"):
        chat.invoke([HumanMessage(content=[{"type": "hologram"}])])
    with pytest.raises(ValueError, match="reserved CoMeT token"):
        chat.invoke(memory.model.tokenizer.convert_ids_to_tokens([memory.model.first_special_id])[0] or "<x>")
    with pytest.raises(ValueError, match="does not fit"):
        chat.invoke("z" * 5000)
    with pytest.raises(ValueError, match="temperature"):
        ChatComeT(memory=memory, temperature=0.7)
    with pytest.raises(TypeError, match="ComeTMemory"):
        ChatComeT(memory="default")
    with pytest.raises(ValueError, match="max_tokens"):
        ChatComeT(memory=memory, max_tokens=0)


def test_in_an_agent_the_thread_picks_the_session(memory, tmp_path):
    from langgraph.checkpoint.memory import InMemorySaver

    chat = ChatComeT(memory=memory, max_tokens=6)
    agent = create_agent(chat, [], middleware=[ComeTMemoryMiddleware(memory, inject=False)],
                         checkpointer=InMemorySaver())
    out = agent.invoke({"messages": [HumanMessage("Hello")]}, {"configurable": {"thread_id": "th-9"}})
    reply = out["messages"][-1]
    assert reply.response_metadata["session_id"] == "th-9"
    with ComeTMemory("th-9", store=memory.store, model=memory.engine, create=False) as thread_memory:
        # The reply is the chat over the thread's memory (which held the user message then).
        assert [e.text for e in thread_memory.events()] == ["[user] Hello\n", f"[assistant] {reply.text}\n"]
    assert memory.stats.events == 0

    async def arun():
        return await agent.ainvoke({"messages": [HumanMessage("Again")]}, {"configurable": {"thread_id": "th-9"}})

    assert asyncio.run(arun())["messages"][-1].response_metadata["session_id"] == "th-9"


def test_memory_stays_as_given_and_the_profile_serves_fraction_triggers(memory):
    from langchain.agents.middleware import SummarizationMiddleware

    from langchain_comet import ComeTRetriever, ComeTSessions, ComeTSummarizer

    chat = ChatComeT(memory=memory)
    assert chat.memory is memory and ComeTRetriever(memory=memory).memory is memory
    assert ChatComeT(memory=ComeTSessions(memory)).profile == chat.profile
    assert ChatComeT().profile is None  # no memory yet: nothing is loaded to compute limits
    SummarizationMiddleware(chat, trigger=("fraction", 0.8), summarizer=ComeTSummarizer(memory))
    with pytest.raises(TypeError, match="ComeTMemory"):
        ComeTRetriever(memory="default")
