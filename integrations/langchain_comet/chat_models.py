"""ChatComeT: the CoMeT model as a LangChain chat model.

Its context is the session's memory plus the messages of the call: the messages are read in the open chunk
(they are not absorbed; :class:`~langchain_comet.ComeTMemoryMiddleware` absorbs agent turns). Decoding is
greedy. The small default model does not call tools: ``bind_tools`` raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, ensure_config
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from comet_agents.memory import ComeTMemory

from ._convert import to_chat_dicts
from .sessions import ComeTSessions

__all__ = ["ChatComeT"]

NO_TOOLS = (
    "ChatComeT does not call tools: the small CoMeT base model (SmolLM2-135M by default) was not trained for "
    "tool calling. Use another chat model for the agent and give it CoMeT memory with ComeTMemoryMiddleware, "
    "or call ChatComeT without tools."
)


class ChatComeT(BaseChatModel):
    """A CoMeT model answering from a session's memory plus the current messages.

    Args:
        memory: a ComeTMemory (its session is used without a thread id) or a ComeTSessions; inside an agent the
            thread id of the run picks the session. ``None``: ``ComeTMemory()`` on first use.
        model: the name reported in traces and ``response_metadata["model_name"]``.
        max_tokens: answer length in tokens (default: the memory's ``max_new_tokens``).
        temperature: decoding is greedy; only ``None`` or ``0`` are accepted.
        stop: stop sequences (the answer is cut before the first one).
        timeout, max_retries: accepted for compatibility; a local model neither times out nor retries.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    memory: Any = None
    model_name: str = Field(default="comet-agents", alias="model")
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False
    _sessions: ComeTSessions | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_comet_params(self) -> "ChatComeT":
        if self.temperature not in (None, 0, 0.0):
            raise ValueError(f"ChatComeT decodes greedily; temperature must be None or 0, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.memory is not None and not isinstance(self.memory, (ComeTMemory, ComeTSessions)):
            raise TypeError(f"memory must be a ComeTMemory or ComeTSessions, got {type(self.memory).__name__}")
        template = self.memory._template if isinstance(self.memory, ComeTSessions) else self.memory
        if self.profile is None and template is not None:
            self.profile = self._profile(template)
        return self

    # ---- facts -------------------------------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "comet"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_tokens": self.max_tokens, "stop": self.stop}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="comet", ls_model_name=kwargs.get("model", self.model_name),
                                 ls_model_type="chat", ls_temperature=self.temperature)
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _profile(self, mem: ComeTMemory) -> dict[str, Any]:
        """Limits: what fits the open chunk beside the memory slots, the pending tail and the answer."""
        out = self._max_new(mem)
        profile: dict[str, Any] = {"max_output_tokens": out, "tool_calling": False, "structured_output": False,
                                   "image_inputs": False, "audio_inputs": False, "video_inputs": False,
                                   "pdf_inputs": False, "text_inputs": True, "text_outputs": True}
        limit = mem.engine.max_context_positions
        if limit is not None:
            cfg = mem.engine.config
            room = limit - cfg.m - cfg.fifo - cfg.chunk_size  # slots, and a pending tail of up to a chunk
            if cfg.stride:
                room = room * cfg.stride // (cfg.stride + 1)  # one compression token per stride text tokens
            profile["max_input_tokens"] = max(room - out, 0)
        return profile

    def _max_new(self, mem: ComeTMemory, override: Any = None) -> int:
        n = override if override is not None else self.max_tokens or mem.max_new_tokens
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {n!r}")
        return n

    def _memory(self) -> ComeTMemory:
        """The memory of this call: the run's thread in ``memory`` (its own session without one)."""
        if self._sessions is None:
            self._sessions = ComeTSessions.coerce(self.memory)
        return self._sessions.for_config(ensure_config())

    # ---- tokens ------------------------------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        return self._memory().engine.encode(text)

    def get_num_tokens(self, text: str) -> int:
        return self._memory().count_tokens(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of ``messages`` as the model reads them: rendered with the base model's chat template."""
        if tools:
            raise NotImplementedError(NO_TOOLS)
        mem = self._memory()
        return mem.count_tokens(mem.engine.chat_prompt(to_chat_dicts(messages)))

    # ---- tools -------------------------------------------------------------------------------------------------

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        raise NotImplementedError(NO_TOOLS)

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        raise NotImplementedError("ChatComeT has no structured output: " + NO_TOOLS)

    # ---- answering ---------------------------------------------------------------------------------------------

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]):
        if kwargs.get("tools"):
            raise NotImplementedError(NO_TOOLS)
        mem = self._memory()
        chat = to_chat_dicts(messages)
        stops = [s for s in (stop if stop is not None else self.stop) or [] if s]
        return mem, chat, stops, self._max_new(mem, kwargs.get("max_tokens"))

    def _usage(self, mem: ComeTMemory, chat: list[dict[str, str]], text: str) -> UsageMetadata:
        n_in = mem.count_tokens(mem.engine.chat_prompt(chat))
        n_out = mem.count_tokens(text) if text else 0
        return UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        mem, chat, stops, max_new = self._prepare(messages, stop, kwargs)
        text = _cut(mem.chat(chat, max_new_tokens=max_new), stops)
        message = AIMessage(content=text, usage_metadata=self._usage(mem, chat, text),
                            response_metadata={"model_name": self.model_name, "model_provider": "comet",
                                               "session_id": mem.session_id, "tenant": mem.tenant})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        mem, chat, stops, max_new = self._prepare(messages, stop, kwargs)
        text = ""
        for piece in _until_stop(mem.stream_chat(chat, max_new_tokens=max_new), stops):
            text += piece
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last", usage_metadata=self._usage(mem, chat, text),
            response_metadata={"model_name": self.model_name, "model_provider": "comet",
                               "session_id": mem.session_id, "tenant": mem.tenant}))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # The forward passes run in a worker thread (the event loop keeps running); it sees the run's config.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        it = await asyncio.to_thread(lambda: iter(self._stream(messages, stop, None, **kwargs)))
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, it, done)
            if chunk is done:
                return
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _cut(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop sequence."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def _until_stop(pieces: Iterator[str], stops: list[str]) -> Iterator[str]:
    """Stream ``pieces`` up to the first stop sequence, holding back text that may start one."""
    if not stops:
        yield from pieces
        return
    hold = max(map(len, stops)) - 1
    buf = ""
    for piece in pieces:
        buf += piece
        cut = _cut(buf, stops)
        if cut != buf:
            if cut:
                yield cut
            return
        if len(buf) > hold:
            ready, buf = buf[: len(buf) - hold], buf[len(buf) - hold:] if hold else ""
            yield ready
    if buf:
        yield buf
