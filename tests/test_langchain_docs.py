"""Every python block of docs/langchain.md runs, in order, in one namespace, offline.

The page uses the default model; the fast test substitutes the tiny model for it (through the loader that
``ComeTMemory`` uses for models given by name), the slow one runs the real default model.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("langchain")

from comet_agents import memory as memory_mod
from comet_agents import store as store_mod

from tiny import tiny_chat_model

PAGE = Path(__file__).resolve().parents[1] / "docs" / "langchain.md"


def blocks() -> list[str]:
    found = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert len(found) >= 6, "docs/langchain.md lost its examples"
    return found


def run_page(capsys, monkeypatch) -> dict:
    # The page's relative SQLite URL must mean this test's directory: open_store shares one Store per URL
    # string and process, so start from no stores.
    monkeypatch.setattr(store_mod, "_STORES", {})
    page = types.ModuleType("langchain_docs")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, page.__name__, page)
    ns = page.__dict__
    for i, code in enumerate(blocks()):
        try:
            exec(compile(code, f"docs/langchain.md[python block {i}]", "exec"), ns)
        except Exception as exc:
            exc.add_note(f"in python block {i} of docs/langchain.md:\n{code}")
            raise
    ns["_printed"] = capsys.readouterr().out
    return ns


def check(ns: dict) -> None:
    texts = [e.text for e in ns["alice"].events()]
    assert texts[:4] == [
        "[user] Open the vault named Orion.\n",
        '[tool_call id=call1] vault(name="Orion")\n',
        "[observation vault id=call1] The code of vault Orion is 4711.\n",
        "[assistant] The vault is open.\n",
    ]
    assert texts[-1] == "[assistant] The code was 4711.\n" and len(texts) == 8
    assert len(ns["result"]["messages"]) == 4  # keep_turns=2, as the page says
    assert [e.text for e in ns["bob"].events()] == ["[user] Hi, I am Bob.\n", "[assistant] Hello Bob.\n"]
    assert [d.metadata["source"] for d in ns["docs"]] == ["comet_recall", "comet_event", "comet_event"]
    assert "The code was 4711." in ns["_printed"]


def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    tiny = tiny_chat_model()
    monkeypatch.setattr(memory_mod, "_load_model", lambda name, device: tiny)
    monkeypatch.setattr(memory_mod, "_BY_NAME", {})
    monkeypatch.chdir(tmp_path)
    check(run_page(capsys, monkeypatch))


@pytest.mark.slow
def test_docs_examples_run_with_the_default_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    check(run_page(capsys, monkeypatch))
