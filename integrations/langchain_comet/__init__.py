"""LangChain 1.x integration of comet-agents: constant-size CoMeT memory for ``create_agent`` agents.

* :class:`ComeTMemoryMiddleware`: absorbs each thread's messages, injects recalled memory into each model call;
* :class:`ComeTSummarizer`: the ``summarizer=`` of LangChain's ``SummarizationMiddleware``;
* :class:`ComeTRetriever` and :func:`create_recall_memory_tool`: explicit recall;
* :class:`ChatComeT`: the CoMeT model as a chat model;
* :class:`ComeTSessions`: the ComeTMemory of each (tenant, thread).

Install with ``pip install "comet-agents[langchain]"``. See docs/langchain.md.
"""

from ._convert import UnsupportedContentError
from .chat_models import ChatComeT
from .middleware import ComeTMemoryMiddleware, ComeTMemoryState
from .sessions import ComeTSessions
from .summarizer import ComeTSummarizer
from .tools import ComeTRetriever, create_recall_memory_tool

__all__ = [
    "ChatComeT",
    "ComeTMemoryMiddleware",
    "ComeTMemoryState",
    "ComeTRetriever",
    "ComeTSessions",
    "ComeTSummarizer",
    "UnsupportedContentError",
    "create_recall_memory_tool",
]
