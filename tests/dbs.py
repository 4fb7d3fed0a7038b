"""Database back-ends for the storage tests: SQLite files always, PostgreSQL / MariaDB when reachable.

The server URLs come from ``COMET_TEST_POSTGRES_URL`` and ``COMET_TEST_MYSQL_URL`` (``.ci/run`` exports both);
a test skips when its variable is unset or the server does not answer. Each use gets a fresh schema
(PostgreSQL) or database (MariaDB) named ``comet_test_<random>``, dropped afterwards, so reruns and parallel
runs never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from comet_agents.store import Base, Store

ENV = {"postgresql": "COMET_TEST_POSTGRES_URL", "mysql": "COMET_TEST_MYSQL_URL"}
BACKENDS = ["sqlite", "postgresql", "mysql"]
_unreachable: dict[str, str] = {}


def server_url(kind: str) -> str:
    """The server URL for ``kind``, or skip the test."""
    var = ENV[kind]
    url = os.environ.get(var, "").strip()
    if not url:
        pytest.skip(f"{var} is not set")
    if kind in _unreachable:
        pytest.skip(_unreachable[kind])
    try:
        eng = sa.create_engine(url, connect_args={"connect_timeout": 5})
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        eng.dispose()
    except Exception as exc:  # driver missing, server down, auth ...
        _unreachable[kind] = f"{kind} at {var} is unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        pytest.skip(_unreachable[kind])
    return url


@contextmanager
def temp_store(kind: str, tmp_path: Path, **kwargs) -> Iterator[Store]:
    """A Store on a fresh SQLite file, PostgreSQL schema or MariaDB database; dropped afterwards."""
    if kind == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'store.db'}", **kwargs)
        try:
            yield store
        finally:
            store.close()
        return
    url = server_url(kind)
    name = f"comet_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    ddl = "SCHEMA" if kind == "postgresql" else "DATABASE"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE {ddl} {name}")
    store = None
    try:
        store = Store(url, schema=name, **kwargs)
        yield store
    finally:
        if store is not None:
            store.close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP {ddl} IF EXISTS {name}" + (" CASCADE" if kind == "postgresql" else ""))
        admin.dispose()


def dump(store: Store) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: compare before / after to prove nothing changed."""
    out = {}
    with store.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out
