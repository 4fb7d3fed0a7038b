"""The standard LangChain suites (langchain-tests) for ChatComeT, ComeTRetriever and the recall_memory tool.

Run on the tiny model with network sockets disabled. Declared unsupported through the suites' own flags: tool
calling (and so tool choice and structured output), JSON mode, multimodal inputs and a per-call model override.
The suites also skip by themselves what does not apply: construction from environment variables (no API keys),
serialisation (ChatComeT holds a live memory) and VCR recordings (nothing goes over the network).
The async cases need ``asyncio_mode = "auto"`` (set in pyproject.toml).
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

import pytest_socket
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    RetrieversIntegrationTests,
    ToolsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, ToolsUnitTests

from comet_agents import ComeTMemory
from langchain_comet import ChatComeT, ComeTRetriever, create_recall_memory_tool

from tiny import tiny_chat_model

_MEMORY: dict[str, ComeTMemory] = {}


@pytest.fixture(scope="module", autouse=True)
def offline_memory(tmp_path_factory):
    """One tiny-model session with a few events, shared by the suites."""
    url = f"sqlite:///{tmp_path_factory.mktemp('std') / 'std.db'}"
    mem = ComeTMemory("standard", store=url, model=tiny_chat_model(), max_new_tokens=8)
    mem.absorb(["The user's name is Ada.", "Ada lives in Lyon.", "Ada likes green tea.", "The meeting is at 10."])
    _MEMORY["mem"] = mem
    yield mem
    mem.close()


@pytest.fixture(autouse=True)
def no_network():
    """No network in any test of this module (pytest-socket lifts its restrictions after each test)."""
    pytest_socket.disable_socket(allow_unix_socket=True)  # asyncio's self-pipe is a Unix socket pair
    yield
    pytest_socket.enable_socket()


class _Flags:
    """What ChatComeT does not do, declared through the suites' flags."""

    @property
    def chat_model_class(self):
        return ChatComeT

    @property
    def chat_model_params(self):
        return {"memory": _MEMORY["mem"]}  # max_tokens comes from the suites' standard params

    @property
    def has_tool_calling(self) -> bool:  # bind_tools is overridden only to raise a clear error
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:  # one local model per memory; `model` only names it in traces
        return False


class TestChatComeTUnit(_Flags, ChatModelUnitTests):
    pass


class TestChatComeTIntegration(_Flags, ChatModelIntegrationTests):
    pass


class TestComeTRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return ComeTRetriever

    @property
    def retriever_constructor_params(self):
        return {"memory": _MEMORY["mem"]}

    @property
    def retriever_query_example(self) -> str:
        return "Where does Ada live?"


class _ToolParams:
    @property
    def tool_constructor(self):
        return create_recall_memory_tool(_MEMORY["mem"])

    @property
    def tool_invoke_params_example(self):
        return {"question": "Where does Ada live?"}


class TestRecallToolUnit(_ToolParams, ToolsUnitTests):
    pass


class TestRecallToolIntegration(_ToolParams, ToolsIntegrationTests):
    pass


def test_the_suites_run_offline():
    import socket

    with pytest.raises(pytest_socket.SocketBlockedError):
        socket.create_connection(("pypi.org", 443), timeout=1)
