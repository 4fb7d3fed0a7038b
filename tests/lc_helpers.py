"""Shared pieces of the LangChain tests: a tool-calling fake chat model and a labelled stand-in recall."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from pydantic import Field

from comet_agents import ComeTMemory

STAND_IN = "[stand-in recall]"


class ToolCallingFakeModel(GenericFakeChatModel):
    """LangChain's shipped GenericFakeChatModel (scripted replies) plus bind_tools, recording every call.

    ``calls`` holds the exact message list of each model call (system message included), so tests can see
    what the model was shown.
    """

    calls: list[list[BaseMessage]] = Field(default_factory=list)
    bound_tools: list[Any] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolCallingFakeModel":
        self.bound_tools = list(tools)
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def script(*replies: AIMessage | str) -> ToolCallingFakeModel:
    return ToolCallingFakeModel(messages=iter([AIMessage(r) if isinstance(r, str) else r for r in replies]))


def call(tool: str, call_id: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": tool, "args": args, "id": call_id, "type": "tool_call"}])


class LabelledRecall(ComeTMemory):
    """A ComeTMemory whose recall is a labelled stand-in: the stored event texts that share a word with the
    question (no trained adapter ships yet, so the real recall of the tiny or default model cannot be asserted
    on). It reads what this session really absorbed, so it proves the wiring: absorbed -> recalled -> prompt."""

    asked: list[str]

    def recall(self, question: str, **kwargs: Any) -> str:
        self.__dict__.setdefault("asked", []).append(question)
        words = {w.strip("?.,!").lower() for w in question.split() if len(w.strip("?.,!")) > 3}
        hits = [e.text.strip() for e in self.events() if words & {w.strip("?.,!\"").lower() for w in e.text.split()}]
        return f"{STAND_IN} " + " | ".join(hits) if hits else f"{STAND_IN} nothing"
