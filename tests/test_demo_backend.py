"""The demo's backend without a browser: KV-cache arithmetic, uploads, validation, sessions per browser."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("gradio")  # the demo extra (dev installs it)

from comet_demo import backend as bk  # noqa: E402
from comet_demo.backend import DemoBackend, DemoError  # noqa: E402
from tiny import tiny_base, tiny_chat_model  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


@pytest.fixture()
def backend(model, tmp_path):
    b = DemoBackend(model, store=f"sqlite:///{tmp_path}/demo.db", secret="s" * 16, background=False)
    yield b
    b.close()


def test_kv_cache_bytes_equals_a_real_kv_cache():
    base = tiny_base()
    for n in (1, 37):
        out = base(torch.randint(2, 90, (1, n)), use_cache=True)
        real = sum(layer.keys.nbytes + layer.values.nbytes for layer in out.past_key_values.layers)
        assert bk.kv_cache_bytes(base.config, n, 4) == real


def test_upload_size_is_checked_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(50 * 2**20)  # sparse: 50 MB without writing them

    def no_open(*a, **k):
        raise AssertionError("the file was opened")

    monkeypatch.setattr(bk, "open", no_open, raising=False)
    with pytest.raises(DemoError, match=r"50\.0 MB; the limit is 10 MB"):
        bk.read_upload(big, 10 * 2**20)
    monkeypatch.undo()
    small = tmp_path / "ok.jsonl"
    small.write_bytes(b'{"type": "text", "text": "hi"}\n')
    assert bk.read_upload(small, 10 * 2**20) == small.read_bytes()


def test_parse_events_names_the_bad_line():
    good = b'{"type": "text", "text": "a"}\n'
    with pytest.raises(DemoError, match="line 2: invalid JSON"):
        bk.parse_events(good + b'{"type": "text", "text": \n', "x.jsonl")
    with pytest.raises(DemoError, match="line 1"):
        bk.parse_events(b'{"type": "nope"}\n', "x.jsonl")
    assert len(bk.parse_events(good * 3, "x.jsonl")) == 3
    assert [e.text.strip() for e in bk.parse_events(b"one\n\ntwo\n", "notes.txt")] == ["one", "two"]


def test_synthetic_streams_reach_the_length(model):
    count = lambda s: len(model.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for kind in bk.STREAM_KINDS:
        events = bk.synthetic_events(kind, 500, count)
        total = sum(count(bk.ev.render(e)) for e in events)
        assert total >= 500 and total - count(bk.ev.render(events[-1])) < 500
        assert bk.suggested_question(events) is not None
    with pytest.raises(DemoError):
        bk.synthetic_events("weather", 10, count)


def test_sessions_are_per_browser_unless_show_all(model, tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    a, b = bk.new_browser_id(), bk.new_browser_id()
    mine = DemoBackend(model, store=url, secret="s" * 16, background=False)
    sa = mine.new_session(a, "main")
    sb = mine.new_session(b, "work")
    assert mine.sessions(a) == [sa] and mine.sessions(b) == [sb]
    with pytest.raises(DemoError, match="no such session"):
        mine.memory(a, sb)
    with pytest.raises(DemoError, match="not valid"):
        mine.session_id(a, "../etc")
    with pytest.raises(DemoError, match="valid id"):
        mine.session_id("not-an-id", "main")
    everyone = DemoBackend(model, store=url, secret="s" * 16, show_all_sessions=True, background=False)
    assert sorted(everyone.sessions(a)) == sorted([sa, sb])
    assert everyone.memory(a, sb).session_id == sb
    mine.close()
    everyone.close()


def test_absorb_reports_progress_and_matches_one_call(backend, model, tmp_path):
    from comet_agents.memory import ComeTMemory

    browser = bk.new_browser_id()
    sid = backend.new_session(browser, "main")
    events = bk.synthetic_events("agent_trajectory", 400, backend.count_tokens)
    seen = []
    r = backend.absorb(browser, sid, events, lambda done, total: seen.append((done, total)), parts=5)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == r.tokens
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 2
    ref = ComeTMemory("ref", store=f"sqlite:///{tmp_path}/ref.db", model=model)
    ref.absorb(events)
    p = backend.panel(browser, sid)
    st = ref.stats
    assert (p.tokens_absorbed, p.tokens_pending, p.chunks, p.events, p.state_bytes) == (
        st.tokens_absorbed, st.tokens_pending, st.chunks, st.events, st.state_bytes)
    assert p.version == r.version == 1
    q = "Which tool did the agent call last?"
    assert backend.ask(browser, sid, q) == ref.recall(q, max_new_tokens=48)
    with pytest.raises(DemoError, match="empty"):
        backend.ask(browser, sid, "   ")
    ref.close()


def test_untrained_adapter_is_detected(tmp_path):
    from comet_agents.modeling import ADAPTER_FILE, WEIGHTS_DIR

    assert DemoBackend._is_trained("default") == (WEIGHTS_DIR / ADAPTER_FILE).exists()
    assert DemoBackend._is_trained(str(tmp_path)) is False
    (tmp_path / ADAPTER_FILE).write_bytes(b"")
    assert DemoBackend._is_trained(str(tmp_path)) is True
    assert os.path.exists(tmp_path / ADAPTER_FILE)


def test_the_header_shows_the_adapter_note_or_the_untrained_warning(tmp_path):
    """An adapter's comet_config.json may carry a ``note`` in its meta (the shipped preview says what it cannot do
    yet); the page header shows it, and a missing or unreadable config gives no note."""
    import json

    from comet_demo.app import header_md

    (tmp_path / "comet_config.json").write_text(json.dumps({"comet": {}, "meta": {"note": "Preview <step 9>."}}))
    assert DemoBackend._adapter_note(str(tmp_path)) == "Preview <step 9>."
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "comet_config.json").write_text("{not json")
    assert DemoBackend._adapter_note(str(tmp_path / "bad")) == ""
    assert DemoBackend._adapter_note(str(tmp_path / "absent")) == ""
    assert DemoBackend._adapter_note(object()) == ""

    class Stub:
        def __init__(self, **status):
            self._status = {"state": "loading", "model": "m", **status}

        def status(self):
            return self._status

    shown = header_md(Stub(trained=True, adapter_note="Preview <step 9>."))
    assert "**Adapter:** Preview &lt;step 9&gt;." in shown and "Untrained" not in shown
    assert "Untrained adapter" in header_md(Stub(trained=False, adapter_note="ignored"))
    assert "Adapter:" not in header_md(Stub(trained=True, adapter_note=""))
