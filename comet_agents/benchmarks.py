"""Absorb benchmark: text tokens/s and peak memory against stream length (``comet-agents bench absorb``).

CoMeT's promise is linear time and flat memory. This measures both on the real engine: one session absorbs a
stream of N tokens chunk by chunk; we report wall time, tokens/s, and peak accelerator memory (CUDA) or peak
resident memory growth (CPU) during the absorb.
"""

from __future__ import annotations

import gc
import random
import resource
import time
from dataclasses import asdict, dataclass

import torch

from .engine import MemoryEngine


@dataclass
class AbsorbResult:
    tokens: int
    seconds: float
    tokens_per_s: float
    peak_bytes: int
    state_bytes: int
    device: str


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_absorb(engine: MemoryEngine, tokens: int, *, seed: int = 0, piece: int = 65536) -> AbsorbResult:
    """Absorb ``tokens`` pseudo-random text tokens into a fresh state, fed in pieces of ``piece`` tokens."""
    model = engine.model
    rng = random.Random(seed)
    vocab = min(model.first_special_id, 32000)
    dev = model.device
    state = engine.new_state()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_bytes()
    start = time.perf_counter()
    done = 0
    while done < tokens:
        n = min(piece, tokens - done)
        engine.absorb(state, [rng.randrange(100, vocab) for _ in range(n)])
        done += n
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = max(0, _rss_bytes() - base)
    seconds = time.perf_counter() - start
    return AbsorbResult(tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds, peak_bytes=int(peak),
                        state_bytes=state.nbytes(), device=str(dev))


def results_table(results: list[AbsorbResult]) -> str:
    """Markdown table of benchmark rows."""
    lines = ["| tokens | seconds | tokens/s | peak memory (MiB) | state (MiB) |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.tokens:,} | {r.seconds:.2f} | {r.tokens_per_s:,.0f} | {r.peak_bytes / 2**20:,.1f} | "
                     f"{r.state_bytes / 2**20:.2f} |")
    return "\n".join(lines)


def as_dicts(results: list[AbsorbResult]) -> list[dict]:
    return [asdict(r) for r in results]
