"""The ComeTMemory calls ChatComeT needs, in one place.

``ComeTMemory.chat`` / ``stream_chat`` / ``count_tokens`` are being added to core (branch feat-core); until they
land these helpers answer through the memory's engine, with the memory's session lock and model lock held as
``ComeTMemory.recall`` does. Once core has them, the calls go to core.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from comet_agents.memory import ComeTMemory


def chat(mem: ComeTMemory, messages: Sequence[dict[str, str]], max_new_tokens: int) -> str:
    if hasattr(mem, "chat"):
        return mem.chat(messages, max_new_tokens=max_new_tokens)
    with mem._lock:
        mem.refresh()
        state = mem.state
        with mem._shared.lock:
            return mem.engine.chat(state, messages, max_new_tokens=max_new_tokens)


def stream_chat(mem: ComeTMemory, messages: Sequence[dict[str, str]], max_new_tokens: int) -> Iterator[str]:
    """Text pieces of the answer; bad messages raise on the call (not on the first ``next``)."""
    if hasattr(mem, "stream_chat"):
        return iter(mem.stream_chat(messages, max_new_tokens=max_new_tokens))
    with mem._lock:
        mem.refresh()
        state = mem.state.clone()  # a private copy: other writers may absorb while we decode
    pieces = mem.engine.chat_stream(state, messages, max_new_tokens=max_new_tokens)

    def run() -> Iterator[str]:
        with mem._shared.lock:
            yield from pieces

    return run()


def count_tokens(mem: ComeTMemory, text: str) -> int:
    if hasattr(mem, "count_tokens"):
        return mem.count_tokens(text)
    return mem.engine.count_tokens(text)
