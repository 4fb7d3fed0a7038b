"""Per-sample answer losses of a model on a few fixed pass-key streams: a quick check that a change to the model's
arithmetic (a fused kernel, a different product order) leaves an adapter's outputs as they were.

Run it before and after the change (e.g. with the change stashed) and compare the printed losses:

    python tools/sample_losses.py --model training/smollm2-default/checkpoint --seeds 1,2 --closed 2

Deterministic in ``--seeds``: each seed is one ``passkey_memory`` stream of ``closed`` chunks plus 300 tokens.
"""

from __future__ import annotations

import argparse

import torch

from comet_agents import CometModel
from comet_agents.engine import encode_text
from comet_agents.training.data import passkey
from comet_agents.training.examples import collate, encode_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--seeds", default="1,2", help="comma-separated stream seeds")
    ap.add_argument("--closed", type=int, default=2, help="closed chunks before the open chunk")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    model = CometModel.from_pretrained(a.model, device=a.device)
    model.eval()
    tok, C = model.tokenizer, model.config.chunk_size
    count = lambda text: len(encode_text(tok, text))  # noqa: E731
    seeds = [int(s) for s in a.seeds.split(",")]
    examples = [encode_sample(passkey.generate_in_memory(s, a.closed * C + 300, count), tok, C) for s in seeds]
    batches, weights = collate(examples, model)
    with torch.no_grad():
        out = model.forward_train(batches, loss_weights=weights)
    for seed, loss in zip(seeds, out["sample_loss"].tolist()):
        print(f"seed {seed}: answer loss {loss:.6f}")


if __name__ == "__main__":
    main()
