"""The Gradio demo served for real and driven in headless Chromium (Debian's /usr/bin/chromium, via playwright).

The server runs in-process on a tiny model; every number the page shows is checked against a separate
ComeTMemory over the same events. Nothing but 127.0.0.1 is contacted. Screenshots go to test-artifacts/.
A slow test runs `comet-agents demo` with the default model as a subprocess and reaches the served page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

from comet_agents.events import parse_jsonl  # noqa: E402
from comet_agents.memory import ComeTMemory  # noqa: E402
from comet_agents.modeling import ADAPTER_FILE, WEIGHTS_DIR  # noqa: E402
from comet_demo.app import launch  # noqa: E402
from comet_demo.backend import DemoBackend, kv_cache_bytes  # noqa: E402
from tiny import tiny_chat_model  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
WAIT = 120_000  # ms: an upper bound for a step on a loaded 2-core machine, never a measured time

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install --no-install-recommends chromium)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


@pytest.fixture(scope="module")
def backend(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    b = DemoBackend(model, store=f"sqlite:///{d}/demo.db", secret="k" * 16, background=False)
    yield b
    b.close()


@pytest.fixture(scope="module")
def url(backend):
    demo = launch(backend, port=free_port(), block=False, quiet=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


class Page:
    """A fresh browser context (its own local storage: a new browser id) on the demo, recording hosts."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1300, "height": 950})
        self.page = self.context.new_page()
        self.hosts: set[str] = set()
        self.page.on("request", lambda r: self.hosts.add(urlparse(r.url).hostname))
        self.page.goto(url)
        expect(self.page.locator('#panel [data-stat="tokens"]')).to_be_attached(timeout=WAIT)

    def stat(self, key: str) -> str:
        return self.page.locator(f'#panel [data-stat="{key}"]').get_attribute("data-value")

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def textarea(self, elem_id: str):
        return self.page.locator(f"#{elem_id} textarea")

    def status(self, elem_id: str):
        return self.page.locator(f"#{elem_id}")

    def close(self, shot: str | None = None) -> None:
        if shot:
            ARTIFACTS.mkdir(exist_ok=True)
            self.page.screenshot(path=ARTIFACTS / shot, full_page=True)
        self.context.close()
        assert self.hosts == {"127.0.0.1"}, self.hosts


@pytest.fixture()
def open_page(browser, url):
    pages: list[Page] = []

    def make() -> Page:
        pages.append(Page(browser, url))
        return pages[-1]

    yield make
    for p in pages:
        try:
            p.context.close()  # a no-op when the test closed it
        except Exception:
            pass


def reference(model, tmp_path, events, name="ref") -> ComeTMemory:
    mem = ComeTMemory(name, store=f"sqlite:///{tmp_path}/{name}.db", model=model)
    if events:
        mem.absorb(events)
    return mem


def check_panel(p: Page, mem: ComeTMemory, model) -> None:
    st = mem.stats
    tokens = st.tokens_absorbed + st.tokens_pending
    kv = kv_cache_bytes(model.inner.config, tokens, 4)  # float32
    expected = {"tokens": tokens, "tokens_pending": st.tokens_pending, "chunks": st.chunks, "events": st.events,
                "state_bytes": st.state_bytes, "kv_cache_bytes": kv}
    for key, value in expected.items():
        expect(p.page.locator(f'#panel [data-stat="{key}"]')).to_have_attribute("data-value", str(value),
                                                                             timeout=WAIT)


def absorb_log(p: Page, text: str) -> None:
    p.textarea("event-log").fill(text)
    p.page.locator("#stream-absorb").click()
    expect(p.status("stream-status")).to_contain_text("tokens/s", timeout=WAIT)


def test_stream_generate_absorb_ask(open_page, model, tmp_path):
    p = open_page()
    expect(p.status("header")).to_contain_text("Untrained adapter")
    expect(p.status("header")).to_contain_text("answers are nonsense")
    p.tab("Stream")
    p.page.locator("#stream-length input").fill("400")
    p.page.locator("#stream-generate").click()
    expect(p.status("stream-status")).to_contain_text("Generated", timeout=WAIT)
    events = parse_jsonl(p.textarea("event-log").input_value())
    question = p.textarea("question").input_value()
    assert len(events) >= 2 and question.endswith("?")
    p.page.locator("#stream-absorb").click()
    expect(p.status("stream-status")).to_contain_text("tokens/s", timeout=WAIT)
    expect(p.status("stream-status")).to_contain_text(f"Absorbed {len(events)} events")
    ref = reference(model, tmp_path, events)
    check_panel(p, ref, model)
    assert p.stat("version") == "1"
    assert float(p.page.locator("#tokens-per-s").inner_text().replace(",", "")) > 0
    p.page.locator("#ask").click()
    expect(p.status("stream-status")).to_contain_text("Answered from memory", timeout=WAIT)
    assert p.textarea("answer").input_value() == ref.recall(question, max_new_tokens=48)
    expect(p.page.locator("#plot")).to_contain_text("KV cache of the same history")
    p.close("demo_stream.png")
    ref.close()


