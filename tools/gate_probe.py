"""CPU probe of the gated global memory: can it carry a key across chunks, and do its gates stay alive?

A tiny random Llama (4 layers, d = 64), by default with the temporary memory (FIFO) switched off, so whatever
crosses a chunk boundary crosses it through the global memory. Each sequence has 2-7 closed chunks of random
filler (drawn per step) with a key token (one of 16) in any one of them, and asks for the key in the open chunk.
Held-out sequences put the key in the third chunk, ``d`` closed chunks before the question (d = 1-6 as trained,
8 and 12 beyond), so neither keeping the first chunk forever nor keeping only the newest one answers them. Arms
differ in how the global memory learns:

* ``fast-gate``: gates at the memory nets' learning rate (the trainer's behaviour before ``gate_lr_mult``);
* ``base-gate``: gates at the base learning rate (the trainer's default);
* ``slow-gate``: gates at 0.1 x the base learning rate;
* ``no-gate``: S = the newest readouts (the paper's ablation), a floor for what re-writing alone carries;
* ``base-gate-output``: as ``base-gate``, with memory written from each layer's output (the paper's code), so a
  layer's readouts see its own slots and can re-write them;
* ``fifo-base-gate``: as ``base-gate`` with a FIFO of 4 entries (2 per chunk: it holds the last 2 chunks);
* ``fifo-dropout`` / ``fifo-dropout-all``: the same, with half / all of the training sequences laid out without
  the FIFO (``TrainArgs.fifo_dropout``). Arms with a FIFO are also evaluated without it (the global memory alone).
* ``fifo-compression`` / ``fifo-compression-dropout``: as ``fifo-base-gate`` / with 30 % FIFO dropout, with the
  global memory written by the compression tokens (``global_source="compression"``, 2 slots: one per
  compression token) instead of 4 readouts.
* ``fifo-evicted``: as ``fifo-base-gate``, with the global memory written by the FIFO entries a push evicts
  (``global_source="evicted"``, 2 slots: one per entry of the evicted chunk); no FIFO dropout (it would leave
  no memory at all), so distances 1-2 read the FIFO and 3 on the global memory.

Reports held-out accuracy per distance (also 8 and 12, beyond the trained range) and the share of saturated
gates (g > 0.99 or < 0.01). Minutes on 2 CPU cores.

    python tools/gate_probe.py --steps 600 --out docs/data/gate-probe.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from comet_agents import CometConfig, CometModel
from comet_agents.training.examples import TrainingExample, collate
from comet_agents.training.trainer import TrainArgs, train

VOCAB, KEYS, C, Q_TOKEN = 128, 16, 16, 3
ARMS = {
    "fast-gate": dict(gate=True, gate_lr_mult=5.0),
    "base-gate": dict(gate=True, gate_lr_mult=1.0),
    "slow-gate": dict(gate=True, gate_lr_mult=0.1),
    "no-gate": dict(gate=False, gate_lr_mult=0.1),
    "base-gate-output": dict(gate=True, gate_lr_mult=1.0, memory_source="output"),
    "fifo-base-gate": dict(gate=True, gate_lr_mult=1.0, fifo=4),
    "fifo-dropout": dict(gate=True, gate_lr_mult=1.0, fifo=4, fifo_dropout=0.5),
    "fifo-dropout-all": dict(gate=True, gate_lr_mult=1.0, fifo=4, fifo_dropout=1.0),
    "fifo-compression": dict(gate=True, gate_lr_mult=1.0, fifo=4, global_source="compression"),
    "fifo-compression-dropout": dict(gate=True, gate_lr_mult=1.0, fifo=4, fifo_dropout=0.3,
                                     global_source="compression"),
    "fifo-evicted": dict(gate=True, gate_lr_mult=1.0, fifo=4, global_source="evicted"),
}


def tiny(gate: bool, seed: int, memory_source: str = "input", fifo: int = 0,
         global_source: str = "readouts") -> CometModel:
    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, eos_token_id=1, pad_token_id=1,
        tie_word_embeddings=True, initializer_range=0.1)).float().eval()
    slots = C // 8 if global_source in ("compression", "evicted") else 4
    cfg = CometConfig(chunk_size=C, num_global_slots=slots, compression_stride=8, global_source=global_source, fifo_budget=fifo, temporary_memory=fifo > 0,
                      gate=gate, memory_source=memory_source, adapter_rank=4, memory_lora_rank=8,
                      memory_lora_alpha=16, lora_rank=4)
    return CometModel(base, cfg, base_fingerprint=f"gate-probe-{seed}")


def example(rng: random.Random, closed: int, key_chunk: int) -> TrainingExample:
    """``closed`` closed chunks of filler with the key in chunk ``key_chunk``; the open chunk asks for it."""
    key = 4 + rng.randrange(KEYS)
    filler = lambda n: [rng.randrange(4 + KEYS, VOCAB) for _ in range(n)]  # noqa: E731
    chunks = [filler(C) for _ in range(closed)]
    chunks[key_chunk][rng.randrange(C // 2)] = key
    open_chunk = filler(4) + [Q_TOKEN, key]
    labels = [[-100] * C for _ in chunks] + [[-100] * 4 + [key, -100]]
    weights = [[0.0] * C for _ in chunks] + [[0.0] * 4 + [1.0, 0.0]]
    return TrainingExample(chunk_texts=chunks + [open_chunk], chunk_labels=labels, chunk_weights=weights,
                           family=f"d{closed - key_chunk}")


def batches(step: int, micro: int) -> list[TrainingExample]:
    """2-7 closed chunks per step, the key in any of them: keeping the first chunk forever (g = 1) or only the
    newest (g = 0) each fails on most sequences, so the gates must learn what to keep."""
    rng = random.Random(f"probe/{step}/{micro}")
    closed = rng.randint(2, 7)
    return [example(rng, closed, rng.randrange(closed)) for _ in range(32)]


@torch.no_grad()
def evaluate(model: CometModel, distances: list[int], n: int = 256,
             without_fifo: bool = False) -> dict[str, float]:
    model.eval()
    acc: dict[str, float] = {}
    for d in distances:
        rng = random.Random(f"held-out/{d}")
        exs = [example(rng, d + 2, 2) for _ in range(n)]  # two chunks before the key, d - 1 after it
        for ex in exs:
            ex.without_fifo = without_fifo
        chunk_batches, weights = collate(exs, model)
        out = model.forward_train(chunk_batches, loss_weights=weights, return_logits=True)
        last = chunk_batches[-1]
        sel = last.labels != -100
        pred = out["logits"][-1][sel].argmax(-1)
        acc[str(d)] = round(float((pred == last.labels[sel]).float().mean()), 3)
    return acc


@torch.no_grad()
def saturated_gates(model: CometModel, distance: int = 6) -> float:
    if not model.config.gate:
        return 0.0
    seen: list[torch.Tensor] = []
    hooks = [m.global_net.gate.register_forward_hook(lambda mod, i, o: seen.append(torch.sigmoid(o).flatten()))
             for m in model.memory]
    rng = random.Random("gates")
    chunk_batches, weights = collate([example(rng, distance + 2, 2) for _ in range(64)], model)
    model.forward_train(chunk_batches, loss_weights=weights)
    for h in hooks:
        h.remove()
    g = torch.cat(seen)
    return round(float(((g > 0.99) | (g < 0.01)).float().mean()), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--arms", default="fast-gate,base-gate,slow-gate,no-gate", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--run-dir", default="/tmp/gate-probe")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for arm in a.arms.split(","):
            spec = ARMS[arm]
            model = tiny(spec["gate"], seed, spec.get("memory_source", "input"), spec.get("fifo", 0),
                         spec.get("global_source", "readouts"))
            run = Path(a.run_dir) / f"{arm}-{seed}"
            shutil.rmtree(run, ignore_errors=True)
            args = TrainArgs(output_dir=str(run), steps=a.steps, lr=a.lr, gate_lr_mult=spec["gate_lr_mult"],
                             warmup_steps=20, save_every=10**9, log_every=10**9, smoke=True, num_workers=0,
                             seed=seed, fifo_dropout=spec.get("fifo_dropout", 0.0))
            t0 = time.perf_counter()
            train(args, model=model, sample_fn=batches, log=lambda s: None)
            row = {"arm": arm, "seed": seed, "memory_source": model.config.memory_source, "fifo": model.config.fifo,
                   "global_source": model.config.global_source, "slots": model.config.m, "steps": a.steps, "lr": a.lr, "gate_lr_mult": spec["gate_lr_mult"],
                   "fifo_dropout": args.fifo_dropout, "accuracy": evaluate(model, [1, 2, 3, 4, 5, 6, 8, 12]),
                   "saturated_gates": saturated_gates(model), "seconds": round(time.perf_counter() - t0)}
            # The global memory alone: the same held-out sequences laid out without the FIFO (not for the evicted
            # writer, whose global memory the FIFO feeds).
            if model.config.fifo and not model.config.global_from_fifo:
                row["accuracy_without_fifo"] = evaluate(model, [1, 2, 3, 4, 5, 6, 8, 12], without_fifo=True)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.out:
        Path(a.out).write_text(json.dumps({"chance": round(1 / KEYS, 3), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
