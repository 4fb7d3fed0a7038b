"""Global-memory gate values while a model absorbs a pass-key haystack: per layer, the mean g of each update
and the share of slots saturated (g > 0.99 or g < 0.01) at the last one. g near 1 keeps the old slot, near 0
takes the new chunk's readout; a layer whose every slot sits at 0 or 1 has stopped learning (no gradient).

    python tools/gate_stats.py --model training/smollm2-default/checkpoint --tokens 8192
"""

from __future__ import annotations

import argparse
import time

import torch

from comet_agents import CometModel
from comet_agents.engine import MemoryEngine
from comet_agents.training.data import passkey


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    model = CometModel.from_pretrained(a.model, device=a.device)
    model.eval()
    if model.config.m == 0 or not model.config.gate:
        raise SystemExit("this model has no gated global memory")
    seen: dict[int, list[torch.Tensor]] = {}
    for layer, mem in enumerate(model.memory):
        mem.global_net.gate.register_forward_hook(
            lambda mod, inp, out, layer=layer: seen.setdefault(layer, []).append(torch.sigmoid(out[0, :, 0]).float().cpu()))
    engine = MemoryEngine(model)
    sample = passkey.generate(a.seed, a.tokens, engine.count_tokens)
    t0 = time.perf_counter()
    state = engine.absorb_text(engine.new_state(), sample.stream)
    answer = engine.recall(state, sample.qa[0].question, max_new_tokens=16)
    print(f"{int(state.chunks[0])} chunks in {time.perf_counter() - t0:.0f} s; key {sample.meta['key']!r} at depth "
          f"{sample.meta['depth']:.2f}, answer {answer!r}")
    print("layer | mean g per update | saturated at the last update")
    for layer in sorted(seen):
        g = torch.stack(seen[layer])
        sat = float(((g[-1] > 0.99) | (g[-1] < 0.01)).float().mean())
        print(f"{layer:2d} | {' '.join(f'{x:.2f}' for x in g.mean(1).tolist())} | {sat:.2f}")


if __name__ == "__main__":
    main()