def _session_of(backend, before: set[str]) -> str:
    new = {s.session_id for s in backend.store.list_sessions(backend.tenant)} - before
    assert len(new) == 1, new
    return new.pop()


def test_chat_turns_are_answered_from_memory_and_absorbed(open_page, backend, model, tmp_path):
    before = {s.session_id for s in backend.store.list_sessions(backend.tenant)}
    p = open_page()
    sid = _session_of(backend, before)
    ref = reference(model, tmp_path, [])
    msg = "Hello, I like green tea."
    expected = ref.engine.chat(ref.state, [{"role": "user", "content": msg}], max_new_tokens=64)
    p.textarea("chat-input").fill(msg)
    p.page.locator("#chat-send").click()
    expect(p.status("chat-status")).to_contain_text("Turn absorbed; version 1", timeout=WAIT)
    expect(p.page.locator("#chatbot")).to_contain_text(msg)
    stored = backend.store.all_events(backend.tenant, sid)
    assert [(e.payload["role"], e.payload["content"]) for e in stored] == (
        [("user", msg)] + ([("assistant", expected)] if expected.strip() else []))
    ref.absorb([{"type": "message", "role": "user", "content": msg}]
               + ([{"type": "message", "role": "assistant", "content": expected}] if expected.strip() else []))
    check_panel(p, ref, model)
    # The second turn is answered from a memory that holds the first.
    msg2 = "What do I like?"
    expected2 = ref.engine.chat(ref.state, [{"role": "user", "content": msg2}], max_new_tokens=64)
    p.textarea("chat-input").fill(msg2)
    p.page.locator("#chat-send").click()
    expect(p.status("chat-status")).to_contain_text("Turn absorbed; version 2", timeout=WAIT)
    stored = backend.store.all_events(backend.tenant, sid)
    assert stored[-1].payload["content"] == expected2 or not expected2.strip()
    p.close("demo_chat.png")
    ref.close()


def test_bad_input_shows_an_error_and_the_app_keeps_working(open_page, model, tmp_path):
    p = open_page()
    p.tab("Stream")
    good = '{"type": "text", "text": "The pass key is 4242."}\n{"type": "user_event", "kind": "purchase", "item": "Tea"}\n'
    # invalid JSON Lines: the error names the line
    p.textarea("event-log").fill(good.splitlines()[0] + '\n{"type": "text", "text": \n')
    p.page.locator("#stream-absorb").click()
    expect(p.status("stream-status")).to_contain_text("Error: invalid input: line 2: invalid JSON", timeout=WAIT)
    # an unknown event type, line 1
    p.textarea("event-log").fill('{"type": "weather", "text": "x"}\n')
    p.page.locator("#stream-absorb").click()
    expect(p.status("stream-status")).to_contain_text("line 1", timeout=WAIT)
    assert p.stat("events") == "0"  # nothing stored
    # a 50 MB upload is refused
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(50 * 2**20)
    p.page.locator("#upload input[type=file]").set_input_files(str(big))
    expect(p.status("stream-status")).to_contain_text("Error: the file is 50.0 MB; the limit is 10 MB", timeout=WAIT)
    # an empty question
    p.textarea("question").fill("")
    p.page.locator("#ask").click()
    expect(p.status("stream-status")).to_contain_text("Error: the question is empty", timeout=WAIT)
    # an empty chat message
    p.tab("Chat")
    p.page.locator("#chat-send").click()
    expect(p.status("chat-status")).to_contain_text("Error: the message is empty", timeout=WAIT)
    # ... and it all still works: a valid upload, absorbed, then a question
    p.tab("Stream")
    ok = tmp_path / "ok.jsonl"
    ok.write_text(good)
    p.page.locator("#upload input[type=file]").set_input_files(str(ok))
    expect(p.status("stream-status")).to_contain_text("2 valid events", timeout=WAIT)
    p.textarea("event-log").fill("")
    p.page.locator("#stream-absorb").click()
    expect(p.status("stream-status")).to_contain_text("Absorbed 2 events", timeout=WAIT)
    ref = reference(model, tmp_path, parse_jsonl(good))
    check_panel(p, ref, model)
    p.textarea("question").fill("What is the pass key?")
    p.page.locator("#ask").click()
    expect(p.status("stream-status")).to_contain_text("Answered from memory", timeout=WAIT)
    assert p.textarea("answer").input_value() == ref.recall("What is the pass key?", max_new_tokens=48)
    p.close("demo_bad_input.png")
    ref.close()


def _options(p: Page) -> list[str]:
    p.page.locator("#session-select input").click()
    opts = p.page.locator("ul[role=listbox] li")
    expect(opts.first).to_be_visible(timeout=WAIT)
    names = [t.replace("\u2713", "").strip() for t in opts.all_inner_texts()]  # the selected one has a tick
    p.page.keyboard.press("Escape")
    return names


