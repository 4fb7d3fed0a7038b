"""Teacher-forced probability of each token of the true key, and of the end-of-turn marker after it, in the
pass-key grid's own cases: which decision of the answer a miss comes from.

A grid row says only that ``'64733433'`` is not ``6473343``; this says whether the digits were uncertain or the
stop was (step 3,650 on the 1,500-token cases: the digits 0.85-1.00, the end marker 0.79-0.90 where the key sat
in the FIFO and 1.00 in the open chunk; 0.18 in the miss, whose argmax was a third ``3``). The cases are
:func:`comet_agents.evaluation.grid_cases`' for the same ``--lengths``, ``--depths``, ``--trials``, ``--seed`` and
``--key-digits``, so a row here is the grid row of the same (length, depth, trial).

    python tools/answer_probs.py --model training/smollm2-default/checkpoint --lengths 1500 --out rows.json

On 2 CPU cores about 5 s per 1,500-token case (one forward of the open chunk per answer token).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from comet_agents import CometModel
from comet_agents.cli import _ints
from comet_agents.engine import MemoryEngine, chat_question
from comet_agents.evaluation import QUESTION, grid_cases
from comet_agents.layout import key_age


def token_probs(engine: MemoryEngine, state: Any, prompt: list[int], answer: list[int], end: int) -> list[dict]:
    """For each position of ``answer`` + [end]: the probability of the wanted token given the true prefix, and
    the argmax token."""
    out = []
    for i, want in enumerate([*answer, end]):
        batch, _, _ = engine.open_chunk(state, prompt + answer[:i])
        with torch.no_grad():
            logits, _ = engine.model.prefill_open_chunk(state, batch)
        p = torch.softmax(logits[0].float(), -1)
        out.append({"want": int(want), "p": round(float(p[want]), 4), "top": int(p.argmax())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--lengths", default="1500", help="comma-separated lengths; k and m suffixes allowed")
    ap.add_argument("--depths", type=int, default=5, help="number of depths from 0%% to 100%%")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--key-digits", default="5-7", help="N or A-B, as for comet-agents eval passkey")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    lo, _, hi = a.key_digits.partition("-")
    digits = (int(lo), int(hi or lo))
    depths = [i / (a.depths - 1) for i in range(a.depths)] if a.depths > 1 else [0.0]
    model = CometModel.from_pretrained(a.model, device=a.device)
    model.eval()
    engine = MemoryEngine(model)
    tok, C = model.tokenizer, model.config.chunk_size
    end = engine.default_stop_ids()[-1] if "<|im_end|>" not in tok.get_vocab() else tok.convert_tokens_to_ids(
        "<|im_end|>")
    prompt = engine.encode(chat_question(tok, QUESTION))
    rows, t0 = [], time.monotonic()
    cases = grid_cases(engine, _ints(a.lengths), depths, trials=a.trials, seed=a.seed,
                       key_digits=digits)
    for length, depth, trial, key, toks, key_at in cases:
        state = engine.new_state()
        engine.absorb_many([state], [toks])
        probs = token_probs(engine, state, prompt, engine.encode(key), end)
        age = key_age(key_at, len(toks), C)
        row = {"length": length, "tokens": len(toks), "depth": depth, "trial": trial, "key": key, "key_age": age,
               "memory": model.config.memory_tier(age), "probs": probs,
               "teacher_forced_hit": all(p["top"] == p["want"] for p in probs)}
        rows.append(row)
        shown = " ".join(("END" if p["want"] == end else tok.decode([p["want"]])) + f":{p['p']:.2f}"
                         + ("" if p["top"] == p["want"] else f"[{tok.decode([p['top']])!r}]") for p in probs)
        print(f"{length} {depth:.2f} {trial} {row['memory']} {key}  {shown}", flush=True)
    print(f"{len(rows)} cases in {time.monotonic() - t0:.0f} s on {a.device}; model {a.model}")
    print("| memory | cases | key tokens: mean p | lowest | end marker: mean p | lowest | every token argmax |")
    print("|---|---|---|---|---|---|---|")
    for tier in ("open", "fifo", "global"):
        sel = [r for r in rows if r["memory"] == tier]
        if not sel:
            continue
        keys = [p["p"] for r in sel for p in r["probs"][:-1]]
        ends = [r["probs"][-1]["p"] for r in sel]
        print(f"| {tier} | {len(sel)} | {statistics.mean(keys):.3f} | {min(keys):.2f} | {statistics.mean(ends):.3f} "
              f"| {min(ends):.2f} | {sum(r['teacher_forced_hit'] for r in sel)}/{len(sel)} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "device": a.device, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
