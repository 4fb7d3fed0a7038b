"""CPU probe: does a write design learn to answer from memory? Small config, real frozen SmolLM2 base.

Trains one arm for a few steps on pass keys that sit in a closed chunk (family ``passkey_memory``), with the
project's trainer in ``--smoke`` mode, then asks held-out pass keys whose needle lies wholly in memory and
reports exact matches and mean answer loss before and after. Arms:

* ``new``: memory written from each layer's input, memory LoRA (rank 16, q/k/v/o) at added-token positions,
  backbone untouched at text positions (the default config);
* ``old``: memory written from each layer's output (the paper's code), peft LoRA rank 8 at every position;
* ``new-global``: ``new`` without the temporary memory, so the key reaches the answer through the global memory
  alone (what keys older than the FIFO's reach depend on);
* ``compression-global``: ``new`` with the global memory written by the compression tokens
  (``global_source="compression"``) and every sequence, trained and held out, laid out without the FIFO: the
  same question as ``new-global`` for the other writer. Its exact matches are teacher-forced (every answer token
  the argmax, which is what greedy decoding returns), since recall always reads the FIFO.

Every arm also reports the held-out answer loss with a decoy key of the same format as the answer
(``tools/memory_info.py``): ``decoy_loss - answer_loss`` is the key information that reached the answer.

    python tools/memory_probe.py --arm new --steps 120 --out /tmp/probe-new.json

Minutes on 2 CPU cores; meant to compare arms before spending GPU time, not to train an adapter.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from comet_agents import CometConfig, CometModel
from comet_agents.base_models import DEFAULT_BASE
from comet_agents.engine import MemoryEngine
from comet_agents.training.data import passkey
from comet_agents.training.examples import collate, encode_sample
from comet_agents.training.trainer import TrainArgs, train

sys.path.insert(0, str(Path(__file__).parent))
from memory_info import with_decoy  # noqa: E402

ARMS = {
    "new": dict(memory_source="input", memory_lora_rank=16, memory_lora_alpha=32, lora_rank=0),
    "old": dict(memory_source="output", memory_lora_rank=0, lora_rank=8, lora_alpha=16),
    "new-global": dict(memory_source="input", memory_lora_rank=16, memory_lora_alpha=32, lora_rank=0,
                       temporary_memory=False),
    "compression-global": dict(memory_source="input", memory_lora_rank=16, memory_lora_alpha=32, lora_rank=0,
                               global_source="compression"),
}
WITHOUT_FIFO = {"compression-global"}  # arms trained and evaluated with every sequence laid out without the FIFO
SMALL = dict(chunk_size=64, num_global_slots=8, compression_stride=8, fifo_budget=64)


def held_out(model: CometModel, n: int, closed: int = 1) -> list:
    """Held-out pass-key samples whose needle ends inside the first of ``closed`` closed chunks."""
    tok, C = model.tokenizer, model.config.chunk_size
    count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    out, seed = [], 10**6
    while len(out) < n:
        seed += 1
        s = passkey.generate_in_memory(seed, closed * C + 24 + seed % 32, count)
        end = s.stream.index(s.meta["needle"]) + len(s.meta["needle"])
        if count(s.stream[:end]) < C:
            out.append(s)
    return out


def evaluate(model: CometModel, samples: list, without_fifo: bool = False) -> dict:
    model.eval()
    engine = MemoryEngine(model)
    rng = random.Random(5)
    exact, losses, decoys = 0, [], []
    tok, C = model.tokenizer, model.config.chunk_size
    with torch.no_grad():
        for s in samples:
            ex = encode_sample(s, tok, C)
            ex.without_fifo = without_fifo
            batches, weights = collate([ex], model)
            out = model.forward_train(batches, loss_weights=weights, return_logits=without_fifo)
            losses.append(float(out["loss"]))
            if without_fifo:  # teacher-forced: all answer tokens the argmax
                last = batches[-1]
                sel = last.labels != -100
                exact += bool((out["logits"][-1][sel].argmax(-1) == last.labels[sel]).all())
            else:
                state = engine.absorb_text(engine.new_state(), s.stream)
                exact += engine.recall(state, s.qa[0].question, max_new_tokens=16).strip() == s.meta["key"]
            decoy = encode_sample(with_decoy(s, rng)[0], tok, C)
            decoy.without_fifo = without_fifo
            batches, weights = collate([decoy], model)
            decoys.append(float(model.forward_train(batches, loss_weights=weights)["loss"]))
    return {"exact": exact, "n": len(samples), "answer_loss": round(sum(losses) / len(losses), 4),
            "decoy_loss": round(sum(decoys) / len(decoys), 4), "exact_teacher_forced": without_fifo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", choices=sorted(ARMS), required=True)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--families", default="passkey_memory:1", help="family:weight pairs to train on")
    ap.add_argument("--tokens-per-micro-batch", type=int, default=1024)
    ap.add_argument("--eval-items", type=int, default=40)
    ap.add_argument("--closed", type=int, default=1,
                    help="closed chunks per sequence; held-out needles sit in the first, so above 1 the global "
                         "memory must keep the key through closed - 1 gated updates")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-before", action="store_true", help="do not evaluate the untrained arm first")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = CometConfig(**SMALL, **ARMS[a.arm])
    model = CometModel.from_pretrained(DEFAULT_BASE, config=cfg, device="cpu")
    samples = held_out(model, a.eval_items, a.closed)
    without = a.arm in WITHOUT_FIFO
    before = None if a.skip_before else evaluate(model, samples, without)
    print(json.dumps({"arm": a.arm, "before": before}), flush=True)
    run = Path(a.out).with_suffix(".run")
    args = TrainArgs(output_dir=str(run), steps=a.steps, lr=a.lr, warmup_steps=10, curriculum=[(10**9, a.closed)],
                     families={k: float(v) for k, v in (p.split(":") for p in a.families.split(","))},
                     tokens_per_micro_batch=a.tokens_per_micro_batch,
                     save_every=10**9, log_every=10, gradient_checkpointing=False, smoke=True, comet=cfg.to_dict(),
                     fifo_dropout=1.0 if without else 0.0)
    t0 = time.time()
    result = train(args, model=model, log=lambda line: print(line, flush=True))
    after = evaluate(model, samples, without)
    report = {"arm": a.arm, "closed": a.closed, "config": cfg.to_dict(), "steps": a.steps, "lr": a.lr,
              "families": a.families,
              "seconds": round(time.time() - t0),
              "before": before, "after": after,
              "loss_curve": [round(h["loss"], 4) for h in result["history"]],
              "family_loss": [h["families"] for h in result["history"] if "families" in h]}
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("arm", "seconds", "before", "after")}), flush=True)


if __name__ == "__main__":
    main()
