"""The SQLAlchemy store on its own (no model): schema, URLs, blobs in parts, optimistic versions, lineage,
forget, fork, tenants. SQLite always; PostgreSQL and MariaDB for real when their URLs are set (.ci/run)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest
import sqlalchemy as sa

from comet_agents.store import (
    BLOB_PART_BYTES,
    ConflictError,
    CorruptSnapshotError,
    NewEvent,
    SessionExistsError,
    SessionNotFoundError,
    SnapshotPartRow,
    SnapshotPurgedError,
    StaleStateError,
    Store,
    VersionNotFoundError,
    default_url,
    open_store,
)

from dbs import BACKENDS, dump, temp_store

FP = dict(config_fingerprint="cfg", base_fingerprint="base", adapter_fingerprint="adp", config={"chunk_size": 12})


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    with temp_store(request.param, tmp_path) as st:
        yield st


def new_events(*texts: str) -> list[NewEvent]:
    return [NewEvent(kind="text", payload=json.dumps({"type": "text", "text": t}), text=t + "\n", n_tokens=len(t))
            for t in texts]


def save(store: Store, info, blob: bytes, last_seq: int, events: int, parent=None, reason="manual"):
    return store.save_snapshot(
        info.tenant, info.session_id, blob, branch=info.branch, epoch=info.epoch, last_seq=last_seq, events=events,
        parent_version=parent, reason=reason, state_digest=hashlib.sha256(blob).hexdigest(), tokens_absorbed=0,
        tokens_pending=0, chunks=0, **FP,
    )


# ---- URLs and SQLite set-up -----------------------------------------------------------------------------------


def test_default_url_is_a_sqlite_file_in_the_user_data_dir_and_env_overrides_it(monkeypatch, tmp_path) -> None:
    import platformdirs

    monkeypatch.delenv("COMET_AGENTS_STORE", raising=False)
    assert default_url() == f"sqlite:///{platformdirs.user_data_dir('comet-agents')}/memory.db"
    monkeypatch.setenv("COMET_AGENTS_STORE", "postgresql+psycopg://u@h/db")
    assert default_url() == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("COMET_AGENTS_STORE", str(tmp_path / "x" / "m.db"))
    assert default_url() == f"sqlite:///{tmp_path / 'x' / 'm.db'}"
    st = open_store()  # creates the folder and the schema on first use
    assert (tmp_path / "x" / "m.db").exists() and open_store() is st
    st.close()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path) -> None:
    with temp_store("sqlite", tmp_path) as st:
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        names = set(sa.inspect(st.engine).get_table_names())
        assert {"comet_sessions", "comet_events", "comet_snapshots", "comet_snapshot_parts",
                "comet_branches"} <= names


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="in-memory SQLite is not supported"):
        Store("sqlite://")


def test_schema_creation_is_idempotent(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    Store(url).close()
    Store(url).close()  # tables exist: nothing to do, no error


# ---- the store contract on every back-end -----------------------------------------------------------------------


def test_sessions_events_and_optimistic_versions(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    assert store.create_session("t", "s", **FP) == info  # get-or-create
    with pytest.raises(SessionExistsError):
        store.create_session("t", "s", exist_ok=False, **FP)
    ids, info2 = store.append_events("t", "s", new_events("a", "b"), expect_version=info.version)
    assert ids == [1, 2] and info2.version > info.version and info2.last_seq == 2
    before = dump(store)
    with pytest.raises(ConflictError, match="changed by another writer"):
        store.append_events("t", "s", new_events("c"), expect_version=info.version)  # stale view
    assert dump(store) == before  # nothing written
    ids, _ = store.append_events("t", "s", new_events("c"), expect_version=info2.version)
    assert ids == [3]
    chain = store.chain("t", "s")
    assert [(e.id, e.text, e.payload["text"]) for e in store.lineage_events("t", "s", chain)] == [
        (1, "a\n", "a"), (2, "b\n", "b"), (3, "c\n", "c")]
    assert [e.id for e in store.lineage_events("t", "s", chain, after=1, page=1)] == [2, 3]  # paging
    assert store.count_events("t", "s", chain) == 3


def test_big_blobs_are_stored_in_parts_and_verified(store: Store) -> None:
    """A 20 MB state: more than MariaDB's default max_allowed_packet (16 MiB) in one value."""
    info = store.create_session("t", "s", **FP)
    blob = os.urandom(20 * 1024 * 1024 + 123)
    ids, info = store.append_events("t", "s", new_events("x"), expect_version=info.version)
    snap, _ = save(store, info, blob, last_seq=1, events=1)
    assert snap.version == 1 and snap.size == len(blob) and snap.sha256 == hashlib.sha256(blob).hexdigest()
    got_info, got = store.load_snapshot("t", "s", 1)
    assert got == blob and got_info == snap
    with store.engine.connect() as conn:
        parts = conn.execute(sa.select(sa.func.count()).select_from(SnapshotPartRow)).scalar()
    assert parts == -(-len(blob) // store.part_bytes) > 1 and store.part_bytes <= BLOB_PART_BYTES


def test_tampered_or_truncated_blobs_are_refused(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    store.part_bytes = 1000
    blob = os.urandom(2500)
    save(store, info, blob, last_seq=0, events=0)
    table = SnapshotPartRow.__table__
    with store.engine.begin() as conn:  # flip one byte of the middle part
        data = conn.execute(sa.select(table.c.data).where(table.c.part == 1)).scalar_one()
        conn.execute(table.update().where(table.c.part == 1).values(data=bytes([data[0] ^ 1]) + data[1:]))
    with pytest.raises(CorruptSnapshotError, match="sha256"):
        store.load_snapshot("t", "s", 1)
    with store.engine.begin() as conn:  # drop the last part
        conn.execute(table.delete().where(table.c.part == 2))
    with pytest.raises(CorruptSnapshotError, match="truncated"):
        store.load_snapshot("t", "s", 1)
    with pytest.raises(VersionNotFoundError):
        store.load_snapshot("t", "s", 7)


def test_large_events_fit(store: Store) -> None:
    """Events up to MAX_EVENT_CHARS (200,000 characters) of multi-byte text: LONGTEXT on MariaDB."""
    info = store.create_session("t", "s", **FP)
    text = "é" * 199_999
    ids, _ = store.append_events("t", "s", new_events(text, text), expect_version=info.version)
    got = list(store.lineage_events("t", "s", store.chain("t", "s")))
    assert [e.text for e in got] == [text + "\n"] * 2


def test_restore_branches_and_lineage(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    _, info = store.append_events("t", "s", new_events("1", "2"), expect_version=info.version)
    v1, info = save(store, info, b"state-1", last_seq=2, events=2)
    _, info = store.append_events("t", "s", new_events("3"), expect_version=info.version)
    v2, info = save(store, info, b"state-2", last_seq=3, events=3, parent=1)
    assert info.head_version == 2
    info = store.restore("t", "s", 1, expect_version=info.version)
    assert info.branch == 1 and info.head_version == 1 and info.epoch == 1
    _, info = store.append_events("t", "s", new_events("4"), expect_version=info.version)
    chain = store.chain("t", "s")
    assert [e.text for e in store.lineage_events("t", "s", chain)] == ["1\n", "2\n", "4\n"]
    assert [e.id for e in store.all_events("t", "s")] == [1, 2, 3, 4]  # event 3 is kept, on branch 0
    with pytest.raises(StaleStateError):  # a state built before the restore cannot be saved
        store.save_snapshot("t", "s", b"x", branch=0, epoch=0, last_seq=3, events=3, parent_version=2,
                            reason="auto", state_digest="", tokens_absorbed=0, tokens_pending=0, chunks=0, **FP)
    # Version 2 (branch 0, after the restore point) stays restorable.
    info = store.restore("t", "s", 2, expect_version=info.version)
    assert [e.text for e in store.lineage_events("t", "s", store.chain("t", "s"))] == ["1\n", "2\n", "3\n"]
    with pytest.raises(ConflictError):
        store.restore("t", "s", 1, expect_version=info.version - 1)


def test_forget_erases_events_and_purges_derived_snapshots(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    _, info = store.append_events("t", "s", new_events("keep", "secret"), expect_version=info.version)
    save(store, info, b"s1", last_seq=1, events=1)  # before the secret
    _, info = save(store, info, b"s2", last_seq=2, events=2, parent=1)  # holds it
    _, info = store.append_events("t", "s", new_events("later"), expect_version=info.version)
    _, info = save(store, info, b"s3", last_seq=3, events=3, parent=2)
    before = dump(store)
    with pytest.raises(LookupError, match=r"no events with ids \[9\]"):
        store.forget("t", "s", [2, 9])
    assert dump(store) == before
    result = store.forget("t", "s", [2])
    assert result.forgotten == [2] and result.purged_versions == [2, 3] and result.head_affected
    assert result.info.head_version == 1 and result.info.epoch == info.epoch + 1
    events = store.all_events("t", "s")
    assert [(e.id, e.deleted, e.text, e.payload is None) for e in events] == [
        (1, False, "keep\n", False), (2, True, "", True), (3, False, "later\n", False)]
    for v in (2, 3):
        with pytest.raises(SnapshotPurgedError):
            store.load_snapshot("t", "s", v)
    snaps = {s.version: s for s in store.snapshots("t", "s")}
    assert snaps[2].sha256 is None and snaps[2].purged and not snaps[1].purged
    with store.engine.connect() as conn:
        versions = set(conn.execute(sa.select(SnapshotPartRow.version)).scalars())
    assert versions == {1}
    with pytest.raises(SnapshotPurgedError):
        store.restore("t", "s", 3, expect_version=result.info.version)
    assert store.forget("t", "s", [2]).forgotten == []  # idempotent


def test_prune_keeps_rows_and_digests(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    for i in range(1, 5):
        _, info = store.append_events("t", "s", new_events(str(i)), expect_version=info.version)
        _, info = save(store, info, f"s{i}".encode(), last_seq=i, events=i, reason="auto")
    assert store.prune_snapshots("t", "s", keep=2) == [1, 2]
    assert store.prune_snapshots("t", "s", keep=0) == [3]  # 4 is the head: never pruned
    snaps = store.snapshots("t", "s")
    assert [s.has_blob for s in snaps] == [False, False, False, True]
    assert snaps[0].sha256 is not None and not snaps[0].purged
    with pytest.raises(LookupError, match="pruned"):
        store.load_snapshot("t", "s", 1)


def test_fork_copies_the_lineage_and_leaves_the_source_alone(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    _, info = store.append_events("t", "s", new_events("a", "b", "c"), expect_version=info.version)
    store.forget("t", "s", [2])
    info = store.session("t", "s")
    before = dump(store)
    chain = store.chain("t", "s", upto=3)
    new = store.fork("t", "s", "s2", chain=chain, epoch=info.epoch, blob=b"forked", state_digest="d", label="x",
                     tokens_absorbed=0, tokens_pending=0, chunks=0, **FP)
    assert new.session_id == "s2" and new.forked_from == "s@x" and new.head_version == 1 and new.last_seq == 2
    assert [(e.id, e.text) for e in store.all_events("t", "s2")] == [(1, "a\n"), (2, "c\n")]
    assert store.load_snapshot("t", "s2", 1)[1] == b"forked"
    after = dump(store)
    for table, rows in before.items():  # every source row is still there, unchanged
        assert set(rows) <= set(after[table]), table
    with pytest.raises(SessionExistsError):
        store.fork("t", "s", "s2", chain=chain, epoch=info.epoch, blob=b"", state_digest="", label="x",
                   tokens_absorbed=0, tokens_pending=0, chunks=0, **FP)


def test_tenants_are_isolated(store: Store) -> None:
    info = store.create_session("A", "shared-name", **FP)
    store.append_events("A", "shared-name", new_events("tenant A data"), expect_version=info.version)
    save(store, store.session("A", "shared-name"), b"A-state", last_seq=1, events=1)
    before = dump(store)
    for call in (
        lambda: store.session("B", "shared-name"),
        lambda: store.snapshots("B", "shared-name"),
        lambda: store.load_snapshot("B", "shared-name", 1),
        lambda: store.all_events("B", "shared-name"),
        lambda: store.restore("B", "shared-name", 1, expect_version=1),
        lambda: store.forget("B", "shared-name", [1]),
        lambda: store.fork("B", "shared-name", "copy", chain=[(0, None)], epoch=0, blob=b"", state_digest="",
                           label="x", tokens_absorbed=0, tokens_pending=0, chunks=0, **FP),
        lambda: store.delete_session("B", "shared-name"),
    ):
        with pytest.raises(SessionNotFoundError):
            call()
    assert dump(store) == before
    assert store.list_sessions("B") == [] and [s.session_id for s in store.list_sessions("A")] == ["shared-name"]
    # B's own session of the same name is a different session.
    store.create_session("B", "shared-name", **FP)
    assert list(store.lineage_events("B", "shared-name", store.chain("B", "shared-name"))) == []
    store.delete_session("B", "shared-name")
    assert store.load_snapshot("A", "shared-name", 1)[1] == b"A-state"


def test_delete_session_removes_everything(store: Store) -> None:
    info = store.create_session("t", "s", **FP)
    _, info = store.append_events("t", "s", new_events("a"), expect_version=info.version)
    save(store, info, b"x" * 10, last_seq=1, events=1)
    store.create_session("t", "other", **FP)
    store.delete_session("t", "s")
    assert store.get_session("t", "s") is None
    left = dump(store)
    assert left["comet_events"] == [] and left["comet_snapshots"] == [] and left["comet_snapshot_parts"] == []
    assert len(left["comet_sessions"]) == 1 and len(left["comet_branches"]) == 1
    with pytest.raises(SessionNotFoundError):
        store.delete_session("t", "s")


@pytest.mark.parametrize("bad", ["", "  ", "a\x00b", "x" * 256])
def test_bad_session_ids_are_refused(tmp_path, bad: str) -> None:
    with temp_store("sqlite", tmp_path) as st:
        with pytest.raises(ValueError):
            st.create_session("t", bad, **FP)


def test_sqlite_file_holds_no_trace_of_forgotten_text(tmp_path) -> None:
    """secure_delete + a WAL checkpoint: erased text is gone from the database files, not only unlinked."""
    with temp_store("sqlite", tmp_path) as st:
        info = st.create_session("t", "s", **FP)
        secret = "my-bank-pin-is-93725-" * 20
        st.append_events("t", "s", new_events("hello", secret, "world"), expect_version=info.version)
        st.forget("t", "s", [2])
        st.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("store.db"))
    assert b"my-bank-pin" not in raw and b"world" in raw
    con = sqlite3.connect(tmp_path / "store.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def test_relative_sqlite_url_follows_the_current_directory(tmp_path, monkeypatch) -> None:
    """The same relative URL opened from two directories names two databases, not the first one twice."""
    from comet_agents.store import open_store

    stores = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        stores.append(open_store("sqlite:///relative-test.db"))
    assert stores[0] is not stores[1]
    assert str(stores[0].url.database).startswith(str(tmp_path / "a"))
    assert str(stores[1].url.database).startswith(str(tmp_path / "b"))
