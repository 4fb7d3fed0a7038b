"""ComeTMemoryMiddleware: constant-size CoMeT memory for ``langchain.agents.create_agent``.

* ``before_model`` absorbs every human, AI and tool message of the thread not absorbed yet (in order, each
  once: absorbed message ids are kept in the agent state, so a resumed thread absorbs only new messages), then
  optionally drops the turns older than the last ``keep_turns`` from the agent's history (memory holds them);
* ``wrap_model_call`` asks memory about the latest user request and adds the answer to the system message of
  this one model call: the checkpointed history never contains it;
* ``after_agent`` absorbs the final answer.

The session is the thread (``thread_id``), the tenant comes from the runtime context (see
:class:`~langchain_comet.sessions.ComeTSessions`). Every hook has an async twin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest
from langchain.agents.middleware.types import ModelResponse, PrivateStateAttr
from langchain_core.messages import BaseMessage, HumanMessage, RemoveMessage, SystemMessage
from typing_extensions import NotRequired

from comet_agents.memory import ComeTMemory

from ._convert import content_text, is_summary, to_events
from .sessions import ComeTSessions, TenantKey
from .tools import create_recall_memory_tool

__all__ = ["ComeTMemoryMiddleware", "ComeTMemoryState", "DEFAULT_MEMORY_TEMPLATE"]

DEFAULT_MEMORY_TEMPLATE = "What you remember from earlier in this conversation:\n<memory>\n{memory}\n</memory>"


class ComeTMemoryState(AgentState):
    """Agent state plus the ids of the messages memory has absorbed (private: not in the agent's input/output)."""

    comet_absorbed: NotRequired[Annotated[list[str], PrivateStateAttr]]


class ComeTMemoryMiddleware(AgentMiddleware[ComeTMemoryState, Any, Any]):
    """Give an agent a constant-size CoMeT memory.

    Args:
        memory: a ComeTMemory (the template for every thread, and the memory used without a thread id) or a
            :class:`ComeTSessions`; ``None``: ``ComeTMemory()`` on first use.
        keep_turns: keep only the last this many user turns in the agent's message history (``None``: keep
            all). Cuts happen before a user message, so an AI tool call is never separated from its results.
        inject: add what memory recalls to each model call.
        template: how the recalled text is written into the system message (``{memory}`` is replaced).
        max_new_tokens: length of the recalled text (default: the memory's ``max_new_tokens``).
        max_query_chars: only the last this many characters of the user request are asked to memory.
        recall_tool: also give the agent a ``recall_memory`` tool (see :func:`create_recall_memory_tool`).
        tenant_key: where the runtime context holds the tenant (see :class:`ComeTSessions`).
    """

    state_schema = ComeTMemoryState

    def __init__(
        self,
        memory: ComeTMemory | ComeTSessions | None = None,
        *,
        keep_turns: int | None = None,
        inject: bool = True,
        template: str = DEFAULT_MEMORY_TEMPLATE,
        max_new_tokens: int | None = None,
        max_query_chars: int = 2000,
        recall_tool: bool = False,
        tenant_key: TenantKey = "tenant",
    ) -> None:
        super().__init__()
        if keep_turns is not None and keep_turns < 1:
            raise ValueError("keep_turns must be >= 1 or None")
        if "{memory}" not in template:
            raise ValueError("template must contain '{memory}'")
        if max_query_chars < 1:
            raise ValueError("max_query_chars must be >= 1")
        self.sessions = ComeTSessions.coerce(memory, tenant_key=tenant_key)
        self.keep_turns = keep_turns
        self.inject = inject
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.max_query_chars = max_query_chars
        self.tools = [create_recall_memory_tool(self.sessions)] if recall_tool else []

    # ---- absorbing ------------------------------------------------------------------------------------------

    def _pending(self, state: dict[str, Any]) -> tuple[list[Any], list[str]]:
        """(events of the messages not absorbed yet, ids of the absorbed messages afterwards)."""
        messages: list[BaseMessage] = state.get("messages") or []
        seen = set(state.get("comet_absorbed") or [])
        events = []
        for i, m in enumerate(messages):  # one by one, so that an error names the message's place in the history
            if m.id is None or m.id not in seen:
                events += to_events([m], offset=i)
        return events, [m.id for m in messages if m.id is not None]

    def _trim(self, state: dict[str, Any]) -> tuple[list[RemoveMessage], list[str]]:
        """(removals of the turns before the last ``keep_turns``, ids of the messages that stay)."""
        messages: list[BaseMessage] = state.get("messages") or []
        ids = [m.id for m in messages if m.id is not None]
        if self.keep_turns is None:
            return [], ids
        starts = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage) and not is_summary(m)]
        if len(starts) <= self.keep_turns:
            return [], ids
        cut = starts[-self.keep_turns]
        return [RemoveMessage(id=m.id) for m in messages[:cut] if m.id is not None], [
            m.id for m in messages[cut:] if m.id is not None]

    def _update(self, state: dict[str, Any], absorbed: list[str], *, trim: bool) -> dict[str, Any]:
        removals, kept = self._trim(state) if trim else ([], absorbed)
        update: dict[str, Any] = {"comet_absorbed": [i for i in absorbed if i in set(kept)]}
        if removals:
            update["messages"] = removals
        return update

    def before_model(self, state: ComeTMemoryState, runtime: Any) -> dict[str, Any] | None:
        events, absorbed = self._pending(state)
        if events:
            self.sessions.for_runtime(runtime).absorb(events)
        return self._update(state, absorbed, trim=True)

    async def abefore_model(self, state: ComeTMemoryState, runtime: Any) -> dict[str, Any] | None:
        events, absorbed = self._pending(state)
        if events:
            await self.sessions.for_runtime(runtime).aabsorb(events)
        return self._update(state, absorbed, trim=True)

    def after_agent(self, state: ComeTMemoryState, runtime: Any) -> dict[str, Any] | None:
        events, absorbed = self._pending(state)
        if events:
            self.sessions.for_runtime(runtime).absorb(events)
        return self._update(state, absorbed, trim=False)

    async def aafter_agent(self, state: ComeTMemoryState, runtime: Any) -> dict[str, Any] | None:
        events, absorbed = self._pending(state)
        if events:
            await self.sessions.for_runtime(runtime).aabsorb(events)
        return self._update(state, absorbed, trim=False)

    # ---- injecting ------------------------------------------------------------------------------------------

    def query(self, messages: Sequence[BaseMessage]) -> str | None:
        """What memory is asked: the text of the latest user message (its last ``max_query_chars``)."""
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if isinstance(m, HumanMessage) and not is_summary(m):
                text = content_text(m, where=f"message {i} (HumanMessage)").strip()
                return text[-self.max_query_chars:] if text else None
        return None

    def with_memory(self, request: ModelRequest, recalled: str) -> ModelRequest:
        """``request`` with ``recalled`` added to its system message (a copy: nothing is persisted)."""
        note = self.template.format(memory=recalled.strip())
        base = request.system_message
        if base is None:
            system = SystemMessage(note)
        elif isinstance(base.content, str):
            system = SystemMessage(f"{base.content}\n\n{note}" if base.content else note)
        else:
            system = SystemMessage([*base.content, {"type": "text", "text": note}])
        return request.override(system_message=system)

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        question = self.query(request.messages) if self.inject else None
        if question is None:
            return handler(request)
        recalled = self.sessions.for_runtime(request.runtime).recall(question, max_new_tokens=self.max_new_tokens)
        return handler(self.with_memory(request, recalled) if recalled.strip() else request)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> Any:
        question = self.query(request.messages) if self.inject else None
        if question is None:
            return await handler(request)
        mem = self.sessions.for_runtime(request.runtime)
        recalled = await mem.arecall(question, max_new_tokens=self.max_new_tokens)
        return await handler(self.with_memory(request, recalled) if recalled.strip() else request)
