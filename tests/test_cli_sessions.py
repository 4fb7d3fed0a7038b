"""`comet-agents absorb | ask | sessions ...` on a SQLite store, with the tiny model standing in for 'default'."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from comet_agents import memory as memory_mod
from comet_agents.cli import app
from comet_agents.store import open_store

from dbs import dump
from tiny import tiny_chat_model

runner = CliRunner()


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_mod, "_load_model", lambda name, device: tiny_chat_model())
    monkeypatch.setattr(memory_mod, "_BY_NAME", {})
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def test_absorb_ask_and_manage_sessions(url, tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in [
        {"type": "message", "role": "user", "content": "I live in Lyon."},
        {"type": "user_event", "kind": "purchase", "item": "shoes"},
        {"type": "text", "text": "A secret: 1234."},
    ]) + "\n")
    r = run("absorb", str(events), "--session", "alice", "--store", url)
    assert r.exit_code == 0, r.output
    assert "absorbed 3 event(s) into session 'alice' (ids 1..3); version 1" in r.output
    r = run("absorb", "-", "--session", "alice", "--store", url, input="First paragraph.\n\nSecond one.\n")
    assert r.exit_code == 0 and "absorbed 2 event(s)" in r.output and "(ids 4..5); version 2" in r.output

    r = run("ask", "Where do I live?", "--session", "alice", "--store", url, "--max-new-tokens", "5")
    assert r.exit_code == 0 and r.output.strip()

    r = run("sessions", "list", "--store", url)
    assert r.exit_code == 0 and re.search(r"alice\s+2\s+5", r.output)
    r = run("sessions", "history", "--session", "alice", "--store", url)
    assert r.exit_code == 0 and re.search(r"\*\s+2\s+1\s+0\s+5", r.output), r.output
    r = run("sessions", "events", "--session", "alice", "--store", url)
    assert r.exit_code == 0 and "      3 text         A secret: 1234." in r.output

    assert run("sessions", "fork", "bob", "--session", "alice", "--version", "1", "--store", url).exit_code == 0
    r = run("sessions", "events", "--session", "bob", "--store", url)
    assert len(r.output.strip().splitlines()) == 3
    r = run("sessions", "restore", "1", "--session", "alice", "--store", url)
    assert r.exit_code == 0 and "restored to version 1" in r.output
    r = run("sessions", "forget", "3", "--session", "alice", "--store", url)
    assert r.exit_code == 0 and "forgot 1 event(s)" in r.output and "versions deleted: 1, 2" in r.output
    r = run("sessions", "events", "--session", "alice", "--store", url, "--all-branches")
    assert "(forgotten)" in r.output and "A secret" not in r.output
    r = run("sessions", "delete", "--session", "bob", "--store", url, "--yes")
    assert r.exit_code == 0
    assert [s.session_id for s in open_store(url).list_sessions("default")] == ["alice"]


def test_bad_input_is_refused_and_nothing_is_stored(url, tmp_path) -> None:
    assert run("absorb", "-", "--session", "s", "--store", url, input="ok\n").exit_code == 0
    before = dump(open_store(url))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "text", "text": "fine"}\n{"type": "nope"}\n')
    r = run("absorb", str(bad), "--session", "s", "--store", url)
    assert r.exit_code == 1 and "error: line 2: type: unknown event type 'nope'" in r.output
    r = run("absorb", "-", "--session", "s", "--store", url, "--format", "text", input=b"caf\xe9\n")
    assert r.exit_code == 1 and "not valid UTF-8" in r.output
    r = run("absorb", str(tmp_path / "missing.txt"), "--session", "s", "--store", url)
    assert r.exit_code == 1 and "No such file" in r.output
    assert dump(open_store(url)) == before
    r = run("ask", "hi?", "--session", "nobody", "--store", url)
    assert r.exit_code == 1 and "no session 'nobody'" in r.output
    r = run("sessions", "history", "--session", "s", "--tenant", "other", "--store", url)
    assert r.exit_code == 1 and "no session 's' for tenant 'other'" in r.output
    r = run("sessions", "delete", "--session", "s", "--store", url, input="n\n")
    assert r.exit_code == 1 and dump(open_store(url)) == before
