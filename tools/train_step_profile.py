"""What one training step costs, measured on any machine (CPU is enough): the number of aten operations a
micro-batch issues (forward and backward), the bytes autograd keeps for backward per token, and how fast one
data worker makes each family's micro-batches.

The op count does not depend on the batch size, so it shows whether a GPU run is dispatch-bound (many small ops)
rather than compute-bound. The saved bytes size ``--tokens-per-micro-batch`` for a card's memory.

    python tools/train_step_profile.py --chunks 1,3 --dtype bfloat16

Uses the real SmolLM2-135M-Instruct base and the default config; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from comet_agents import CometModel
from comet_agents.base_models import DEFAULT_BASE
from comet_agents.training.data import FAMILIES
from comet_agents.training.examples import collate
from comet_agents.training.trainer import SampleSource, TrainArgs, trainable_groups


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _source(model: CometModel, family: str, closed: int, tokens: int) -> SampleSource:
    args = TrainArgs(output_dir="unused", families={family: 1.0}, curriculum=[(10**9, closed)],
                     tokens_per_micro_batch=tokens, smoke=True)
    return SampleSource(args, model.tokenizer, model.config.chunk_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="1,3", help="closed chunks per sequence, comma-separated")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="backbone dtype")
    ap.add_argument("--skip-data", action="store_true", help="do not time the data generators")
    opts = ap.parse_args()
    # Ops are counted in float32 (bfloat16 backward is very slow on CPUs; the op count does not depend on it).
    model = CometModel.from_pretrained(DEFAULT_BASE, device="cpu")
    model.train()
    trainable_groups(model, TrainArgs(output_dir="unused", smoke=True))
    saving = model if opts.dtype == "float32" else CometModel.from_pretrained(
        DEFAULT_BASE, device="cpu", dtype=getattr(torch, opts.dtype))
    saving.train()
    trainable_groups(saving, TrainArgs(output_dir="unused", smoke=True))
    for closed in (int(c) for c in opts.chunks.split(",")):
        examples = _source(model, "passkey_memory", closed, 2600 * (closed + 1)).micro_batch(0, 0)
        batches, weights = collate(examples, model)
        counter = _CountOps()
        with counter:
            out = model.forward_train(batches[:], loss_weights=weights)
            forward_ops = sum(counter.ops.values())
            out["loss"].backward()
        model.zero_grad(set_to_none=True)
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            saving.forward_train(batches, loss_weights=weights)
        tokens = sum(ex.num_tokens for ex in examples)
        total = sum(counter.ops.values())
        print(f"{closed} closed chunk(s), {len(examples)} sequences, {tokens} tokens: {forward_ops} forward ops, "
              f"{total - forward_ops} backward ops, {forward_ops / (closed + 1) / model.num_layers:.0f} forward ops "
              f"per (layer, chunk); saved for backward {sum(saved.values()) / 2**30:.2f} GiB = "
              f"{sum(saved.values()) / tokens / 1024:.0f} KiB per token ({opts.dtype})", flush=True)
    if not opts.skip_data:
        for family in sorted(FAMILIES):
            source = _source(model, family, 3, 32768)
            t0, n = time.perf_counter(), 0
            for step in range(3):
                n += sum(ex.num_tokens for ex in source.micro_batch(step, 0))
            print(f"data {family}: {n / (time.perf_counter() - t0):,.0f} tokens/s in one process")


if __name__ == "__main__":
    main()
