"""Host overhead of one training step, on a tiny random model where the host is all there is.

A dispatch-bound GPU run pays per op and per Python call, not per FLOP. On a tiny model (3 layers, hidden 32,
4 closed chunks + the open one, 2 sequences) a CPU step is host work too, so it measures the same thing:

* aten ops per (layer, chunk), forward and backward, with and without the memory LoRA;
* the time of a plain step against a checkpointed one, with the trainer's checkpoint choice (reentrant when an
  input requires grad) and with PyTorch's non-reentrant variant forced.

    python tools/host_overhead_probe.py

Runs in under a minute on 2 cores. Uses the unit tests' tiny model (``tests/tiny.py``).
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import comet_agents.modeling as modeling  # noqa: E402
from comet_agents.layout import pad_layouts, sequence_layouts  # noqa: E402
from tiny import tiny_model  # noqa: E402

CHUNK, CLOSED, BATCH = 32, 4, 2


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        self.n += 1
        return func(*args, **(kwargs or {}))


def _setup(lora_rank: int):
    model = tiny_model(memory_lora_rank=lora_rank, chunk_size=CHUNK, num_global_slots=4, compression_stride=4,
                       fifo_budget=8)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.memory.parameters()) + [model.special_embeddings]
    if model.memory_lora is not None:
        trainable += list(model.memory_lora.parameters())
    for p in trainable:
        p.requires_grad_(True)
    cfg = model.config
    texts = [[[5 + (i + j + b) % 50 for i in range(CHUNK)] for j in range(CLOSED)] + [[7] * 10] for b in range(BATCH)]
    per = [sequence_layouts(t, num_global=cfg.m, fifo_budget=cfg.fifo, stride=cfg.stride, ids=model.special,
                            last_open=True, open_stride=cfg.open_stride) for t in texts]
    batches = []
    for c in range(CLOSED + 1):
        lays = [p[c] for p in per]
        labels = [[-100] * len(lay.input_ids) for lay in lays]
        labels[0][-2] = 9
        batches.append(pad_layouts(lays, model.special.pad, labels=labels))
    return model, batches


def _step(model, batches, recompute: bool) -> None:
    model.zero_grad(set_to_none=True)
    model.forward_train(batches, gradient_checkpointing=recompute)["loss"].backward()


def _seconds(model, batches, recompute: bool, repeats: int = 7) -> float:
    _step(model, batches, recompute)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _step(model, batches, recompute)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    torch.set_num_threads(1)
    for rank in (4, 0):
        model, batches = _setup(rank)
        cells = model.num_layers * len(batches)
        fwd, bwd = _CountOps(), _CountOps()
        with fwd:
            out = model.forward_train(batches)
        with bwd:
            out["loss"].backward()
        print(f"memory_lora_rank {rank}: {fwd.n / cells:.0f} forward + {bwd.n / cells:.0f} backward ops per "
              f"(layer, chunk)")
    model, batches = _setup(4)
    plain = _seconds(model, batches, False)
    chosen = _seconds(model, batches, True)
    original = modeling.checkpoint
    modeling.checkpoint = lambda fn, *a, use_reentrant, **kw: original(fn, *a, use_reentrant=False, **kw)
    try:
        non_reentrant = _seconds(model, batches, True)
    finally:
        modeling.checkpoint = original
    print(f"step: plain {plain * 1e3:.0f} ms, checkpointed {chosen * 1e3:.0f} ms ({chosen / plain:.2f} x), "
          f"checkpointed non-reentrant {non_reentrant * 1e3:.0f} ms ({non_reentrant / plain:.2f} x)")


if __name__ == "__main__":
    main()
