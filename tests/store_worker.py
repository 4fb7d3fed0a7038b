"""Child process for the crash and multi-writer tests.

The tests start it through a ``forkserver`` that preloads this module (torch and transformers are imported once,
not once per child): ``child(mode, args, out_path)`` writes its lines to ``out_path``. It also runs as a script:
``python tests/store_worker.py MODE ARGS`` (lines on stdout).

It builds the same tiny model as the tests (tests/tiny.py, same seeds and config), so its states are
bit-identical to the parent's. Every acknowledged operation is printed (and flushed) only after the
ComeTMemory call returned, i.e. after the events were committed.

Modes:
  absorb URL SCHEMA TENANT SESSION FILE SNAPSHOT_EVERY CONFIG_JSON
      absorb the JSON Lines FILE one event at a time; prints "ACK <id> <line>" per event.
  write URL SCHEMA TENANT SESSIONS(comma) OPS WRITER SEED CONFIG_JSON
      OPS random operations (90% absorb one event, 10% snapshot) on random sessions;
      prints "ACK <session> <item>" per absorbed event, "SNAP <session> <version>" per snapshot.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny import tiny_chat_model  # noqa: E402

from comet_agents import ComeTMemory  # noqa: E402
from comet_agents.events import parse_jsonl  # noqa: E402
from comet_agents.store import ConflictError, Store  # noqa: E402


def _store(url: str, schema: str) -> Store:
    return Store(url, schema=schema or None)


def absorb(url: str, schema: str, tenant: str, session: str, path: str, snapshot_every: str, config: str) -> None:
    model = tiny_chat_model(**json.loads(config))
    mem = ComeTMemory(session, tenant=tenant, store=_store(url, schema), model=model,
                      snapshot_every=int(snapshot_every), keep_snapshots=None)
    print("READY", flush=True)
    for lineno, event in enumerate(parse_jsonl(Path(path).read_bytes()), start=1):
        (eid,) = mem.absorb(event)
        print(f"ACK {eid} {lineno}", flush=True)
    mem.close()
    print("DONE", flush=True)


def write(url: str, schema: str, tenant: str, sessions: str, ops: str, writer: str, seed: str, config: str) -> None:
    model = tiny_chat_model(**json.loads(config))
    store = _store(url, schema)
    names = sessions.split(",")
    mems = {s: ComeTMemory(s, tenant=tenant, store=store, model=model, snapshot_every=None, keep_snapshots=None,
                           max_retries=50) for s in names}
    rng = random.Random(int(seed))
    print(f"READY after {time.perf_counter() - T0:.1f} s", flush=True)
    conflicts = 0
    for i in range(int(ops)):
        name = rng.choice(names)
        mem = mems[name]
        take_snapshot = rng.random() < 0.1
        while True:
            try:
                if take_snapshot:
                    version = mem.snapshot()
                    print(f"SNAP {name} {version}", flush=True)
                else:
                    item = f"w{writer}-{i}"
                    mem.absorb({"type": "user_event", "kind": "op", "item": item})
                    print(f"ACK {name} {item}", flush=True)
                break
            except ConflictError:  # retries exhausted under heavy contention: the documented answer is to retry
                conflicts += 1
    retried = sum(m.conflicts_retried for m in mems.values())
    for mem in mems.values():
        mem.close()
    print(f"DONE retried={retried} conflicts={conflicts} after {time.perf_counter() - T0:.1f} s", flush=True)


MODES = {"absorb": absorb, "write": write}


def child(mode: str, args: list[str], out_path: str) -> None:
    """Entry point in a forked child: lines go to ``out_path`` (line-buffered, so a SIGKILL loses none)."""
    global T0
    T0 = time.perf_counter()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)  # 8 writers share 2 cores
    sys.stdout = open(out_path, "w", buffering=1)
    try:
        MODES[mode](*args)
    except BaseException:
        import traceback

        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        raise


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    MODES[mode](*args)
