"""Fakes shared by the LlamaIndex tests: an LLM that records what it is sent, offline guards."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, Optional

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM


class RecordingLLM(CustomLLM):
    """Answers ``reply`` and records every call: the messages (or prompt) and, if given, ``probe()`` evaluated
    at call time (e.g. what memory would recall right then)."""

    reply: str = "ok"
    calls: list = Field(default_factory=list, exclude=True)
    probe: Optional[Callable[[Sequence[ChatMessage]], Any]] = Field(default=None, exclude=True)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=4096, num_output=16, is_chat_model=True)

    def _record(self, messages: Sequence[ChatMessage]) -> ChatResponse:
        extra = self.probe(messages) if self.probe else None
        self.calls.append((list(messages), extra))
        return ChatResponse(message=ChatMessage(role="assistant", content=self.reply), delta=self.reply)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._record(messages)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any):
        r = self._record(messages)
        return iter([r])

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._record(messages)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any):
        r = self._record(messages)

        async def gen():
            yield r

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.calls.append(([ChatMessage(role="user", content=prompt)], None))
        return CompletionResponse(text=self.reply)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        return iter([self.complete(prompt)])


def text_of(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(str(m.content or "") for m in messages)


def offline(monkeypatch) -> None:
    """No network (only Unix sockets, which asyncio uses) and tiktoken raising when reached."""
    import llama_index.core
    import tiktoken

    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family != socket.AF_UNIX:
            raise OSError(f"network disabled in tests: connect to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded)
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network disabled in tests")))

    def no_tiktoken(*args, **kwargs):
        raise AssertionError("tiktoken was reached: token accounting must use the CoMeT tokenizer")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    monkeypatch.setattr(llama_index.core, "global_tokenizer", None)
