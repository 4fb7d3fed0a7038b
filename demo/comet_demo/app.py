"""The Gradio app: Chat, Stream, Pass key and Sessions tabs, and a side panel with a live plot.

``build_demo(backend)`` returns the ``gr.Blocks`` without launching it; :func:`launch` serves it (what
``comet-agents demo`` runs). All the work is done by :class:`comet_demo.backend.DemoBackend`.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check / telemetry requests

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from comet_agents import events as ev  # noqa: E402

from .backend import (  # noqa: E402
    MAIN_SESSION,
    STREAM_KINDS,
    DemoBackend,
    DemoError,
    Panel,
    events_jsonl,
    new_browser_id,
    parse_events,
    parse_ids,
    read_upload,
    suggested_question,
    synthetic_events,
    valid_browser_id,
)

log = logging.getLogger(__name__)

STORAGE_KEY = "comet-agents-demo-browser"
STATE_SERIES = "CoMeT memory state (constant)"
KV_SERIES = "KV cache of the same history"

CSS = """
#panel table { width: 100%; border-collapse: collapse; font-size: 0.92em; }
#panel td { padding: 3px 6px; border-bottom: 1px solid var(--border-color-primary); }
#panel td.num { text-align: right; font-variant-numeric: tabular-nums; }
.demo-error { color: var(--error-text-color, #b91c1c); font-weight: 600; }
"""


def _mib(n: int) -> str:
    """Bytes for people: KiB below 1 MiB, else MiB."""
    return f"{n / 2**10:,.1f} KiB" if n < 2**20 else f"{n / 2**20:,.2f} MiB"


def panel_html(p: Panel, label: str) -> str:
    """The side panel: exact numbers in ``data-value`` (the tests read them), readable ones in the text."""
    ratio = p.kv_cache_bytes / p.state_bytes if p.state_bytes else 0.0
    rows = [
        ("tokens", "Tokens in memory", p.tokens, f"{p.tokens:,}"),
        ("tokens_pending", "of which pending (open chunk)", p.tokens_pending, f"{p.tokens_pending:,}"),
        ("chunks", "Chunks absorbed", p.chunks, f"{p.chunks:,}"),
        ("events", "Events", p.events, f"{p.events:,}"),
        ("version", "Version", "" if p.version is None else p.version, "-" if p.version is None else str(p.version)),
        ("state_bytes", "Memory state (flat)", p.state_bytes, _mib(p.state_bytes)),
        ("kv_cache_bytes", "Full KV cache would take", p.kv_cache_bytes, _mib(p.kv_cache_bytes)),
    ]
    body = "".join(
        f'<tr><td>{html.escape(name)}</td><td class="num" data-stat="{key}" data-value="{value}">{html.escape(text)}'
        f"</td></tr>" for key, name, value, text in rows
    )
    return (f'<div><b>Session</b> <code data-stat="session">{html.escape(label)}</code>'
            f"<table>{body}</table><small>KV cache / state: {ratio:,.2f}x</small></div>")


def plot_frame(p: Panel) -> pd.DataFrame:
    rows = []
    for tokens, state, kv in p.points:
        rows.append({"tokens": tokens, "MiB": state / 2**20, "memory": STATE_SERIES})
        rows.append({"tokens": tokens, "MiB": kv / 2**20, "memory": KV_SERIES})
    return pd.DataFrame(rows, columns=["tokens", "MiB", "memory"]).astype({"tokens": "int64", "MiB": "float64"})


def error_md(exc: BaseException) -> str:
    return f'<span class="demo-error">Error: {html.escape(str(exc))}</span>'


USER_ERRORS = (DemoError, ev.EventError, ValueError, LookupError)


def header_md(backend: DemoBackend) -> str:
    s = backend.status()
    lines = ["## comet-agents: a constant-size memory for LLM agents",
             "Text is absorbed chunk by chunk into a fixed-size memory state: no LLM call to write, the state "
             "never grows, recall comes from far back, and every version can be restored or forked."]
    if s["state"] == "loading":
        lines.append(f"**Loading the model `{s['model']}` in the background...** (the tabs work once it is ready)")
    elif s["state"] == "error":
        lines.append(f'<span class="demo-error">The model could not be loaded: {html.escape(s["error"])}</span>')
    else:
        lines.append(f"Model `{s['model']}` on `{s['device']}` ({s['dtype']}); memory state "
                     f"{_mib(s['state_bytes'])} per session, chunks of {s['chunk_size']} tokens.")
    if not s["trained"]:
        lines.append("> **Untrained adapter:** the trained CoMeT adapter has not shipped yet "
                     "(`comet_agents/weights/comet_adapter.safetensors` is absent), so answers are nonsense. "
                     "The sizes, speeds and the version history are real.")
    elif s.get("adapter_note"):
        lines.append(f"> **Adapter:** {html.escape(s['adapter_note'])}")
    return "\n\n".join(lines)


def build_demo(backend: DemoBackend) -> gr.Blocks:
    """The app's Blocks (not launched)."""

    def views(browser: str, current: str) -> tuple[Any, ...]:
        """(session label, panel, plot, sessions dropdown, timeline, events) for this browser's session."""
        p = backend.panel(browser, current)
        label = backend.label(browser, current)
        mem = backend.memory(browser, current)
        head = mem.version
        timeline = [[s.version, s.parent_version if s.parent_version is not None else "", s.branch, s.events,
                     s.tokens_absorbed + s.tokens_pending, s.reason,
                     "purged" if s.purged else ("replay" if not s.has_blob else "stored"),
                     f"{s.created_at:%Y-%m-%d %H:%M:%S}", "*" if s.version == head else ""]
                    for s in mem.history()]
        events = [[e.id, e.kind, "(forgotten)" if e.deleted else e.text.rstrip("\n")[:160]]
                  for e in mem.events(include_deleted=True)]
        choices = [(backend.label(browser, sid), sid) for sid in backend.sessions(browser)]
        return (
            f"Current session: **{html.escape(label)}**",
            panel_html(p, label),
            plot_frame(p),
            gr.Dropdown(choices=choices, value=current),
            pd.DataFrame(timeline, columns=TIMELINE_COLUMNS),
            pd.DataFrame(events, columns=EVENT_COLUMNS),
        )

    def safe_views(browser: str, current: str) -> tuple[Any, ...]:
        try:
            return views(browser, current)
        except USER_ERRORS:
            return tuple(gr.skip() for _ in range(6))

    def guarded(fn: Callable[..., tuple[Any, ...]], n_out: int) -> Callable[..., tuple[Any, ...]]:
        """Run a handler whose first output is a status; a user error shows there and changes nothing else."""

        @functools.wraps(fn)  # keeps the signature: Gradio injects gr.Progress by it
        def run(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as exc:
                msg = error_md(exc)
            except Exception as exc:  # a bug: say so in the page, keep serving
                log.exception("demo handler failed")
                msg = error_md(f"internal error ({type(exc).__name__}: {exc})")
            return msg if n_out == 1 else (msg,) + tuple(gr.skip() for _ in range(n_out - 1))

        return run

    with gr.Blocks(title="comet-agents demo", analytics_enabled=False) as demo:
        browser = gr.BrowserState(None, storage_key=STORAGE_KEY, secret=backend.browser_secret)
        current = gr.State(None)
        header = gr.Markdown(header_md(backend), elem_id="header")
        timer = gr.Timer(1.0, active=not backend.ready)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Chat", id="chat"):
                        gr.Markdown("Chat with the model: its only context is this session's CoMeT memory, and "
                                    "every turn is absorbed into it.")
                        chatbot = gr.Chatbot(label="Chat", height=320, elem_id="chatbot")
                        chat_in = gr.Textbox(label="Message", elem_id="chat-input", placeholder="Say something")
                        chat_btn = gr.Button("Send", variant="primary", elem_id="chat-send")
                        chat_status = gr.Markdown(elem_id="chat-status")
                    with gr.Tab("Stream", id="stream"):
                        gr.Markdown("Load a JSON Lines event log (upload one, paste it, or generate a synthetic "
                                    "stream), absorb it, then ask questions about it.")
                        with gr.Row():
                            kind = gr.Radio([("user behaviour", "user_behaviour"),
                                             ("agent trajectory", "agent_trajectory")], value=STREAM_KINDS[0],
                                            label="Synthetic stream", elem_id="stream-kind")
                            length = gr.Number(2000, precision=0, minimum=1, label="Length (tokens)",
                                               elem_id="stream-length")
                            gen_btn = gr.Button("Generate", elem_id="stream-generate")
                        upload = gr.File(label="Upload a JSON Lines event log (or a text file)", type="filepath",
                                         file_types=[".jsonl", ".ndjson", ".json", ".txt"], elem_id="upload",
                                         height=90)
                        log_box = gr.Textbox(label="Event log (JSON Lines)", lines=6, max_lines=10,
                                             elem_id="event-log")
                        absorb_btn = gr.Button("Absorb", variant="primary", elem_id="stream-absorb")
                        stream_status = gr.Markdown(elem_id="stream-status")
                        with gr.Row():
                            question = gr.Textbox(label="Question", elem_id="question", scale=3)
                            ask_btn = gr.Button("Ask", elem_id="ask", scale=1)
                        answer = gr.Textbox(label="Answer (from memory only)", interactive=False, elem_id="answer")
                        reference = gr.Markdown(elem_id="reference")
                    with gr.Tab("Pass key", id="passkey"):
                        gr.Markdown("Hide a pass key in a long filler text, absorb it, and ask for it.")
                        with gr.Row():
                            pk_tokens = gr.Slider(64, 32768, value=2048, step=64, label="Length (tokens)",
                                                  elem_id="passkey-tokens")
                            pk_depth = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Depth of the key",
                                                 elem_id="passkey-depth")
                        pk_btn = gr.Button("Build, absorb and ask", variant="primary", elem_id="passkey-run")
                        pk_result = gr.Markdown(elem_id="passkey-result")
                    with gr.Tab("Sessions", id="sessions"):
                        gr.Markdown("Your sessions (this browser's" + (", and everyone else's: the server shows all"
                                                                       if backend.show_all_sessions else " only")
                                    + "), their versions, and time travel: restore, fork, forget, delete.")
                        with gr.Row():
                            sess_dd = gr.Dropdown(label="Session", choices=[], elem_id="session-select", scale=2)
                            open_btn = gr.Button("Open", elem_id="session-open", scale=1)
                            new_name = gr.Textbox(label="New session name", elem_id="session-new-name", scale=2)
                            new_btn = gr.Button("New session", elem_id="session-new", scale=1)
                        timeline = gr.Dataframe(pd.DataFrame(columns=TIMELINE_COLUMNS), label="Versions (* = current)",
                                                interactive=False, elem_id="timeline")
                        with gr.Row():
                            version = gr.Textbox(label="Version (empty: current)", elem_id="version")
                            restore_btn = gr.Button("Restore version", elem_id="restore")
                            fork_name = gr.Textbox(label="Fork as (name)", elem_id="fork-name")
                            fork_btn = gr.Button("Fork (version, or current)", elem_id="fork")
                        events_df = gr.Dataframe(pd.DataFrame(columns=EVENT_COLUMNS), label="Events",
                                                 interactive=False, elem_id="events", max_height=260)
                        with gr.Row():
                            forget_ids = gr.Textbox(label="Event ids to forget", elem_id="forget-ids")
                            forget_btn = gr.Button("Forget events", elem_id="forget")
                            delete_btn = gr.Button("Delete this session", variant="stop", elem_id="delete")
                        sess_status = gr.Markdown(elem_id="sessions-status")
            with gr.Column(scale=2):
                current_md = gr.Markdown(elem_id="current-session")
                panel = gr.HTML(elem_id="panel")
                # No initial value: an empty initial frame leaves the chart without lines after updates.
                plot = gr.LinePlot(x="tokens", y="MiB",
                                   color="memory", title="Memory against history length", x_title="tokens",
                                   y_title="MiB", height=260, elem_id="plot")

        view_outputs = [current_md, panel, plot, sess_dd, timeline, events_df]

        # ---- page load: a browser id kept in local storage, the browser's main session ----------------------
        def on_load(browser_id: Any) -> tuple[Any, ...]:
            if not valid_browser_id(browser_id):
                browser_id = new_browser_id()
            sid = backend.session_id(browser_id, MAIN_SESSION)
            if not backend.ready:
                return (browser_id, sid, header_md(backend)) + tuple(gr.skip() for _ in view_outputs)
            return (browser_id, sid, header_md(backend)) + views(browser_id, sid)

        demo.load(on_load, inputs=[browser], outputs=[browser, current, header, *view_outputs])

        def on_tick(browser_id: Any, sid: Any) -> tuple[Any, ...]:
            if not backend.ready:
                return (header_md(backend), gr.Timer(active=backend.status()["state"] == "loading")) + tuple(
                    gr.skip() for _ in view_outputs)
            more = safe_views(browser_id, sid) if valid_browser_id(browser_id) and sid else tuple(
                gr.skip() for _ in view_outputs)
            return (header_md(backend), gr.Timer(active=False)) + more

        timer.tick(on_tick, inputs=[browser, current], outputs=[header, timer, *view_outputs])

        # ---- chat ---------------------------------------------------------------------------------------------
        def on_chat(message: str, history: list[dict[str, Any]] | None, browser_id: str, sid: str):
            skip = tuple(gr.skip() for _ in view_outputs)
            try:
                pieces = backend.chat_stream(browser_id, sid, message)
            except USER_ERRORS as exc:
                yield (error_md(exc), gr.skip(), gr.skip()) + skip
                return
            history = [{"role": m["role"], "content": _text(m["content"])} for m in (history or [])]
            history += [{"role": "user", "content": message.strip()}, {"role": "assistant", "content": ""}]
            reply = ""
            try:
                for piece in pieces:
                    reply += piece
                    history[-1]["content"] = reply
                    yield ("", "", history) + skip
                version = backend.absorb_turn(browser_id, sid, message, reply)
            except USER_ERRORS as exc:
                yield (error_md(exc), gr.skip(), history) + skip
                return
            yield (f"Turn absorbed; version {version}.", "", history) + views(browser_id, sid)

        chat_outputs = [chat_status, chat_in, chatbot, *view_outputs]
        chat_btn.click(on_chat, [chat_in, chatbot, browser, current], chat_outputs)
        chat_in.submit(on_chat, [chat_in, chatbot, browser, current], chat_outputs)

        # ---- stream -----------------------------------------------------------------------------------------
        def on_generate(kind_value: str, n: Any):
            if n is None or int(n) < 1:
                raise DemoError("the stream length must be at least 1 token")
            if int(n) > 1_000_000:
                raise DemoError("the stream length is limited to 1,000,000 tokens in the demo")
            events = synthetic_events(kind_value, int(n), backend.count_tokens)
            q = suggested_question(events)
            ref = f"Answer read off the log: **{html.escape(q[1])}**" if q else ""
            return (f"Generated {len(events)} events (about {int(n):,} tokens). Press **Absorb**.",
                    events_jsonl(events), None, q[0] if q else "", ref)

        gen_btn.click(guarded(on_generate, 5), [kind, length],
                      [stream_status, log_box, upload, question, reference])

        def on_upload(path: str | None):
            if not path:
                return ("",)
            events = parse_events(read_upload(path, backend.max_upload_bytes), os.path.basename(path))
            return (f"`{html.escape(os.path.basename(path))}`: {len(events)} valid events. Press **Absorb**.",)

        def on_upload_safe(path: str | None):
            out = guarded(on_upload, 2)(path)
            if out[0].startswith('<span class="demo-error"'):
                return out[0], None  # refuse the file: nothing stays selected
            return out[0], gr.skip()

        upload.upload(on_upload_safe, [upload], [stream_status, upload])

        def on_absorb(path: str | None, text: str, browser_id: str, sid: str, progress=gr.Progress()):
            if path:
                events = parse_events(read_upload(path, backend.max_upload_bytes), os.path.basename(path))
            elif text and text.strip():
                events = parse_events(text.encode("utf-8"), "log.jsonl" if text.lstrip().startswith("{") else "")
            else:
                raise DemoError("nothing to absorb: generate a stream, paste a log or upload a file first")

            def report(done: int, total: int) -> None:
                progress(done / max(total, 1), desc=f"absorbing: {done:,} / {total:,} tokens")

            r = backend.absorb(browser_id, sid, events, report)
            msg = (f"Absorbed {r.events} events ({r.tokens:,} tokens) in {r.seconds:.2f} s: "
                   f'<span id="tokens-per-s">{r.tokens_per_s:,.0f}</span> tokens/s; version {r.version}.')
            return (msg, None) + views(browser_id, sid)

        absorb_btn.click(guarded(on_absorb, 8), [upload, log_box, browser, current],
                         [stream_status, upload, *view_outputs])

        def on_ask(q: str, browser_id: str, sid: str):
            t0 = time.perf_counter()
            text = backend.ask(browser_id, sid, q)
            return (f"Answered from memory in {time.perf_counter() - t0:.2f} s.", text)

        ask_btn.click(guarded(on_ask, 2), [question, browser, current], [stream_status, answer])
        question.submit(guarded(on_ask, 2), [question, browser, current], [stream_status, answer])

        # ---- pass key ---------------------------------------------------------------------------------------
        def on_passkey(n: float, depth: float, progress=gr.Progress()):
            def report(done: int, total: int) -> None:
                progress(done / max(total, 1), desc=f"absorbing: {done:,} / {total:,} tokens")

            r = backend.passkey(int(n), float(depth), progress=report)
            verdict = "correct" if r.correct else "wrong"
            return (
                f"Pass key **{r.key}** hidden at {r.depth:.0%} of {r.tokens:,} tokens.\n\n"
                f'Answer: <code id="passkey-answer">{html.escape(r.answer)}</code> ({verdict})\n\n'
                f"Absorb: {r.absorb_seconds:.2f} s ({r.tokens_per_s:,.0f} tokens/s); answer: {r.answer_seconds:.2f} s\n\n"
                f"Memory used: {_mib(r.state_bytes)} of state; a KV cache of the haystack would take "
                f"{_mib(r.kv_cache_bytes)}."
            )

        pk_btn.click(guarded(on_passkey, 1), [pk_tokens, pk_depth], [pk_result])

        # ---- sessions ---------------------------------------------------------------------------------------
        def on_open(sel: str, browser_id: str, sid: str):
            if not sel:
                raise DemoError("choose a session first")
            backend.memory(browser_id, sel, create=False)
            return ("Opened.", sel, []) + views(browser_id, sel)

        def on_new(name: str, browser_id: str, sid: str):
            new = backend.new_session(browser_id, name)
            return (f"Session {html.escape(name.strip())!s} ready.", new, []) + views(browser_id, new)

        def on_restore(text: str, browser_id: str, sid: str):
            v = _version(text)
            if v is None:
                raise DemoError("type the version to restore (see the versions table)")
            backend.restore(browser_id, sid, v)
            return (f"Restored version {int(v)}.", sid, gr.skip()) + views(browser_id, sid)

        def on_fork(name: str, text: str, browser_id: str, sid: str):
            v = _version(text)
            new = backend.fork(browser_id, sid, name, v)
            what = "the current state" if v is None else f"version {v}"
            return (f"Forked {what} into {html.escape(name.strip())}; it is now the current session.", new, []) + \
                views(browser_id, new)

        def on_forget(ids: str, browser_id: str, sid: str):
            done = backend.forget(browser_id, sid, parse_ids(ids))
            return (f"Forgot events {', '.join(map(str, done)) or '(already forgotten)'}; the memory was rebuilt "
                    "without them.", sid, gr.skip()) + views(browser_id, sid)

        def on_delete(browser_id: str, sid: str):
            label = backend.label(browser_id, sid)
            backend.delete(browser_id, sid)
            main = backend.session_id(browser_id, MAIN_SESSION)
            return (f"Deleted session {html.escape(label)}.", main, []) + views(browser_id, main)

        sess_outputs = [sess_status, current, chatbot, *view_outputs]
        n_sess = len(sess_outputs)
        open_btn.click(guarded(on_open, n_sess), [sess_dd, browser, current], sess_outputs)
        new_btn.click(guarded(on_new, n_sess), [new_name, browser, current], sess_outputs)
        restore_btn.click(guarded(on_restore, n_sess), [version, browser, current], sess_outputs)
        fork_btn.click(guarded(on_fork, n_sess), [fork_name, version, browser, current], sess_outputs)
        forget_btn.click(guarded(on_forget, n_sess), [forget_ids, browser, current], sess_outputs)
        delete_btn.click(guarded(on_delete, n_sess), [browser, current], sess_outputs)
    return demo


TIMELINE_COLUMNS = ["version", "parent", "branch", "events", "tokens", "reason", "state", "created (UTC)", "current"]
EVENT_COLUMNS = ["id", "kind", "text"]


def _version(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise DemoError(f"a version is a whole number, got {text!r}")
    return int(text)


def _text(content: Any) -> str:
    """A chatbot message's content as text (Gradio delivers it as a list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def launch(backend: DemoBackend, *, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Serve the demo (``block=False``: in a background thread; the Blocks is returned, ``.local_url`` set)."""
    demo = build_demo(backend)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, share=share, ssr_mode=False, prevent_thread_lock=not block,
                quiet=quiet, show_error=True, css=CSS, max_file_size=10 * backend.max_upload_bytes)
    return demo
