"""ComeTSummarizer: the ``summarizer=`` of LangChain's SummarizationMiddleware, answered by CoMeT memory.

SummarizationMiddleware hands it the messages it is about to drop from the history; it absorbs them into the
thread's memory (so nothing is lost when they go) and returns what memory recalls when asked for a summary.
The model given to SummarizationMiddleware is never called; it provides the token counting and the profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config

from comet_agents.memory import ComeTMemory

from ._convert import is_summary, to_events
from .sessions import ComeTSessions, TenantKey

__all__ = ["ComeTSummarizer", "DEFAULT_SUMMARY_QUESTION"]

DEFAULT_SUMMARY_QUESTION = "Summarize what you remember about this conversation so far."


class ComeTSummarizer(Runnable[Sequence[BaseMessage], str]):
    """``SummarizationMiddleware(model, summarizer=ComeTSummarizer(memory), trim_tokens_to_summarize=None)``.

    Args:
        memory: a ComeTMemory (template of every thread) or ComeTSessions.
        question: what memory is asked to produce the summary.
        absorb: absorb the messages first. Pass ``False`` when ComeTMemoryMiddleware on the same memory already
            absorbs every message (it does so before each model call, so the dropped ones are in memory).
        max_new_tokens: summary length (default: the memory's ``max_new_tokens``).
        tenant_key: where the runtime context holds the tenant.

    The previous summary (which SummarizationMiddleware passes along) is never absorbed again.
    """

    def __init__(self, memory: ComeTMemory | ComeTSessions | None = None, *,
                 question: str = DEFAULT_SUMMARY_QUESTION, absorb: bool = True,
                 max_new_tokens: int | None = None, tenant_key: TenantKey = "tenant") -> None:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        self.sessions = ComeTSessions.coerce(memory, tenant_key=tenant_key)
        self.question = question
        self.absorb = absorb
        self.max_new_tokens = max_new_tokens

    def _events(self, messages: Sequence[BaseMessage]) -> list[Any]:
        if isinstance(messages, (str, BaseMessage)) or not isinstance(messages, Sequence):
            raise TypeError(f"ComeTSummarizer takes a list of messages, got {type(messages).__name__}")
        return to_events([m for m in messages if not is_summary(m)]) if self.absorb else []

    def invoke(self, input: Sequence[BaseMessage], config: RunnableConfig | None = None, **kwargs: Any) -> str:
        events = self._events(input)
        mem = self.sessions.for_config(ensure_config(config))
        if events:
            mem.absorb(events)
        return mem.recall(self.question, max_new_tokens=self.max_new_tokens)

    async def ainvoke(self, input: Sequence[BaseMessage], config: RunnableConfig | None = None,
                      **kwargs: Any) -> str:
        events = self._events(input)
        mem = self.sessions.for_config(ensure_config(config))
        if events:
            await mem.aabsorb(events)
        return await mem.arecall(self.question, max_new_tokens=self.max_new_tokens)
