"""Every python block of docs/llamaindex.md runs, in order, in one namespace, offline.

The fast test replaces the default model by the tiny random one (``comet_agents.memory._load_model``); the slow
one runs the page as written, with the real default model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from comet_agents import memory as memory_module  # noqa: E402

from llamaindex_helpers import offline  # noqa: E402
from tiny import tiny_chat_model  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "llamaindex.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def run_page() -> dict:
    ns: dict = {}
    for i, code in enumerate(blocks()):
        exec(compile(code, f"{PAGE.name}[block {i}]", "exec"), ns)
    return ns


def test_the_page_has_examples() -> None:
    assert len(blocks()) >= 3


def test_the_examples_run_offline(monkeypatch) -> None:
    offline(monkeypatch)
    model = tiny_chat_model()
    monkeypatch.setattr(memory_module, "_load_model", lambda name, device: model)
    monkeypatch.setattr(memory_module, "_BY_NAME", {})
    ns = run_page()
    assert len(ns["memory"].get_all()) == 64  # 31 turns, then one through ComeTLLM
    assert ns["session"].stats.events > 0  # Memory flushed its oldest notes into the block's session
    assert ns["messages"][0].content.startswith("What you remember of this conversation:")
    assert "<comet_memory>" in ns["li_memory"].get(input="Where is the meeting?")[0].content


@pytest.mark.slow
def test_the_examples_run_with_the_default_model(monkeypatch) -> None:
    offline(monkeypatch)
    ns = run_page()
    assert len(ns["memory"].get_all()) == 64