def test_sessions_isolation_and_time_travel(open_page, model, tmp_path):
    e1 = [{"type": "text", "text": f"Fact {i}: the colour of box {i} is red."} for i in range(3)]
    e2 = [{"type": "text", "text": "Later: box 9 is blue."}]
    a = open_page()
    a.tab("Stream")
    absorb_log(a, "".join(json.dumps(e) + "\n" for e in e1))
    expect(a.status("stream-status")).to_contain_text("version 1")
    absorb_log(a, json.dumps(e2[0]) + "\n")
    expect(a.status("stream-status")).to_contain_text("version 2")
    a.tab("Sessions")
    expect(a.page.locator("#timeline")).to_contain_text("manual", timeout=WAIT)
    # time travel: back to version 1
    a.textarea("version").fill("1")
    a.page.locator("#restore").click()
    expect(a.status("sessions-status")).to_contain_text("Restored version 1", timeout=WAIT)
    ref1 = reference(model, tmp_path, e1, "ref1")
    check_panel(a, ref1, model)
    assert a.stat("version") == "1"
    # fork the current state, forget event 1 in the fork
    a.textarea("version").fill("")
    a.textarea("fork-name").fill("copy")
    a.page.locator("#fork").click()
    expect(a.status("sessions-status")).to_contain_text("Forked the current state into copy", timeout=WAIT)
    expect(a.page.locator('#panel [data-stat="session"]')).to_have_text("copy")
    a.textarea("forget-ids").fill("1")
    a.page.locator("#forget").click()
    expect(a.status("sessions-status")).to_contain_text("Forgot events 1", timeout=WAIT)
    ref2 = reference(model, tmp_path, e1[1:], "ref2")
    check_panel(a, ref2, model)
    expect(a.page.locator("#events")).to_contain_text("(forgotten)")
    assert sorted(_options(a)) == ["copy", "main"]
    # another browser sees none of it
    b = open_page()
    assert b.stat("events") == "0" and b.stat("tokens") == "0"
    b.tab("Sessions")
    assert _options(b) == ["main"]
    b.close()
    # delete the fork: back to main, which is still at version 1
    a.page.locator("#delete").click()
    expect(a.status("sessions-status")).to_contain_text("Deleted session copy", timeout=WAIT)
    expect(a.page.locator('#panel [data-stat="session"]')).to_have_text("main")
    check_panel(a, ref1, model)
    assert _options(a) == ["main"]
    a.close("demo_sessions.png")
    ref1.close()
    ref2.close()


def test_passkey_tab(open_page, backend, model, tmp_path):
    from comet_agents.cli import _text_events
    from comet_agents.training.data.passkey import make_passkey_haystack

    p = open_page()
    p.tab("Pass key")
    p.page.locator("#passkey-tokens input[type=number]").fill("256")
    p.page.locator("#passkey-tokens input[type=number]").press("Enter")
    # The slider takes the typed length only once its range input moved; a click before that (a loaded machine)
    # runs the default 2,048-token haystack, which the reference below would not rebuild.
    expect(p.page.locator("#passkey-tokens input[type=range]")).to_have_value("256", timeout=WAIT)
    p.page.locator("#passkey-run").click()
    result = p.status("passkey-result")
    expect(result).to_contain_text("hidden at 50% of", timeout=WAIT)
    text = result.inner_text()
    key = text.split("Pass key ")[1].split()[0]
    hay = make_passkey_haystack(256, 0.5, key, count_tokens=backend.count_tokens, seed=0)
    ref = reference(model, tmp_path, [{"type": "text", "text": t} for t in _text_events(hay)])
    assert p.page.locator("#passkey-answer").inner_text() == ref.recall("What is the pass key?", max_new_tokens=16)
    st = ref.stats
    assert f"of {st.tokens_absorbed + st.tokens_pending:,} tokens" in text
    assert "tokens/s" in text and "KV cache" in text
    p.close("demo_passkey.png")
    ref.close()


@pytest.mark.slow
def test_comet_agents_demo_command_serves_the_page(browser, tmp_path):
    port = free_port()
    exe = shutil.which("comet-agents", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "comet_agents.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "demo"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd + ["demo", "--port", str(port), "--store", f"sqlite:///{tmp_path}/demo.db"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the demo did not serve its page"
            time.sleep(1)
        page = browser.new_page()
        hosts: set[str] = set()
        page.on("request", lambda r: hosts.add(urlparse(r.url).hostname))
        page.goto(url)
        header = page.locator("#header")
        expect(header).to_contain_text("comet-agents", timeout=WAIT)
        expect(header).to_contain_text("SmolLM2", timeout=600_000)  # the background load finished
        if (WEIGHTS_DIR / ADAPTER_FILE).exists():  # the shipped adapter loaded: no warning, its note if any
            expect(header).not_to_contain_text("Untrained adapter")
            if DemoBackend._adapter_note("default"):
                expect(header).to_contain_text("Adapter:")
        else:
            expect(header).to_contain_text("Untrained adapter")
        expect(page.locator('#panel [data-stat="state_bytes"]')).to_be_attached(timeout=WAIT)
        page.close()
        assert hosts == {"127.0.0.1"}, hosts
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
