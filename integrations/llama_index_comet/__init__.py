"""LlamaIndex 0.14 integration of comet-agents: CoMeT memory for chat engines and agents, and the CoMeT model
as an LLM. See docs/llamaindex.md.

* :class:`ComeTChatMemory`: a ``BaseMemory`` (verbatim window + recall) for ``SimpleChatEngine``,
  ``CondensePlusContextChatEngine``, ``FunctionAgent`` and ``ReActAgent``;
* :class:`ComeTMemoryBlock`: a ``BaseMemoryBlock`` for LlamaIndex's ``Memory``;
* :class:`ComeTLLM`: a ``CustomLLM`` answering from the session's memory;
* :func:`comet_tokenizer`: our tokenizer for ``tokenizer_fn=`` / ``Settings.tokenizer`` (never tiktoken).
"""

from .llm import ComeTLLM, safe_context_window
from .memory import DEFAULT_MEMORY_PROMPT, ComeTChatMemory, ComeTMemoryBlock
from .messages import CometTokenizer, comet_tokenizer

__all__ = ["ComeTChatMemory", "ComeTMemoryBlock", "ComeTLLM", "CometTokenizer", "comet_tokenizer",
           "safe_context_window", "DEFAULT_MEMORY_PROMPT"]
