"""How much of a pass key the memory carries: answer loss of the true key against a decoy key of the same format.

Exact-match accuracy stays at 0 until a memory carries the whole key, and a raw answer loss mixes what the model
knows about the key with what it knows about key formats (how many digits, which code patterns). This tool
separates the two: every pass-key stream is scored twice with the same memory, once with the true key as the
answer and once with a decoy drawn from the same format (each digit replaced by a random digit, each letter by a
random letter). If memory carries nothing about the key, both losses have the same expectation (true key and
decoy are independent draws of one distribution), so ``decoy - true`` (nats per answer token) measures the key
information that reached the answer. Rows are grouped by the key's memory tier (open chunk, FIFO, global memory
only), each stream laid out with the FIFO and, with ``--without-fifo``, also without it (then a closed-chunk key
can only come through the global memory: tier ``nofifo``). A second table follows the true key token by token
(teacher-forced): the loss at each answer position and how often the greedy choice there is the key's token,
which shows where in a key the memory loses it (its first digits, or the later ones).

    python tools/memory_info.py --model training/smollm2-default/checkpoint --closed 2 --samples 16 --without-fifo
    python tools/memory_info.py --model training/smollm2-default/checkpoint --closed 6 --samples 12

Deterministic in ``--seed``. Keys sit in the first 55 % of the stream (``passkey_memory``), so at ``--closed 2``
they are 1-2 chunks back, at ``--closed 6`` mostly beyond the FIFO's 4-chunk reach. ``--chunk-end N`` moves every
key to the last N tokens of its chunk (the place exact-match recall misses it, docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import string
import time
from typing import Any

import torch

from comet_agents import CometModel
from comet_agents.engine import encode_text
from comet_agents.training.data import passkey
from comet_agents.training.examples import chunk_end_cut, collate, encode_sample, qa_pieces, trim_tail


def decoy_key(key: str, rng: random.Random) -> str:
    """A key of the same format as ``key`` that differs from it: digits and letters redrawn, separators kept."""
    while True:
        out = "".join(
            rng.choice(string.digits[1:] if i == 0 and key.isdigit() else string.digits) if c.isdigit()
            else rng.choice(string.ascii_uppercase) if c.isupper()
            else rng.choice(string.ascii_lowercase) if c.islower()
            else c
            for i, c in enumerate(key)
        )
        if out != key:
            return out


def with_decoy(sample: Any, rng: random.Random) -> tuple[Any, str]:
    """A copy of a one-question pass-key ``sample`` whose answer is a decoy key; returns it and the decoy."""
    fake = decoy_key(sample.meta["key"], rng)
    return dataclasses.replace(sample, qa=[dataclasses.replace(sample.qa[0], answer=fake)]), fake


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--closed", type=int, default=2, help="closed chunks before the open chunk")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="streams scored together")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--tail", default=None, metavar="MIN-MAX",
                    help="stream tokens left in the open chunk, drawn uniformly, the stream cut to them (default: C/8 "
                         "to 7C/8, uncut)")
    ap.add_argument("--chunk-end", type=int, default=0, metavar="N",
                    help="cut every stream so that its key starts 1 to N tokens before the end of a closed chunk "
                         "(examples.chunk_end_cut), where few of the chunk's compression tokens see it")
    ap.add_argument("--without-fifo", action="store_true", help="also score every stream laid out without the FIFO")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args()
    model = CometModel.from_pretrained(a.model, device=a.device)
    model.eval()
    tok, C = model.tokenizer, model.config.chunk_size
    count = lambda text: len(encode_text(tok, text))  # noqa: E731
    bounds = a.tail.split("-") if a.tail else [str(C // 8), str(C - C // 8)]
    if len(bounds) != 2 or not all(b.isdigit() for b in bounds) or not 0 <= int(bounds[0]) <= int(bounds[1]) < C:
        raise SystemExit(f"--tail must be MIN-MAX with 0 <= MIN <= MAX < {C}, got {a.tail!r}")
    lo, hi = int(bounds[0]), int(bounds[1])
    if not 0 <= a.chunk_end <= C:
        raise SystemExit(f"--chunk-end must be in [0, {C}], got {a.chunk_end}")
    rng = random.Random(a.seed)
    pairs = []  # (true example, decoy example, key, decoy, stream tokens in the open chunk)
    while len(pairs) < a.samples:
        tail = rng.randint(lo, hi)
        extra = C if a.chunk_end else 0  # a chunk more, cut from the front
        sample = passkey.generate_in_memory(rng.randrange(2**31), a.closed * C + extra + tail, count)
        if a.tail:  # cut to the drawn tail (a generated stream overshoots by a sentence), true and decoy alike
            sample = dataclasses.replace(
                sample, stream=tok.decode(trim_tail(sample, encode_text(tok, sample.stream), tok, C, tail)))
        if a.chunk_end:  # the stream itself is cut, so that true key and decoy are scored on the same stream
            cut = chunk_end_cut(sample, encode_text(tok, sample.stream), tok, C, a.closed, tail,
                                rng.randint(1, a.chunk_end))
            if cut is None:
                continue
            text = tok.decode(cut[0])
            sample = dataclasses.replace(sample, stream=text,
                                         meta={**sample.meta, "needle_char_offset": text.index(sample.meta["key"])})
        true_ex = encode_sample(sample, tok, C)
        if true_ex.num_chunks != a.closed + 1 or true_ex.key_age is None:
            continue
        key = sample.meta["key"]
        decoy, fake = with_decoy(sample, rng)
        qa_len = sum(len(encode_text(tok, t)) for t, _ in qa_pieces(tok, sample.qa))
        pairs.append((true_ex, encode_sample(decoy, tok, C), key, fake, len(true_ex.chunk_texts[-1]) - qa_len))
    layouts = [False, True] if a.without_fifo else [False]
    rows = []
    t0 = time.perf_counter()
    for without in layouts:
        for i in range(0, len(pairs), a.batch):
            group = pairs[i:i + a.batch]
            exs = [dataclasses.replace(e, without_fifo=without) for p in group for e in p[:2]]
            batches, weights = collate(exs, model)
            with torch.no_grad():
                out = model.forward_train(batches, loss_weights=weights, return_token_losses=True)
            losses = out["sample_loss"].tolist()
            for j, (true_ex, _, key, fake, tail) in enumerate(group):
                tier = model.config.memory_tier(true_ex.key_age)
                tier = "nofifo" if without and tier != "open" else tier
                token_ce, token_hit = [], []
                for stats in out["token_losses"]:
                    if stats is not None:
                        mine = stats[0] == 2 * j
                        token_ce += stats[1][mine].tolist()
                        token_hit += stats[2][mine].tolist()
                rows.append({"key": key, "decoy": fake, "key_age": true_ex.key_age, "tier": tier, "tail": tail,
                             "without_fifo": without, "true_loss": losses[2 * j], "decoy_loss": losses[2 * j + 1],
                             "true_token_loss": token_ce, "true_token_hit": token_hit})
    print(f"{len(rows)} scorings in {time.perf_counter() - t0:.0f} s; {a.closed} closed chunks, model {a.model}")
    print("| tier | streams | true-key loss | decoy loss | key information (decoy - true) | true below decoy |")
    print("|---|---|---|---|---|---|")
    for tier in ("open", "fifo", "nofifo", "global"):
        sel = [r for r in rows if r["tier"] == tier]
        if not sel:
            continue
        t = sum(r["true_loss"] for r in sel) / len(sel)
        d = sum(r["decoy_loss"] for r in sel) / len(sel)
        wins = sum(r["true_loss"] < r["decoy_loss"] for r in sel)
        print(f"| {tier} | {len(sel)} | {t:.2f} | {d:.2f} | {d - t:+.2f} | {wins}/{len(sel)} |")
    width = max(len(r["true_token_loss"]) for r in rows)
    print("\nTrue key, answer token by answer token (teacher-forced): loss / greedy hits; 'whole' = every token hit")
    print("| tier | " + " | ".join(f"token {k + 1}" for k in range(width)) + " | whole |")
    print("|---|" + "---|" * (width + 1))
    for tier in ("open", "fifo", "nofifo", "global"):
        sel = [r for r in rows if r["tier"] == tier]
        if not sel:
            continue
        cells = []
        for k in range(width):
            at = [r for r in sel if len(r["true_token_loss"]) > k]
            if not at:  # keys of this tier are all shorter
                cells.append("-")
                continue
            loss = sum(r["true_token_loss"][k] for r in at) / len(at)
            cells.append(f"{loss:.2f} / {sum(r['true_token_hit'][k] for r in at)}/{len(at)}")
        whole = sum(all(r["true_token_hit"]) for r in sel)
        print(f"| {tier} | " + " | ".join(cells) + f" | {whole}/{len(sel)} |")
    print("\nThe same by role (keys of 3-9 digits differ in length): the key's first token, its inner tokens, its last "
          "token, and the end-of-turn marker after it (missed: the model lengthens the key)")
    print("| tier | first | inner | last | end marker |")
    print("|---|---|---|---|---|")
    for tier in ("open", "fifo", "nofifo", "global"):
        sel = [r for r in rows if r["tier"] == tier and len(r["true_token_loss"]) >= 3]
        if not sel:
            continue
        cells = []
        for pick in (lambda n: [0], lambda n: list(range(1, n - 2)), lambda n: [n - 2], lambda n: [n - 1]):
            at = [(r, k) for r in sel for k in pick(len(r["true_token_loss"]))]
            loss = sum(r["true_token_loss"][k] for r, k in at) / max(1, len(at))
            cells.append(f"{loss:.2f} / {sum(r['true_token_hit'][k] for r, k in at)}/{len(at)}" if at else "-")
        print(f"| {tier} | " + " | ".join(cells) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "closed": a.closed, "seed": a.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
