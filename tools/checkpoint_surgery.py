"""Edit a training checkpoint in place between runs (each edit is logged in its ``trainer_state.json`` events).

    python tools/checkpoint_surgery.py reinit-gates CHECKPOINT [--std 0.02 --seed 0]
    python tools/checkpoint_surgery.py copy-global-read CHECKPOINT
    python tools/checkpoint_surgery.py use-evicted-global CHECKPOINT
    python tools/checkpoint_surgery.py add-reader-lora CHECKPOINT [--rank 16 --alpha 32 --seed 0]

* ``reinit-gates``: the global-memory gates N(0, std) again, fresh AdamW moments. For a run whose gates
  saturated (every slot at g = 0 or 1: the sigmoid passes no gradient); ``tools/gate_stats.py`` shows it.
* ``copy-global-read``: each layer's global ``norm`` and ``adapter`` become copies of its temporary memory's,
  so that (with ``global_source="compression"``) a slot written once injects what the FIFO entry of the same
  compression token injects.
* ``use-evicted-global``: switch to ``global_source="evicted"`` (the global memory keeps the FIFO entries a push
  evicts): the global norm and adapter go, the gates stay. Resume with
  ``--config-json '{"global_source": "evicted"}'`` and ``--fifo-dropout 0``.
* ``add-reader-lora``: a LoRA at the text positions of chunks with memory (the readers of the slots), ``up`` at
  zero so nothing changes until it trains; on the memory LoRA's targets. Resume with ``--config-json`` carrying
  ``"reader_lora_rank"`` (and ``"reader_lora_alpha"`` if not 32).

Every other tensor, the step and the history stay; the edit is written next to the checkpoint and swapped in.
"""

from __future__ import annotations

import argparse

from comet_agents.training.trainer import (
    add_reader_lora,
    copy_temporary_read_to_global,
    reinit_gates,
    use_evicted_global,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="edit", required=True)
    gates = sub.add_parser("reinit-gates", help="restart the global-memory gates")
    gates.add_argument("checkpoint")
    gates.add_argument("--std", type=float, default=0.02)
    gates.add_argument("--seed", type=int, default=0)
    sub.add_parser("copy-global-read", help="global read path := temporary memory's").add_argument("checkpoint")
    sub.add_parser("use-evicted-global", help='switch to global_source="evicted"').add_argument("checkpoint")
    reader = sub.add_parser("add-reader-lora", help="add a zero-initialised reader LoRA")
    reader.add_argument("checkpoint")
    reader.add_argument("--rank", type=int, default=16)
    reader.add_argument("--alpha", type=int, default=32)
    reader.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.edit == "reinit-gates":
        names = reinit_gates(a.checkpoint, std=a.std, seed=a.seed)
    elif a.edit == "copy-global-read":
        names = copy_temporary_read_to_global(a.checkpoint)
    elif a.edit == "add-reader-lora":
        names = add_reader_lora(a.checkpoint, rank=a.rank, alpha=a.alpha, seed=a.seed)
    else:
        names = use_evicted_global(a.checkpoint)
    print(f"{a.edit}: {len(names)} tensors in {a.checkpoint}")


if __name__ == "__main__":
    main()
