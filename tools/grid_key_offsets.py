"""Where each key of a recorded pass-key grid started inside its chunk, for grids recorded before the rows had
``key_offset``: the grid's haystacks are regenerated (tokenisation only, :func:`comet_agents.evaluation.grid_cases`,
same seed) and joined to the rows; the keys must match. Prints the closed-chunk keys found, by key offset
(in the last ``CHUNK_END`` tokens of the chunk or earlier) and by the stream's tail.

    python tools/grid_key_offsets.py docs/data/passkey-grid-step2945-h200-2026-12-02.json \\
        --lengths 1500,2500,4k,4600,8k,8700,16k,16900,32k --depths 5 --trials 2

Seconds on 2 CPU cores (the tokenizer comes from the default checkpoint).
"""

from __future__ import annotations

import argparse
import json

from comet_agents import CometModel
from comet_agents.cli import _ints
from comet_agents.engine import MemoryEngine
from comet_agents.evaluation import CHUNK_END, SHORT_TAIL, grid_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", help="the grid's rows (JSON list, as comet-agents eval passkey writes them)")
    ap.add_argument("--lengths", required=True, help="the grid's --lengths")
    ap.add_argument("--depths", type=int, required=True, help="the grid's --depths")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="training/smollm2-default/checkpoint", help="where the tokenizer comes from")
    a = ap.parse_args()
    rows = json.load(open(a.rows))
    engine = MemoryEngine(CometModel.from_pretrained(a.model))
    C = engine.config.chunk_size
    depths = [i / (a.depths - 1) for i in range(a.depths)] if a.depths > 1 else [0.5]
    cases = list(grid_cases(engine, _ints(a.lengths), depths, trials=a.trials, seed=a.seed))
    if len(cases) != len(rows) or any(c[3] != r["key"] for c, r in zip(cases, rows)):
        raise SystemExit("the regenerated keys differ from the rows': other --lengths/--depths/--trials/--seed?")
    for r in rows:
        r.setdefault("tail", r["tokens"] % C)  # rows before 2026-12-02 (second session) lack it
    closed = [(r, c[5] % C) for r, c in zip(rows, cases) if r["memory"] in ("fifo", "global")]
    print(f"{len(closed)} keys in closed chunks of {len(rows)} cases ({a.rows})")
    print(f"| key starts | tail < {SHORT_TAIL} | tail >= {SHORT_TAIL} | all |")
    print("|---|---|---|---|")
    for name, at_end in ((f"in the last {CHUNK_END} tokens of its chunk", True), ("earlier in its chunk", False)):
        cells = []
        for short in (True, False, None):
            hits = [r["correct"] for r, off in closed if (off >= C - CHUNK_END) == at_end
                    and (short is None or (r["tail"] < SHORT_TAIL) == short)]
            cells.append(f"{sum(hits)}/{len(hits)}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
