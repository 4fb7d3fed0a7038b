"""Restart the global-memory gates of a training checkpoint (in place): N(0, 0.02) again, fresh AdamW moments.

For a run whose gates saturated, every slot at g = 0 (keep only the newest chunk) or g = 1 (keep the first chunk
forever); the sigmoid then passes no gradient and training cannot undo it. ``tools/gate_stats.py`` shows
whether they have. Everything else in the checkpoint (weights, moments, step, history) stays as it is.

    python tools/reinit_gates.py training/smollm2-default/checkpoint
"""

from __future__ import annotations

import argparse

from comet_agents.training.trainer import reinit_gates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    names = reinit_gates(a.checkpoint, std=a.std, seed=a.seed)
    print(f"re-initialised {len(names)} gates in {a.checkpoint}")


if __name__ == "__main__":
    main()
