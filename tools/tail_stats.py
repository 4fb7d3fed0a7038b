"""What the trainer's sequences leave in their open chunk: the open-chunk lengths (stream tail + questions and
answers) of real training micro-batches, where their first answer starts inside its chunk, and per family how
often ``examples.trim_tail`` can cut a stream to a short tail.

    python tools/tail_stats.py --closed 2 --steps 12 --cut-samples 10

Deterministic (the trainer's seeds); the real SmolLM2 tokenizer, no model weights needed beyond loading the
default checkpoint's tokenizer. A minute or two on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import collections
import random

from comet_agents import CometModel
from comet_agents.engine import encode_text, token_index_at
from comet_agents.training.data import FAMILIES
from comet_agents.training.data.common import generate_mixed
from comet_agents.training.examples import encode_sample
from comet_agents.training.trainer import SampleSource, TrainArgs


def first_answer_offset(tok, ex, C: int) -> int | None:
    """Offset inside its chunk of the first mention of the example's first answer (its supervised tokens up to
    the end of the turn), or None when that mention is in the open chunk."""
    ids = sum(ex.chunk_texts, [])
    labels = sum(ex.chunk_labels, [])
    supervised = tok.decode([ids[t + 1] for t, lab in enumerate(labels[:-1]) if lab != -100])
    answer = supervised.split("<|im_end|>")[0].strip()
    text = tok.decode(ids)
    at = token_index_at(tok, text, text.index(answer), len(ids))
    return at % C if at < (ex.num_chunks - 1) * C else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="training/smollm2-default/checkpoint", help="where the tokenizer comes from")
    ap.add_argument("--closed", type=int, default=2, help="closed chunks per training sequence")
    ap.add_argument("--steps", type=int, default=12, help="micro-batches of 16 pass-key sequences to measure")
    ap.add_argument("--chunk-end-share", type=float, default=TrainArgs.chunk_end_share,
                    help="the trainer's share of sequences cut so that their first answer ends a closed chunk")
    ap.add_argument("--short-tail-share", type=float, default=TrainArgs.short_tail_share,
                    help="the trainer's share of sequences that keep at most SHORT_TAIL stream tokens in the open chunk")
    ap.add_argument("--question-echo-share", type=float, default=TrainArgs.question_echo_share,
                    help="the trainer's share of streams that end with the question as the user's message")
    ap.add_argument("--cut-samples", type=int, default=10, help="samples per family for the cut rates")
    a = ap.parse_args()
    tok = CometModel.from_pretrained(a.model).tokenizer
    C = 1024
    args = TrainArgs(output_dir="unused", families={"passkey_memory": 0.5, "passkey": 0.3, "passkey_multi": 0.2},
                     curriculum=[(10**9, a.closed)], sequences_per_micro_batch=16,
                     chunk_end_share=a.chunk_end_share, short_tail_share=a.short_tail_share,
                     question_echo_share=a.question_echo_share)
    source = SampleSource(args, tok, C)
    lengths = [len(ex.chunk_texts[-1]) for step in range(a.steps) for ex in source.micro_batch(step, 0)]
    hist = sorted(collections.Counter(n // 64 * 64 for n in lengths).items())
    print(f"{len(lengths)} sequences of {a.closed} closed chunks; open-chunk length (tail + QA), by 64 tokens:")
    print("  " + ", ".join(f"{lo}-{lo + 63}: {k}" for lo, k in hist))
    print(f"  under 64 tokens: {sum(n < 64 for n in lengths)}")
    offsets = [first_answer_offset(tok, ex, C) for step in range(a.steps) for ex in source.micro_batch(step, 0)]
    closed = [o for o in offsets if o is not None]
    print(f"first answer in a closed chunk: {len(closed)} of {len(offsets)}; starting in its chunk's last 64 tokens: "
          f"{sum(o >= C - 64 for o in closed)} (chunk_end_share {args.chunk_end_share})")
    count = lambda text: len(encode_text(tok, text))  # noqa: E731
    print(f"cut to a drawn tail of 0-40 tokens, of {a.cut_samples} samples per family:")
    for family in FAMILIES:
        rng = random.Random(1)
        cut = 0
        for _ in range(a.cut_samples):
            tail = rng.randint(0, 40)
            sample = generate_mixed(rng.randrange(2**31), 2 * C + tail, {family: 1.0}, count)
            whole, trimmed = encode_sample(sample, tok, C), encode_sample(sample, tok, C, tail=tail)
            cut += len(trimmed.chunk_texts[-1]) < len(whole.chunk_texts[-1])
        print(f"  {family}: {cut}")


if __name__ == "__main__":
    main()
