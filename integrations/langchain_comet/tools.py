"""Explicit recall: a ``recall_memory`` tool an agent can call, and ComeTRetriever (memory as Documents)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from comet_agents.memory import ComeTMemory

from .sessions import ComeTSessions

__all__ = ["ComeTRetriever", "RecallMemoryInput", "create_recall_memory_tool"]

RECALL_DESCRIPTION = (
    "Ask your long-term memory of this conversation a question (facts the user told you, earlier tool results). "
    "Returns what memory recalls, which may be incomplete."
)


class RecallMemoryInput(BaseModel):
    question: str = Field(description="What to recall, as a question (e.g. 'What is the user's pass key?')")


def _check_question(question: Any) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("recall_memory needs a non-empty question")
    return question


def create_recall_memory_tool(
    memory: ComeTMemory | ComeTSessions | None = None, *, name: str = "recall_memory",
    description: str = RECALL_DESCRIPTION, max_new_tokens: int | None = None,
) -> BaseTool:
    """A tool answering a question from the memory of the current thread (the template's without one).

    Inside an agent the thread comes from the run's config; the tenant from the graph's runtime context.
    """
    sessions = ComeTSessions.coerce(memory)

    def recall_memory(question: str, config: RunnableConfig) -> str:
        return sessions.for_config(config).recall(_check_question(question), max_new_tokens=max_new_tokens)

    async def arecall_memory(question: str, config: RunnableConfig) -> str:
        mem = sessions.for_config(config)
        return await mem.arecall(_check_question(question), max_new_tokens=max_new_tokens)

    return StructuredTool.from_function(recall_memory, coroutine=arecall_memory, name=name,
                                        description=description, args_schema=RecallMemoryInput)


class ComeTRetriever(BaseRetriever):
    """Recalled memory as Documents.

    The first document is memory's answer to the query (``metadata["source"] == "comet_recall"``); with
    ``k > 1`` the next ``k - 1`` are the session's most recent absorbed events, newest first
    (``"comet_event"``, with their ``event_id``), as far as there are any. ``invoke(query, k=...)`` overrides
    ``k`` for one call. The session is the thread of the run's config, or ``memory``'s own.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Any = None
    """A ComeTMemory or ComeTSessions (None: ``ComeTMemory()`` on first use)."""
    k: int = 1
    max_new_tokens: int | None = None
    _sessions: ComeTSessions | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_comet_params(self) -> "ComeTRetriever":
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.memory is not None and not isinstance(self.memory, (ComeTMemory, ComeTSessions)):
            raise TypeError(f"memory must be a ComeTMemory or ComeTSessions, got {type(self.memory).__name__}")
        return self

    def _memory(self) -> ComeTMemory:
        if self._sessions is None:
            self._sessions = ComeTSessions.coerce(self.memory)
        return self._sessions.for_config(ensure_config())

    def _documents(self, mem: ComeTMemory, query: str, answer: str, k: int) -> list[Document]:
        meta = {"session_id": mem.session_id, "tenant": mem.tenant, "version": mem.version}
        docs = [Document(page_content=answer, metadata={**meta, "source": "comet_recall", "query": query})]
        if k > 1:
            for rec in reversed(mem.events()[-(k - 1):]):
                docs.append(Document(page_content=rec.text.rstrip("\n"),
                                     metadata={**meta, "source": "comet_event", "event_id": rec.id}))
        return docs

    def _k(self, k: int | None) -> int:
        k = self.k if k is None else k
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return k

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        k = self._k(k)
        mem = self._memory()
        return self._documents(mem, query, mem.recall(query, max_new_tokens=self.max_new_tokens), k)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None) -> list[Document]:
        k = self._k(k)
        mem = self._memory()
        answer = await mem.arecall(query, max_new_tokens=self.max_new_tokens)
        return self._documents(mem, query, answer, k)
