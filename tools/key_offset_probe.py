"""Pass-key recall with the stream's tail and the key's place inside its chunk set independently.

In the pass-key grid the two go together: lengths of a whole number of chunks (4k, 8k, 16k, 32k) leave a tail of
a few tokens *and* put the keys at depths 25-100 % into the last ~30 tokens of a chunk, while lengths like 8,700
leave ~500 tokens and put the keys early in their chunks. This probe crosses them: every case has ``--closed``
closed chunks, the key's first token ``offset`` tokens into closed chunk ``--key-chunk``, and the stream cut to
exactly ``tail`` tokens past its last full chunk.

    python tools/key_offset_probe.py --model training/smollm2-default/checkpoint --closed 4 --key-chunk 1 \\
        --offsets 300,1000 --tails 10,500 --trials 3 --out docs/data/key-offset-....json

``--key-kinds distinct,repeated`` asks whether a key's own repeated digits confuse the read: each trial then
runs once per kind with the same haystack and place, the key of seven digits drawn with all digits distinct or
with some digit twice or more (a random seven-digit key has a repeated digit 94 % of the time).
``--key-kinds 3d,4d,7d,9d`` asks the same of the key's length (N random digits, first never 0). A row's
``correct`` is the grid's test since 2026-12-04 (the key stands alone in the answer, ``passkey_found``);
``contained`` is the plain containment rows had before ("4711" is in "44711").

Deterministic (seeded keys and filler); on 2 CPU cores about 15 s per case at 4 closed chunks.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time

from comet_agents import CometModel
from comet_agents.engine import MemoryEngine
from comet_agents.evaluation import QUESTION, passkey_found, passkey_haystack
from comet_agents.layout import key_age


def case_ids(engine: MemoryEngine, closed: int, key_chunk: int, offset: int, tail: int, key: str,
             seed: int) -> tuple[list[int], int]:
    """Token ids of ``closed`` chunks plus ``tail`` tokens with the key's first token within 32 tokens of
    ``offset`` into chunk ``key_chunk``, and the key's token index."""
    C = engine.config.chunk_size
    total = closed * C + tail
    want = key_chunk * C + offset
    lo, hi = 0.0, 1.0
    best: tuple[int, list[int], int] | None = None
    for _ in range(20):  # the needle goes between filler sentences, so offsets move in steps of a sentence
        depth = (lo + hi) / 2
        got, at = passkey_haystack(engine, total + 64, depth, key, seed=seed)
        if best is None or abs(at - want) < best[0]:
            best = (abs(at - want), got, at)
        lo, hi = (depth, hi) if at < want else (lo, depth)
    miss, ids, at = best
    if miss > 32:
        raise RuntimeError(f"could not place the key within 32 tokens of {offset} into chunk {key_chunk}")
    if len(ids) < total:
        raise RuntimeError(f"haystack of {len(ids)} tokens is shorter than {total}")
    return ids[:total], at


KEY_KINDS = ("random", "distinct", "repeated")  # and "Nd": N random digits (digits_of)


def draw_key(rng: random.Random, kind: str) -> str:
    """A pass key of the given kind: ``random`` 5-7 digits as in the grid, or seven digits all ``distinct`` /
    with a ``repeated`` digit (first digit never 0)."""
    if kind == "random":
        return str(rng.randrange(10**4, 10**7))
    if (n := digits_of(kind)) is not None:
        return str(rng.randrange(10 ** (n - 1), 10**n))
    while True:
        key = str(rng.randrange(10**6, 10**7))
        if (len(set(key)) == len(key)) == (kind == "distinct"):
            return key


def digits_of(kind: str) -> int | None:
    """N for a kind ``Nd`` (1 <= N <= 12), else None."""
    m = re.fullmatch(r"(\d+)d", kind)
    return int(m.group(1)) if m and 1 <= int(m.group(1)) <= 12 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="training/smollm2-default/checkpoint")
    ap.add_argument("--closed", type=int, default=4, help="closed chunks before the question")
    ap.add_argument("--key-chunk", type=int, default=1, help="index of the closed chunk holding the key")
    ap.add_argument("--offsets", default="300,1000", help="key offsets inside its chunk (tokens)")
    ap.add_argument("--tails", default="10,500", help="stream tokens left in the open chunk")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--key-kinds", default="random",
                    help=f"comma-separated, of {', '.join(KEY_KINDS)} or Nd (N random digits, 1-12): each trial runs "
                         "once per kind, same haystack")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    engine = MemoryEngine(CometModel.from_pretrained(a.model, device=a.device).eval())
    C = engine.config.chunk_size
    if not 0 <= a.key_chunk < a.closed:
        ap.error(f"--key-chunk must be in [0, {a.closed})")
    offsets = [int(x) for x in a.offsets.split(",")]
    tails = [int(x) for x in a.tails.split(",")]
    if any(not 0 <= o < C for o in offsets) or any(not 0 <= t < C for t in tails):
        ap.error(f"offsets and tails must be in [0, {C})")
    kinds = a.key_kinds.split(",")
    if any(k not in KEY_KINDS and digits_of(k) is None for k in kinds):
        ap.error(f"--key-kinds must be among {', '.join(KEY_KINDS)} or Nd (1 <= N <= 12), got {a.key_kinds!r}")
    rng = random.Random(0)
    rows = []
    t0 = time.time()
    for tail in tails:
        for offset in offsets:
            for trial, kind in ((t, k) for t in range(a.trials) for k in kinds):
                key = draw_key(rng, kind)
                if kind == kinds[0]:  # after the key, as before kinds existed: the old runs repeat
                    seed = rng.randrange(2**31)
                ids, at = case_ids(engine, a.closed, a.key_chunk, offset, tail, key, seed)
                state = engine.new_state()
                engine.absorb(state, ids)
                answer = engine.recall(state, QUESTION, max_new_tokens=16)
                age = key_age(at, len(ids), C)
                row = {"tokens": len(ids), "tail": len(state.pending[0]), "target_offset": offset,
                       "key_offset": at % C, "key_age": age, "memory": engine.config.memory_tier(age),
                       "trial": trial, "key_kind": kind, "key": key, "answer": answer,
                       "correct": passkey_found(key, answer), "contained": key in answer}
                rows.append(row)
                print(" ".join(f"{k}={v!r}" for k, v in row.items()), flush=True)
    print(f"{len(rows)} cases in {time.time() - t0:.0f} s on {a.device}; model {a.model}")
    print("| tail | key offset in its chunk (target, within 32) | key kind | found | contained |")
    print("|---|---|---|---|---|")
    for tail in tails:
        for offset in offsets:
            for kind in kinds:
                rs = [r for r in rows if r["tail"] == tail and r["target_offset"] == offset and r["key_kind"] == kind]
                print(f"| {tail} | {offset} | {kind} | {sum(r['correct'] for r in rs)}/{len(rs)} "
                      f"| {sum(r['contained'] for r in rs)}/{len(rs)} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
