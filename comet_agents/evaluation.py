"""Pass-key retrieval evaluation (``comet-agents eval passkey``): a grid of stream lengths x needle depths.

Each cell absorbs a haystack with a random key at the given relative depth and asks for it; a cell is correct
when the key appears in the answer. Sessions of one length are absorbed as a batch (one session per depth and
trial), which is exactly the batched engine path users get.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .engine import MemoryEngine

QUESTION = "What is the pass key?"


def passkey_case(engine: MemoryEngine, tokens: int, depth: float, key: str, *, filler: str = "classic",
                 seed: int = 0) -> list[int]:
    """Token ids of a haystack of about ``tokens`` tokens with ``key`` at relative ``depth``."""
    from .training.data.passkey import make_passkey_haystack

    text = make_passkey_haystack(tokens, depth, key, filler=filler, count_tokens=lambda s: len(engine.encode(s)),
                                 seed=seed)
    return engine.encode(text)


def passkey_grid(
    engine: MemoryEngine,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    trials: int = 1,
    seed: int = 0,
    filler: str = "classic",
    question: str = QUESTION,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the grid; one row per (length, depth, trial) with the key, the answer and correctness."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for length in lengths:
        cases = []
        for depth in depths:
            for trial in range(trials):
                key = str(rng.randrange(10**4, 10**7))
                cases.append((depth, trial, key, passkey_case(engine, length, depth, key, filler=filler,
                                                              seed=rng.randrange(2**31))))
        states = [engine.new_state() for _ in cases]
        engine.absorb_many(states, [c[3] for c in cases])
        for (depth, trial, key, toks), state in zip(cases, states):
            answer = engine.recall(state, question, max_new_tokens=16)
            row = {"length": length, "tokens": len(toks), "depth": depth, "trial": trial, "key": key,
                   "answer": answer, "correct": key in answer}
            rows.append(row)
            if log:
                log(f"len={length} depth={depth:.2f} key={key} answer={answer!r} {'OK' if row['correct'] else 'MISS'}")
    return rows


def grid_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy (%) table: one row per length, one column per depth."""
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    head = "| tokens | " + " | ".join(f"{d:.0%}" for d in depths) + " | mean |"
    lines = [head, "|" + "---|" * (len(depths) + 2)]
    for n in lengths:
        cells, total = [], []
        for d in depths:
            hits = [r["correct"] for r in rows if r["length"] == n and r["depth"] == d]
            acc = 100 * sum(hits) / len(hits)
            cells.append(f"{acc:.0f}")
            total.extend(hits)
        lines.append(f"| {n:,} | " + " | ".join(cells) + f" | {100 * sum(total) / len(total):.1f} |")
    return "\n".join(lines)


def grid_heatmap(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "pass key retrieval") -> Path:
    """Write a heat-map PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    grid = [[100 * sum(r["correct"] for r in rows if r["length"] == n and r["depth"] == d)
             / max(1, sum(1 for r in rows if r["length"] == n and r["depth"] == d)) for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1000}k" if n < 10**6 else f"{n / 1e6:g}M" for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("stream length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy %")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
