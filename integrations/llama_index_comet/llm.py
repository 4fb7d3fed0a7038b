"""ComeTLLM: the CoMeT model as a LlamaIndex LLM that answers from a session's memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Optional

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from comet_agents.memory import ComeTMemory

from .messages import to_chat_dicts

__all__ = ["ComeTLLM", "safe_context_window"]


def safe_context_window(memory: ComeTMemory) -> int | None:
    """Prompt plus answer tokens that always fit the open chunk, whatever the memory state.

    The open chunk holds at most ``m`` global slots, ``fifo`` temporary slots, a pending tail of up to
    ``chunk_size - 1`` tokens, the prompt and the answer and, with ``open_chunk_compression``, one compression
    token per ``s`` text tokens; all of it must fit the base model's ``max_position_embeddings`` (P):
    ``m + fifo + C - 1 + T <= P`` (``m + fifo + (C - 1 + T) * (s + 1) / s <= P`` with open-chunk compression).
    None when the base model does not say P.
    """
    limit = memory.engine.max_context_positions
    if limit is None:
        return None
    cfg = memory.model.config
    free = limit - cfg.m - cfg.fifo
    s = cfg.open_stride
    text = free * s // (s + 1) if s else free
    return max(text - (cfg.chunk_size - 1), 0)


class ComeTLLM(CustomLLM):
    """The CoMeT model of ``memory`` as a chat LLM: every answer reads the session's memory state plus the
    messages (which are read, not absorbed: pair it with :class:`ComeTChatMemory` on the same session to write).

    ``metadata.context_window`` is :func:`safe_context_window` (computed with our tokenizer's positions, not a
    default); ``num_output`` is ``max_new_tokens``. Tool calls are not emitted: use it with ``ReActAgent`` or
    chat engines, not ``FunctionAgent``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: ComeTMemory = Field(exclude=True, description="The session the answers read.")
    max_new_tokens: int = Field(default=256, ge=1, description="Longest answer, in tokens.")
    context_window: Optional[int] = Field(default=None, description="Override the computed context window.")

    @classmethod
    def class_name(cls) -> str:
        return "ComeTLLM"

    @property
    def metadata(self) -> LLMMetadata:
        window = self.context_window or safe_context_window(self.memory) or 3900
        return LLMMetadata(context_window=window, num_output=self.max_new_tokens, is_chat_model=True,
                           is_function_calling_model=False, model_name=self.memory.model.base_name)

    # ---- chat (what the engines and agents call) ---------------------------------------------------------------

    def _dicts(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        if self.system_prompt and not (messages and messages[0].role == MessageRole.SYSTEM):
            messages = [ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt), *messages]
        return to_chat_dicts(messages)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = self.memory.chat(self._dicts(messages), max_new_tokens=self.max_new_tokens)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        pieces = self.memory.stream_chat(self._dicts(messages), max_new_tokens=self.max_new_tokens)

        def gen() -> Iterator[ChatResponse]:
            text = ""
            for piece in pieces:
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = await self.memory.achat(self._dicts(messages), max_new_tokens=self.max_new_tokens)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        pieces = self.memory.astream_chat(self._dicts(messages), max_new_tokens=self.max_new_tokens)

        async def gen() -> AsyncIterator[ChatResponse]:
            text = ""
            async for piece in pieces:
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)

        return gen()

    # ---- completion: the prompt as one user turn ----------------------------------------------------------------

    def _turn(self, prompt: str) -> list[ChatMessage]:
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self.chat(self._turn(prompt)).message.content or "")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def gen() -> Iterator[CompletionResponse]:
            for r in self.stream_chat(self._turn(prompt)):
                yield CompletionResponse(text=r.message.content or "", delta=r.delta)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=(await self.achat(self._turn(prompt))).message.content or "")

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        async def gen() -> AsyncIterator[CompletionResponse]:
            async for r in await self.astream_chat(self._turn(prompt)):
                yield CompletionResponse(text=r.message.content or "", delta=r.delta)

        return gen()
