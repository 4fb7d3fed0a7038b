"""ComeTMemory on a tiny random Llama with a character tokenizer: durability, bit-exact replay, time travel,
forget, tenants, bad input, conflicts, async, chat, batched absorb. Key tests run on SQLite, PostgreSQL and
MariaDB."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import sqlalchemy as sa
import torch

from comet_agents import CoMeTMemory, ComeTMemory
from comet_agents import events as ev
from comet_agents import memory as memory_mod
from comet_agents.memory import absorb_batch, shared_engine, state_digest
from comet_agents.state import CorruptStateError, StateMismatchError
from comet_agents.store import (
    ConflictError,
    CorruptSnapshotError,
    SessionNotFoundError,
    SessionRow,
    SnapshotPartRow,
    SnapshotPurgedError,
    Store,
    VersionNotFoundError,
)

from dbs import BACKENDS, dump, temp_store
from tiny import tiny_chat_model

EVENTS = [
    "The grass is green and the sky is blue.",
    {"type": "message", "role": "user", "content": "I'm vegetarian and I live in Lyon."},
    {"type": "thought", "text": "I should remember the city."},
    {"type": "tool_call", "tool": "search", "arguments": {"query": "restaurants in Lyon", "limit": 5}},
    {"type": "observation", "tool": "search", "content": "Le Potager, La Cantine, Chez Marie"},
    {"type": "final_answer", "text": "Try Le Potager."},
    {"type": "user_event", "kind": "purchase", "item": "Blue running shoes",
     "attributes": {"price": 59.9, "size": 42}, "timestamp": "2026-03-01T10:22:00"},
]
Q = "Where does the user live?"
CHAT = [{"role": "system", "content": "Answer from memory."}, {"role": "user", "content": Q}]


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model()


@pytest.fixture(params=BACKENDS)
def any_store(request, tmp_path):
    with temp_store(request.param, tmp_path) as st:
        yield st


@pytest.fixture
def store(tmp_path):
    with temp_store("sqlite", tmp_path) as st:
        yield st


def fresh_digest(model, events) -> str:
    """Digest of the state of an uninterrupted in-memory run over ``events`` (no store involved)."""
    engine = shared_engine(model)
    state = engine.new_state()
    for e in events:
        engine.absorb(state, engine.encode(ev.render(e)))
    return state_digest(state)


def session_rows(store: Store, tenant: str, session_id: str) -> dict[str, list[tuple]]:
    """The rows of one session in every table (to prove that it was not touched)."""
    with store.engine.connect() as conn:
        pk = conn.execute(sa.select(SessionRow.pk).where(SessionRow.tenant == tenant,
                                                         SessionRow.session_id == session_id)).scalar_one()
    return {t: [r for r in rows if r[0] == pk] for t, rows in dump(store).items()}  # pk / session_pk come first


# ---- durability and bit-exact replay ----------------------------------------------------------------------------


def test_absorb_recall_snapshot_and_reopen_are_bit_exact(any_store: Store, model) -> None:
    mem = ComeTMemory("alice", store=any_store, model=model, snapshot_every=3)
    ids = mem.absorb(EVENTS[:3]) + mem.absorb(EVENTS[3]) + mem.absorb(EVENTS[4:])
    assert ids == list(range(1, len(EVENTS) + 1))
    digest, answer = state_digest(mem.state), mem.recall(Q, max_new_tokens=8)
    assert digest == fresh_digest(model, EVENTS)
    assert mem.history() and mem.history()[-1].reason == "auto"  # snapshot_every=3 chunks
    mem.close()  # snapshots the tail
    again = ComeTMemory("alice", store=any_store, model=model)
    assert state_digest(again.state) == digest and again.recall(Q, max_new_tokens=8) == answer
    assert again.stats.events == len(EVENTS) and again.stats.events_since_snapshot == 0
    # Events after the last snapshot are replayed on reopening (no close: a crash, as far as the store knows).
    again.snapshot_on_close = False
    again.absorb("One more fact: the cat is called Tom.")
    del again
    third = ComeTMemory("alice", store=any_store, model=model)
    assert state_digest(third.state) == fresh_digest(model, EVENTS + ["One more fact: the cat is called Tom."])
    assert third.stats.events_since_snapshot == 1
    stored = third.events()
    assert [e.text for e in stored] == [ev.render(e) for e in EVENTS] + ["One more fact: the cat is called Tom.\n"]
    assert stored[1].payload == ev.to_dict(ev.parse_event(EVENTS[1])) and stored[1].kind == "message"


def test_absorb_accepts_text_bytes_events_and_lists(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model)
    assert mem.absorb("plain text") == [1]
    assert mem.absorb("bytes are UTF-8: é".encode()) == [2]
    assert mem.absorb(ev.ChatMessage("user", "hi")) == [3]
    assert mem.absorb([{"type": "thought", "text": "a"}, ev.FinalAnswer("b")]) == [4, 5]
    assert mem.absorb_jsonl('{"type": "text", "text": "x"}\n\n{"type": "text", "text": "y"}\n') == [6, 7]
    assert [e.kind for e in mem.events()] == ["text", "text", "message", "thought", "final_answer", "text", "text"]


def test_stats_and_constant_state_size(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    empty = mem.stats
    assert (empty.events, empty.chunks, empty.version, empty.tokens_absorbed) == (0, 0, None, 0)
    mem.absorb(EVENTS)
    s = mem.stats
    n_tokens = sum(len(mem.engine.encode(ev.render(e))) for e in EVENTS)
    assert s.tokens_absorbed + s.tokens_pending == n_tokens and s.chunks == n_tokens // 12
    assert s.events == len(EVENTS) == s.events_since_snapshot and s.last_event_id == len(EVENTS)
    v = mem.snapshot()
    assert mem.stats["version"] == v == mem.version and mem.stats.events_since_snapshot == 0
    assert mem.snapshot() == v  # nothing new: same version
    mem.absorb(EVENTS * 3)
    assert mem.stats.state_bytes - mem.stats.tokens_pending * 8 == s.state_bytes - s.tokens_pending * 8
    assert set(mem.stats.keys()) >= {"tokens_absorbed", "chunks", "state_bytes", "events", "version"}


def test_snapshot_every_and_keep_snapshots(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=2, keep_snapshots=2)
    for e in EVENTS:
        mem.absorb(e)
    history = mem.history()
    autos = [h for h in history if h.reason == "auto"]
    assert len(autos) >= 4
    assert sum(h.has_blob for h in autos) == 2 and all(h.sha256 for h in autos)  # pruned, digests kept
    for a, b in zip(history, history[1:]):
        assert b.chunks - a.chunks >= 2 and b.parent_version == a.version


def test_sessions_share_one_model(store: Store, model, monkeypatch) -> None:
    a, b = ComeTMemory("a", store=store, model=model), ComeTMemory("b", store=store, model=model)
    assert a.engine is b.engine
    loads = []
    monkeypatch.setattr(memory_mod, "_load_model", lambda name, device: loads.append(name) or tiny_chat_model())
    monkeypatch.setattr(memory_mod, "_BY_NAME", {})
    c = ComeTMemory("c", store=store, model="some-name")
    d = ComeTMemory("d", store=store, model="some-name")
    assert loads == ["some-name"] and c.engine is d.engine
    assert CoMeTMemory is ComeTMemory


# ---- time travel ------------------------------------------------------------------------------------------------


def test_restore_then_recall_equals_the_recall_made_when_the_version_was_current(any_store: Store, model) -> None:
    mem = ComeTMemory("s", store=any_store, model=model, snapshot_every=None)
    mem.absorb(EVENTS[:3])
    v1, d1, r1 = mem.snapshot(), state_digest(mem.state), mem.recall(Q, max_new_tokens=12)
    mem.absorb(EVENTS[3:])
    v2, d2, r2 = mem.snapshot(), state_digest(mem.state), mem.recall(Q, max_new_tokens=12)
    assert d1 != d2
    mem.restore(v1)
    assert state_digest(mem.state) == d1 and mem.recall(Q, max_new_tokens=12) == r1
    assert mem.version == v1 and [e.id for e in mem.events()] == [1, 2, 3]
    mem.absorb("A new branch of history.")
    v3 = mem.snapshot()
    assert mem.history()[-1].parent_version == v1
    assert state_digest(mem.state) == fresh_digest(model, EVENTS[:3] + ["A new branch of history."])
    # Later versions stay restorable (v2 is not an ancestor of the head any more).
    mem.restore(v2)
    assert state_digest(mem.state) == d2 and mem.recall(Q, max_new_tokens=12) == r2
    mem.close()
    # The head is persistent: reopening continues from v2's history.
    again = ComeTMemory("s", store=any_store, model=model)
    assert state_digest(again.state) == d2 and [e.id for e in again.events()] == list(range(1, len(EVENTS) + 1))
    again.restore(v3)
    assert [e.text for e in again.events()][-1] == "A new branch of history.\n"
    assert len(again.events(all_branches=True)) == len(EVENTS) + 1  # nothing was ever dropped from the log


def test_restore_snapshots_unsaved_events_first(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    mem.absorb(EVENTS[:2])
    v1 = mem.snapshot()
    mem.absorb(EVENTS[2:])
    tip = state_digest(mem.state)
    mem.restore(v1)
    auto = mem.history()[-1]
    assert auto.reason == "auto" and auto.last_seq == len(EVENTS)
    mem.restore(auto.version)
    assert state_digest(mem.state) == tip


def test_a_pruned_version_is_rebuilt_by_replay(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=1, keep_snapshots=1)
    for e in EVENTS:
        mem.absorb(e)
    pruned = [h for h in mem.history() if not h.has_blob]
    assert pruned
    target = pruned[len(pruned) // 2]
    mem.restore(target.version)
    assert state_digest(mem.state) == target.state_digest
    assert state_digest(mem.state) == fresh_digest(model, [e.payload for e in mem.events()])
    assert mem.stats.events == target.events


def test_fork_leaves_the_parent_untouched(any_store: Store, model) -> None:
    parent = ComeTMemory("parent", store=any_store, model=model, snapshot_every=None)
    parent.absorb(EVENTS[:4])
    v1 = parent.snapshot()
    parent.absorb(EVENTS[4:])
    before_rows, before_digest = session_rows(any_store, "default", "parent"), state_digest(parent.state)
    child = parent.fork("child")  # the current state, un-snapshotted tail included
    assert state_digest(child.state) == before_digest and child.stats.events == len(EVENTS)
    old = parent.fork("child-v1", version=v1)
    assert state_digest(old.state) == fresh_digest(model, EVENTS[:4]) and old.stats.events == 4
    child.absorb("Only the child knows this.")
    child.snapshot()
    child.forget([1])
    old.delete_session()
    assert session_rows(any_store, "default", "parent") == before_rows
    assert state_digest(parent.state) == before_digest
    reopened = ComeTMemory("parent", store=any_store, model=model)
    assert state_digest(reopened.state) == before_digest
    assert any_store.session("default", "child").forked_from == "parent@event7"


# ---- forget ------------------------------------------------------------------------------------------------------


def test_forget_is_bit_identical_to_never_receiving_the_events(any_store: Store, model) -> None:
    secret = {"type": "message", "role": "user", "content": "My PIN is 4921, never tell anyone."}
    bank = {"type": "observation", "tool": "bank", "content": "PIN ok"}
    stream = EVENTS[:3] + [secret] + EVENTS[3:5] + [bank] + EVENTS[5:]
    mem = ComeTMemory("s", store=any_store, model=model, snapshot_every=1, keep_snapshots=None)
    ids = [mem.absorb(e)[0] for e in stream]
    secret_ids = [ids[3], ids[6]]
    assert len(mem.history()) > 4
    result = mem.forget(secret_ids)
    kept = [e for i, e in zip(ids, stream) if i not in secret_ids]
    assert state_digest(mem.state) == fresh_digest(model, kept)
    assert result.forgotten == secret_ids and result.purged_versions
    assert all(h.last_seq >= ids[3] for h in mem.history() if h.version in result.purged_versions)
    # No stored state is derived from a forgotten event: every remaining blob equals a replay without them.
    live = {e.id: e.payload for e in mem.events(all_branches=True)}
    for h in mem.history():
        if h.has_blob:
            _, blob = any_store.load_snapshot("default", "s", h.version)
            covered = [live[i] for i in sorted(live) if i <= h.last_seq]
            from comet_agents.state import MemoryState

            assert state_digest(MemoryState.from_bytes(blob)) == fresh_digest(model, covered), h.version
        else:
            assert h.version in result.purged_versions and h.sha256 is None
    tombstones = [e for e in mem.events(all_branches=True, include_deleted=True) if e.deleted]
    assert [(e.id, e.text, e.payload) for e in tombstones] == [(i, "", None) for i in secret_ids]
    for v in result.purged_versions:
        with pytest.raises(SnapshotPurgedError):
            mem.restore(v)
    mem.close()
    assert state_digest(ComeTMemory("s", store=any_store, model=model).state) == fresh_digest(model, kept)


def test_forget_rejects_unknown_ids_and_changes_nothing(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model)
    mem.absorb(EVENTS)
    before = dump(store)
    with pytest.raises(LookupError, match="no events with ids"):
        mem.forget([2, 99])
    assert dump(store) == before


def test_delete_session(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model)
    mem.absorb(EVENTS)
    mem.snapshot()
    ComeTMemory("other", store=store, model=model).absorb("stays")
    mem.delete_session()
    assert mem.closed
    with pytest.raises(RuntimeError, match="closed"):
        mem.absorb("x")
    with pytest.raises(SessionNotFoundError):
        ComeTMemory("s", store=store, model=model, create=False)
    assert [s.session_id for s in store.list_sessions("default")] == ["other"]
    assert len(dump(store)["comet_events"]) == 1


# ---- tenants -----------------------------------------------------------------------------------------------------


def test_a_tenant_cannot_read_restore_fork_or_delete_another_tenants_session(any_store: Store, model) -> None:
    a = ComeTMemory("alice", tenant="A", store=any_store, model=model)
    a.absorb(EVENTS)
    va = a.snapshot()
    rows_a = session_rows(any_store, "A", "alice")
    with pytest.raises(SessionNotFoundError):  # read
        ComeTMemory("alice", tenant="B", store=any_store, model=model, create=False)
    b = ComeTMemory("alice", tenant="B", store=any_store, model=model)  # B's own, empty session of that name
    assert b.events() == [] and b.history() == [] and b.stats.events == 0
    with pytest.raises(VersionNotFoundError):  # restore A's version
        b.restore(va)
    with pytest.raises(VersionNotFoundError):  # fork A's version
        b.fork("stolen", version=va)
    forked = b.fork("b-copy")
    assert forked.events() == []
    b.delete_session()  # deletes B's session only
    with pytest.raises(SessionNotFoundError):
        any_store.session("B", "alice")
    assert session_rows(any_store, "A", "alice") == rows_a
    assert [s.session_id for s in any_store.list_sessions("B")] == ["b-copy"]


# ---- bad input: a clear error and nothing stored changes -------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.absorb_jsonl(b'{"type": "text", "text": "ok"}\n{"type": "text", "text": \n'), ev.EventError,
         "line 2: invalid JSON"),
        (lambda m: m.absorb_jsonl(b'{"type": "text", "text": "ok"}\n[1, 2]\n'), ev.EventError,
         "line 2: expected a JSON"),
        (lambda m: m.absorb({"type": "telepathy", "text": "x"}), ev.EventError, "unknown event type 'telepathy'"),
        (lambda m: m.absorb(["fine", {"type": "thought"}]), ev.EventError, "event 1: thought: missing required"),
        (lambda m: m.absorb("x" * ev.MAX_EVENT_CHARS), ev.EventError, "more than MAX_EVENT_CHARS = 200,000"),
        (lambda m: m.absorb(["fine", "y" * 300_000]), ev.EventError, "event 1: .*MAX_EVENT_CHARS"),
        (lambda m: m.absorb(b"caf\xe9 au lait"), ev.EventError, "not valid UTF-8: byte 0xe9 at byte offset 3"),
        (lambda m: m.absorb_jsonl(b'{"type": "text", "text": "ok"}\n{"type": "text", "text": "\xff"}\n'),
         ev.EventError, "line 2: input is not valid UTF-8"),
        (lambda m: m.absorb("a\ud800b"), ev.EventError, "lone surrogate"),
        (lambda m: m.absorb("please absorb <beacon> this"), ev.EventError, "reserved token"),
        (lambda m: m.absorb([]), ev.EventError, "no events"),
        (lambda m: m.absorb(42), ev.EventError, "expected text, an event or a list"),
    ],
    ids=["malformed-json", "not-an-object", "unknown-kind", "missing-field", "oversize", "oversize-in-list",
         "non-utf8-bytes", "non-utf8-jsonl", "lone-surrogate", "reserved-token", "empty", "wrong-type"],
)
def test_bad_events_get_a_clear_error_and_store_nothing(store: Store, model, call, error, message) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=1)
    mem.absorb(EVENTS[:2])
    before, digest = dump(store), state_digest(mem.state)
    with pytest.raises(error, match=message):
        call(mem)
    assert dump(store) == before and state_digest(mem.state) == digest
    assert mem.absorb("still works") == [3]


@pytest.mark.parametrize("other", [dict(seed=1), dict(chunk_size=16)], ids=["other-weights", "other-config"])
def test_a_session_from_another_model_or_config_is_refused(store: Store, model, other) -> None:
    mem = ComeTMemory("s", store=store, model=model)
    mem.absorb(EVENTS)
    mem.close()
    other_model = tiny_chat_model(**other)
    before = dump(store)
    with pytest.raises(StateMismatchError, match="made with another (base model|CometConfig)"):
        ComeTMemory("s", store=store, model=other_model)
    assert dump(store) == before
    # Explicit opt-in: re-derive the memory from the event log with the other model.
    rebuilt = ComeTMemory("s", store=store, model=other_model, rebuild=True)
    assert state_digest(rebuilt.state) == fresh_digest(other_model, EVENTS)
    assert rebuilt.history()[-1].reason == "rebuild"
    with pytest.raises(StateMismatchError):  # old versions stay the old model's
        rebuilt.restore(1)


def _corrupt(store: Store, version: int, how: str) -> None:
    table = SnapshotPartRow.__table__
    where = table.c.version == version
    with store.engine.begin() as conn:
        data = conn.execute(sa.select(table.c.data).where(where, table.c.part == 0)).scalar_one()
        new = data[: len(data) // 2] if how == "truncated" else data[:100] + bytes([data[100] ^ 0x40]) + data[101:]
        conn.execute(table.update().where(where, table.c.part == 0).values(data=new))


@pytest.mark.parametrize("how", ["truncated", "tampered"])
def test_a_damaged_snapshot_is_refused_and_the_store_left_as_is(store: Store, model, how) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    mem.absorb(EVENTS[:3])
    v1 = mem.snapshot()
    mem.absorb(EVENTS[3:])
    v2 = mem.snapshot()
    mem.close()
    _corrupt(store, v2, how)
    before = dump(store)
    with pytest.raises(CorruptSnapshotError, match="truncated" if how == "truncated" else "sha256"):
        ComeTMemory("s", store=store, model=model)
    assert dump(store) == before
    # Restoring a damaged version fails before the head moves.
    _corrupt(store, v1, how)
    ok = ComeTMemory("s", store=store, model=model, rebuild=True)  # skips damaged versions, replays the log
    assert state_digest(ok.state) == fresh_digest(model, EVENTS)
    head = store.session("default", "s")
    with pytest.raises(CorruptStateError):
        ok.restore(v1)
    assert store.session("default", "s").head_version == head.head_version
    assert isinstance(CorruptSnapshotError("x"), CorruptStateError)


# ---- concurrency within a process -------------------------------------------------------------------------------


def test_a_stale_writer_gets_a_conflict_or_catches_up(any_store: Store, model) -> None:
    m1 = ComeTMemory("s", store=any_store, model=model, snapshot_every=None)
    m2 = ComeTMemory("s", store=any_store, model=model, snapshot_every=None, max_retries=0)
    m1.absorb("from m1")
    before = dump(any_store)
    with pytest.raises(ConflictError, match="changed by another writer"):
        m2.absorb("from m2")
    assert dump(any_store) == before
    m2.max_retries = 3
    assert m2.absorb("from m2") == [2]  # caught up with m1's event, then appended
    m1.absorb("m1 again")  # m1 catches up with m2's
    texts = ["from m1", "from m2", "m1 again"]
    for m in (m1, m2):
        m.refresh()
        assert state_digest(m.state) == fresh_digest(model, texts)
    # recall refreshes by default, so m2 answers from m1's latest event too
    assert m2.recall(Q, max_new_tokens=4) == m1.recall(Q, max_new_tokens=4)
    # A restore decided on a stale view is not retried.
    v = m1.snapshot()
    m2.absorb("m2 moves on")
    with pytest.raises(ConflictError):
        m1.restore(v)
    m1.restore(v)  # m1 refreshed when it failed; now it decides again with the current view
    assert [e.text for e in m1.events()] == [t + "\n" for t in texts]


# ---- async ------------------------------------------------------------------------------------------------------


def test_async_variants_keep_the_event_loop_responsive(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    long_text = "The quick brown fox jumps over the lazy dog. " * 100  # ~380 chunks

    async def main():
        ticks: list[float] = []
        done = False

        async def ticker():
            while not done:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        ids = await mem.aabsorb(long_text)
        busy = time.perf_counter() - t0
        answer = await mem.arecall(Q, max_new_tokens=4)
        v = await mem.asnapshot()
        order = await asyncio.gather(*[mem.aabsorb(f"event {i}") for i in range(5)])
        history = await mem.ahistory()
        await mem.arestore(v)
        fork = await mem.afork("s2")
        result = await mem.aforget(ids)
        done = True
        await t
        await mem.aclose()
        return ticks, busy, answer, order, history, fork, result

    ticks, busy, answer, order, history, fork, result = asyncio.run(main())
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert busy > 0.2 and len(ticks) > busy / 0.05  # the loop kept ticking while the absorb ran
    # Never blocked for long: an absorb run on the loop's thread would leave one gap as long as the absorb. Not
    # a fixed bound: on the loaded 2-core CI machine one gap reached 0.65 s (2026-12-04; the absorb takes about
    # 2 s, and the gaps are about 15 ms on an idle machine).
    assert max(gaps) < busy / 2, (max(gaps), busy)
    assert isinstance(answer, str) and order == [[2], [3], [4], [5], [6]]  # calls on one session keep their order
    assert [h.version for h in history] == [1] and fork.session_id == "s2" and result.forgotten == [1]
    assert mem.closed


# ---- chat ---------------------------------------------------------------------------------------------------------


def test_chat_and_stream_chat_answer_from_memory_and_change_nothing(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    mem.absorb(EVENTS)
    digest, before = state_digest(mem.state), dump(store)
    answer = mem.chat(CHAT, max_new_tokens=24)
    assert answer and answer == mem.engine.chat(mem.state, CHAT, max_new_tokens=24)
    assert "".join(mem.stream_chat(CHAT, max_new_tokens=24)) == answer
    assert mem.chat(CHAT) == mem.chat(CHAT, max_new_tokens=mem.max_new_tokens)
    assert mem.chat([{"role": "user", "content": Q}], max_new_tokens=8) == mem.recall(Q, max_new_tokens=8)
    assert mem.count_tokens("hello") == 5 and mem.count_tokens(ev.render(EVENTS[1])) == mem.events()[1].n_tokens
    assert state_digest(mem.state) == digest and dump(store) == before  # read, never absorbed or stored
    with pytest.raises(ValueError, match="role 'wizard' is not one of"):
        mem.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="messages is empty"):
        mem.stream_chat([])  # raised at the call
    with pytest.raises(ValueError, match="does not fit the base model"):
        mem.stream_chat([{"role": "user", "content": "x" * 1000}])


def test_a_stream_reads_a_copy_so_absorbs_neither_wait_nor_change_its_answer(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    mem.absorb(EVENTS)
    expected = mem.chat(CHAT, max_new_tokens=30)
    stream = mem.stream_chat(CHAT, max_new_tokens=30)
    first, before = next(stream), state_digest(mem.state)
    mem.absorb("The user moved to Paris last week. " * 3)  # same thread, mid-stream: no lock is held
    other = ComeTMemory("t", store=store, model=model)
    worker = threading.Thread(target=lambda: (mem.absorb("From a thread."), other.absorb(EVENTS)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert state_digest(mem.state) != before
    assert first + "".join(stream) == expected
    assert mem.chat(CHAT, max_new_tokens=30) == mem.engine.chat(mem.state, CHAT, max_new_tokens=30)


def test_achat_and_astream_chat_keep_the_event_loop_running(store: Store, model) -> None:
    mem = ComeTMemory("s", store=store, model=model, snapshot_every=None)
    mem.absorb(EVENTS)
    expected = mem.chat(CHAT, max_new_tokens=60)

    async def main():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        answer = await mem.achat(CHAT, max_new_tokens=60)
        pieces, seen = [], []
        async for piece in mem.astream_chat(CHAT, max_new_tokens=60):
            pieces.append(piece)
            seen.append(ticks)
        async for piece in mem.astream_chat(CHAT, max_new_tokens=60):
            break  # closing a stream early releases everything
        again = await asyncio.wait_for(mem.achat(CHAT, max_new_tokens=60), timeout=60)
        done = True
        await t
        return answer, pieces, seen, again

    answer, pieces, seen, again = asyncio.run(main())
    assert answer == expected == "".join(pieces) == again and len(pieces) > 1
    assert seen[-1] > seen[0]  # the loop ran other tasks while the stream decoded


# ---- batched absorb ----------------------------------------------------------------------------------------------


def assert_close_states(a, b) -> None:
    """Equal counters and pending tails, tensors within float rounding (what batching guarantees)."""
    assert a.pending == b.pending
    for name in ("has_global", "fifo_len", "chunks", "tokens_absorbed"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.global_state, b.global_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.fifo, b.fifo, atol=1e-5, rtol=1e-4)


def test_absorb_batch_stores_what_absorb_stores_and_lands_within_rounding(any_store: Store, model) -> None:
    batched = {s: ComeTMemory(s, store=any_store, model=model, snapshot_every=2) for s in "abc"}
    single = {s: ComeTMemory(s + "-single", store=any_store, model=model, snapshot_every=2) for s in "abc"}
    # Different lengths: in one batch the sessions sit at different FIFO fills and first-chunk states.
    rounds = [{"a": EVENTS[:2], "b": EVENTS, "c": "short"}, {"a": EVENTS[2:], "b": EVENTS[:1], "c": EVENTS[3:]}]
    for r in rounds:
        ids = absorb_batch({batched[s]: events for s, events in r.items()})
        assert ids == [single[s].absorb(events) for s, events in r.items()]
    pairs = absorb_batch([(batched["c"], ["x", "y"]), (batched["a"], "z")])  # a list of pairs, in its order
    assert pairs == [single["c"].absorb(["x", "y"]), single["a"].absorb("z")]
    assert absorb_batch({}) == []
    for s in "abc":
        b, one = batched[s], single[s]
        assert [(e.id, e.kind, e.payload, e.text) for e in b.events()] == [
            (e.id, e.kind, e.payload, e.text) for e in one.events()]
        assert_close_states(b.state, one.state)
        assert [(h.version, h.last_seq, h.chunks, h.reason) for h in b.history()] == [
            (h.version, h.last_seq, h.chunks, h.reason) for h in one.history()]  # auto snapshots as absorb's
        assert {**b.stats.to_dict(), "session_id": s} == {**one.stats.to_dict(), "session_id": s}


def test_after_absorb_batch_snapshots_restore_exactly_and_a_crash_rebuild_is_within_rounding(store: Store,
                                                                                               model) -> None:
    a = ComeTMemory("a", store=store, model=model, snapshot_every=None)
    b = ComeTMemory("b", store=store, model=model, snapshot_every=None, snapshot_on_close=False)
    absorb_batch({a: EVENTS, b: EVENTS[2:]})
    digest_a, state_b = state_digest(a.state), b.state.clone()
    v = a.snapshot()
    a.absorb("later")
    a.restore(v)
    assert state_digest(a.state) == digest_a
    a.close()
    assert state_digest(ComeTMemory("a", store=store, model=model).state) == digest_a  # reopened: the snapshot
    b.close()  # no snapshot: as after a crash, reopening replays the log one session at a time
    rebuilt = ComeTMemory("b", store=store, model=model)
    assert state_digest(rebuilt.state) == fresh_digest(model, EVENTS[2:])
    assert_close_states(rebuilt.state, state_b)


def test_absorb_batch_validates_every_session_before_storing_anything(store: Store, model) -> None:
    a = ComeTMemory("a", store=store, model=model, snapshot_every=1)
    b = ComeTMemory("b", store=store, model=model, snapshot_every=1)
    absorb_batch({a: EVENTS[:2], b: "first"})
    before, digests = dump(store), (state_digest(a.state), state_digest(b.state))
    bad = [
        ({a: EVENTS, b: ["fine", {"type": "telepathy", "text": "x"}]}, "session 'b': event 1: .*unknown event type 'telepathy'"),
        ({a: [], b: "fine"}, "session 'a': no events"),
        ({a: "fine", b: "please absorb <beacon> this"}, "session 'b': event 0: .*reserved token"),
        ({a: b"caf\xe9", b: "fine"}, "session 'a': input is not valid UTF-8"),
    ]
    for batch, message in bad:
        with pytest.raises(ev.EventError, match=message):
            absorb_batch(batch)
        assert dump(store) == before and (state_digest(a.state), state_digest(b.state)) == digests
    assert absorb_batch({a: "still works", b: "and here"}) == [[3], [2]]


def test_absorb_batch_refuses_two_models_and_a_session_given_twice(store: Store, model) -> None:
    a = ComeTMemory("a", store=store, model=model)
    elsewhere = ComeTMemory("o", store=store, model=tiny_chat_model())  # same weights, another loaded model
    before = dump(store)
    with pytest.raises(ValueError, match="sessions 'a' and 'o' are on different loaded models"):
        absorb_batch({a: "x", elsewhere: "y"})
    with pytest.raises(ValueError, match="session 'a' \\(tenant 'default'\\) is given twice"):
        absorb_batch({a: "x", ComeTMemory("a", store=store, model=model): "y"})
    with pytest.raises(ValueError, match="given twice"):
        absorb_batch([(a, "x"), (a, "y")])
    with pytest.raises(TypeError, match="item 0: expected \\(ComeTMemory, events\\)"):
        absorb_batch([("a", "x")])
    assert dump(store) == before
    # Another tenant's session of the same name is another session.
    other_tenant = ComeTMemory("a", tenant="B", store=store, model=model)
    assert absorb_batch({a: "x", other_tenant: "y"}) == [[1], [1]]


def test_absorb_batch_catches_up_with_other_writers(store: Store, model) -> None:
    a = ComeTMemory("a", store=store, model=model, snapshot_every=None)
    b = ComeTMemory("b", store=store, model=model, snapshot_every=None)
    a_elsewhere = ComeTMemory("a", store=store, model=model, snapshot_every=None)
    a_elsewhere.absorb("from another writer")  # a is stale now
    assert absorb_batch({a: "from the batch", b: "b"}) == [[2], [1]]
    assert a.conflicts_retried == 1
    assert [e.text for e in a.events()] == ["from another writer\n", "from the batch\n"]
    assert_close_states(a.state, ComeTMemory("a", store=store, model=model).state)


def test_concurrent_batches_lock_sessions_in_a_stable_order(store: Store, model) -> None:
    a = ComeTMemory("a", store=store, model=model, snapshot_every=None)
    b = ComeTMemory("b", store=store, model=model, snapshot_every=None)
    errors: list[BaseException] = []

    def run(first, second):
        try:
            for i in range(10):
                absorb_batch({first: f"{first.session_id}{i}", second: f"{second.session_id}{i}"})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a, b)), threading.Thread(target=run, args=(b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and not errors
    assert a.stats.events == b.stats.events == 20
    assert sorted(e.text for e in a.events()) == sorted([f"a{i}\n" for i in range(10)] * 2)


# ---- the real model ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_session_round_trip(store: Store) -> None:
    """ComeTMemory() on the real default model: absorb, snapshot, reopen with replay, recall (CPU)."""
    text = " ".join(f"Fact {i}: the locker code for room {i} is {1000 + 37 * i}." for i in range(60))
    mem = ComeTMemory("real", store=store, model="default", device="cpu", snapshot_every=None)
    mem.absorb(text)  # > one chunk of 1024 tokens
    v = mem.snapshot()
    mem.absorb("The user's favourite colour is teal. " * 40)
    digest, answer = state_digest(mem.state), mem.recall("What is the user's favourite colour?", max_new_tokens=8)
    assert mem.stats.chunks >= 1 and mem.history()[-1].size > 1_000_000
    del mem  # no close: the second absorb is only in the log
    again = ComeTMemory("real", store=store, model="default", device="cpu")
    assert again.version == v and again.stats.events_since_snapshot == 1
    assert state_digest(again.state) == digest
    assert again.recall("What is the user's favourite colour?", max_new_tokens=8) == answer
