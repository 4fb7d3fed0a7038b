"""Training a CoMeT adapter: frozen backbone, trainable memory nets (5x learning rate), added embeddings, LoRA.

* Data: synthetic samples generated on the fly, deterministically from ``(seed, step, micro-batch)``, so a
  resumed run sees exactly the batches an uninterrupted run would.
* Forward: layer-major over all chunks of a sequence (``CometModel.forward_train``), full backpropagation
  through every chunk, activation checkpointing of every (layer, chunk) step and of every chunk's loss.
* Curriculum over sequence length: the number of closed chunks per sequence grows with the step, fixed or
  drawn per step from a range.
* FIFO dropout (``fifo_dropout``): a share of sequences is laid out without the temporary memory, so their
  answers must come through the global memory; losses are also logged per memory tier (``family@global``...).
* Memory gates train at the base learning rate, not the memory nets' (``gate_lr_mult``); ``reinit_gates``
  restarts the gates of a checkpoint whose gates have saturated.
* Data parallel with torchrun: every rank trains on its own micro-batches, gradients are averaged with an
  all-reduce before each optimizer step (no DDP wrapper needed: only adapter parameters train).
* Checkpoints are safetensors + JSON (adapter, AdamW moments, trainer state), never pickle; each file stays
  under 16 MB for SmolLM2-135M so checkpoints travel through size-limited channels.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..base_models import DEFAULT_BASE
from ..config import CometConfig
from ..engine import encode_text
from ..layout import LayoutBatch
from ..modeling import ADAPTER_FILE, CometModel
from .examples import Collator, TrainingExample, encode_sample

STATE_FILE = "trainer_state.json"
# The longest stream tail a ``short_tail_share`` draw leaves in the open chunk: a recall right after a chunk
# closed has 0 to about 30 tokens there (a piece of the stream that did not fill the next chunk).
SHORT_TAIL = 31


@dataclass
class TrainArgs:
    """Everything a run depends on; stored in the checkpoint and checked on resume."""

    output_dir: str
    base: str | None = None
    steps: int = 1000
    lr: float = 2e-4
    memory_lr_mult: float = 5.0
    # The gate's logit is a dot product over 2d RMS-normalised features, and AdamW moves each weight by about the
    # learning rate per step however small its gradient: at the memory nets' rate the logits ran into saturation
    # (g = 0 or 1 for every slot, no gradient left; docs/training.md, steps 1,969-2,306). Relative to ``lr``.
    gate_lr_mult: float = 1.0
    # Share of sequences laid out without the FIFO, whose answers can then only come through the global memory:
    # with the FIFO present, only keys older than its reach (4 chunks) need the global memory.
    fifo_dropout: float = 0.0
    # Share of sequences cut so that their first answer starts in the last sixteenth of a closed chunk (the last
    # 64 of 1,024 tokens), where few of the chunk's compression tokens see it: such keys were found 3 of 28 times
    # at step 2,945, earlier ones 43 of 50 (docs/training.md). Uniform depths put 5 % of first answers there, this
    # share 17-24 % (``tools/tail_stats.py``: about half the draws can be cut so, the others are drawn as usual).
    chunk_end_share: float = 0.35
    # Share of sequences whose stream ends with the first question as the user's message, as a memory middleware
    # absorbs a request before asking memory about it; without such draws the step-3,293 model answered with the
    # echoed question instead of the fact (docs/training.md, steps 3,184-3,293).
    question_echo_share: float = 0.15
    # Share of sequences whose open chunk keeps at most ``SHORT_TAIL`` stream tokens, as right after a chunk
    # closed. The uniform 0-896 draw gives 2 %; at steps 3,184 and 3,293 keys in closed chunks under tails of
    # 0-19 tokens were found 33 of 38 times both times while those under longer tails went from 34 to 37 of 38
    # (docs/training.md, steps 3,184-3,293), and 5 of the 6 misses at step 3,293 had such a tail.
    short_tail_share: float = 0.2
    warmup_steps: int = 20
    # (from_step, to_step): from ``from_step`` the rate falls along a half cosine from its scheduled value there
    # to zero at ``to_step``, where the run ends (to_step <= steps). It lets a run whose cosine horizon (``steps``)
    # lies further out than the device time left reach a rate of zero sooner, without a jump in the rate.
    # None: the plain schedule to ``steps``.
    anneal: tuple[int, int] | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    tokens_per_micro_batch: int = 32768
    sequences_per_micro_batch: int = 0  # when > 0, overrides tokens_per_micro_batch
    # (until_step, closed chunks) or (until_step, fewest, most): a range draws each step's count uniformly.
    curriculum: list[tuple[int, ...]] = field(default_factory=lambda: [(200, 2), (500, 4), (10**9, 8)])
    families: dict[str, float] = field(default_factory=lambda: {"passkey": 1.0})
    lm_weight: float = 0.0
    # Loss weight of the end-of-turn token after each answer (other answer tokens weigh 1). The first steps on
    # 3-9 digit keys got the digits right and the length wrong: 17 of the 23 misses of step 3,629's grid repeat
    # the key's last digit instead of ending the answer (docs/training.md, steps 3,575-3,650).
    end_weight: float = 1.0
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None
    num_workers: int = 4
    gradient_checkpointing: bool = True
    checkpoint_from_chunks: int = 0
    # Optimizer steps to run under torch.profiler (from the run's third step on), whose top operators and the
    # share of the wall time the device was busy go to the log: where a step's time goes. 0: no profiling.
    profile_steps: int = 0
    # The backbone's RMSNorms and gated MLP activations through torch.compile (fusion.py): fewer memory-bound
    # kernels per step. Off by default until a GPU run has measured it.
    fuse: bool = False
    smoke: bool = False
    comet: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fifo_dropout <= 1.0:
            raise ValueError(f"fifo_dropout must be in [0, 1], got {self.fifo_dropout}")
        if not 0.0 <= self.chunk_end_share <= 1.0:
            raise ValueError(f"chunk_end_share must be in [0, 1], got {self.chunk_end_share}")
        if not 0.0 <= self.question_echo_share <= 1.0:
            raise ValueError(f"question_echo_share must be in [0, 1], got {self.question_echo_share}")
        if not self.end_weight >= 0.0:
            raise ValueError(f"end_weight must be >= 0, got {self.end_weight}")
        if not 0.0 <= self.short_tail_share <= 1.0:
            raise ValueError(f"short_tail_share must be in [0, 1], got {self.short_tail_share}")
        if self.anneal is not None:
            start, end = (int(x) for x in self.anneal)
            if not self.warmup_steps <= start < end <= self.steps:
                raise ValueError(f"anneal ({start}, {end}) must satisfy warmup_steps ({self.warmup_steps}) <= from < "
                                 f"to <= steps ({self.steps})")
            self.anneal = (start, end)
        if self.profile_steps < 0:
            raise ValueError(f"profile_steps must be >= 0, got {self.profile_steps}")
        if self.tokens_per_micro_batch < 1 or self.sequences_per_micro_batch < 0:
            raise ValueError(f"tokens_per_micro_batch must be >= 1 and sequences_per_micro_batch >= 0, got "
                             f"{self.tokens_per_micro_batch} and {self.sequences_per_micro_batch}")
        stages = []
        for stage in self.curriculum:
            until, lo, hi = (stage[0], stage[1], stage[1]) if len(stage) == 2 else tuple(stage)
            if not 1 <= lo <= hi:
                raise ValueError(f"curriculum stage {tuple(stage)}: closed chunks must satisfy 1 <= fewest <= most")
            stages.append((int(until), int(lo), int(hi)))
        if not stages:
            raise ValueError("curriculum is empty")
        self.curriculum = stages

    @property
    def last_step(self) -> int:
        """Where the run ends: ``steps``, or the end of the anneal."""
        return self.anneal[1] if self.anneal else self.steps

    def chunks_at(self, step: int) -> int:
        """Closed chunks per sequence at ``step``. A stage with a range draws the count from (seed, step), so
        every micro-batch of the step (and every DDP rank) gets the same count, and resuming repeats it."""
        _, lo, hi = next((s for s in self.curriculum if step < s[0]), self.curriculum[-1])
        return lo if lo == hi else random.Random(f"{self.seed}/chunks/{step}").randint(lo, hi)


def drop_fifo(examples: list[TrainingExample], share: float, seed: int, step: int,
              micro: int) -> list[TrainingExample]:
    """Mark about ``share`` of the examples ``without_fifo``, drawn from (seed, step, micro) alone, so that a
    resumed run and every data worker mark the same ones."""
    if share <= 0:
        return examples
    rng = random.Random(f"{seed}/fifo-dropout/{step}/{micro}")
    return [replace(ex, without_fifo=True) if rng.random() < share else ex for ex in examples]


def lr_factor(step: int, args: TrainArgs) -> float:
    """Linear warm-up then cosine decay to zero at ``steps``; with ``anneal`` (from, to), from ``from`` on a half
    cosine from the scheduled factor there to zero at ``to``."""
    if args.anneal is not None and step >= args.anneal[0]:
        start, end = args.anneal
        progress = (step - start) / (end - start)
        return _cosine_factor(start, args) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return _cosine_factor(step, args)


def _cosine_factor(step: int, args: TrainArgs) -> float:
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class SampleSource:
    """Deterministic micro-batches: the batch for (step, micro) depends on nothing else.

    Every example of a micro-batch has the same number of closed chunks (``n``), so chunks batch without
    padding whole chunks; the open chunk's length varies and is padded.
    """

    def __init__(self, args: TrainArgs, tokenizer: Any, chunk_size: int,
                 generate: Callable[[int, int, dict[str, float], Callable[[str], int]], Any] | None = None) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        if generate is None:
            from .data.common import generate_mixed

            generate = generate_mixed
        self.generate = generate

    def count(self, text: str) -> int:
        return len(encode_text(self.tokenizer, text))

    def micro_batch(self, step: int, micro: int) -> list[TrainingExample]:
        args, C = self.args, self.chunk_size
        n = args.chunks_at(step)
        # A fixed number of sequences keeps the tokens per op, and so a dispatch-bound step's speed, the same at
        # every curriculum stage; a fixed token budget shrinks the batch as sequences grow.
        size = args.sequences_per_micro_batch or max(1, args.tokens_per_micro_batch // ((n + 1) * C))
        rng = random.Random(f"{args.seed}/{step}/{micro}")
        out: list[TrainingExample] = []
        attempts = 0
        while len(out) < size:
            attempts += 1
            if attempts > 40 * size:
                raise RuntimeError(f"could not generate sequences of {n} chunks (chunk size {C})")
            # The stream's tail left in the open chunk: any length, as at recall time. Generated streams end on a
            # whole piece and so overshoot the target by up to ~30 tokens; tails shorter than that (right after a
            # chunk closed) come from cutting the stream (examples.trim_tail, from step 2,831 on).
            tail = rng.randint(0, C - C // 8)
            if args.short_tail_share and rng.random() < args.short_tail_share:  # share 0: the draws of before
                tail = rng.randint(0, min(SHORT_TAIL, C - C // 8))
            seed = rng.randrange(2**31)
            echo = bool(args.question_echo_share) and rng.random() < args.question_echo_share  # share 0: as before
            ex = None
            if args.chunk_end_share and rng.random() < args.chunk_end_share:  # share 0: the draws of before
                # A chunk longer, then cut from the front so that the first answer ends a closed chunk (from
                # step 2,945 on); samples that cannot be cut so (derived answers) are drawn again as usual.
                from_end = rng.randint(1, max(1, C // 16))
                sample = self.generate(seed, (n + 1) * C + tail, args.families, self.count)
                ex = encode_sample(sample, self.tokenizer, C, lm_weight=args.lm_weight, tail=tail,
                                   chunk_end=(n, from_end), echo=echo, end_weight=args.end_weight)
            if ex is None or ex.num_chunks != n + 1:
                sample = self.generate(seed, n * C + tail, args.families, self.count)
                ex = encode_sample(sample, self.tokenizer, C, lm_weight=args.lm_weight, tail=tail, echo=echo,
                                   end_weight=args.end_weight)
            if ex.num_chunks == n + 1:
                out.append(ex)
        return out


def _to_arrays(batches: list[LayoutBatch], weights: list[torch.Tensor]) -> tuple[list[dict], list[np.ndarray]]:
    """Collated batches as numpy arrays for the trip from a data worker: DataLoader sends torch tensors through
    shared memory (``/dev/shm``, often only 64 MB in containers, and one file descriptor per tensor), numpy
    arrays through the worker's pipe."""
    fields = [{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in b.__dict__.items()} for b in batches]
    return fields, [w.numpy() for w in weights]


def _from_arrays(fields: list[dict], weights: list[np.ndarray]) -> tuple[list[LayoutBatch], list[torch.Tensor]]:
    batches = [LayoutBatch(**{k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in f.items()})
               for f in fields]
    return batches, [torch.from_numpy(w) for w in weights]


def _as_is(item: Any) -> Any:
    return item


class _MicroBatches(torch.utils.data.Dataset):
    """Index i -> (step, micro-batch, its padded chunk batches and loss weights as arrays) for this rank; the
    data workers generate and collate while the GPU trains."""

    def __init__(self, micro_batch: Callable[[int, int], list[TrainingExample]], collator: Collator,
                 start_step: int, steps: int, accum: int, rank: int, world: int, fifo_dropout: float = 0.0,
                 seed: int = 0):
        self.micro_batch, self.collator, self.start, self.steps, self.accum, self.rank, self.world = (
            micro_batch, collator, start_step, steps, accum, rank, world)
        self.fifo_dropout, self.seed = fifo_dropout, seed

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum

    def __getitem__(self, i: int) -> tuple[int, list[TrainingExample], list[dict], list[np.ndarray]]:
        step = self.start + i // self.accum
        micro = (i % self.accum) * self.world + self.rank
        examples = drop_fifo(self.micro_batch(step, micro), self.fifo_dropout, self.seed, step, micro)
        return step, examples, *_to_arrays(*self.collator(examples))


def trainable_groups(model: CometModel, args: TrainArgs) -> list[dict[str, Any]]:
    """AdamW groups: memory nets at ``memory_lr_mult``, their gates at ``gate_lr_mult``, the rest at ``lr``."""
    gates = [p for n, p in model.memory.named_parameters() if ".gate." in n]
    memory = [p for n, p in model.memory.named_parameters() if ".gate." not in n]
    other = [model.special_embeddings] + [p for n, p in model.backbone.named_parameters() if "lora_" in n]
    for loras in (model.memory_lora, model.reader_lora):
        if loras is not None:
            other += list(loras.parameters())
    for p in gates + memory + other:
        p.requires_grad_(True)
    groups = [
        {"params": memory, "lr": args.lr * args.memory_lr_mult, "base_lr": args.lr * args.memory_lr_mult},
        {"params": other, "lr": args.lr, "base_lr": args.lr},
        {"params": gates, "lr": args.lr * args.gate_lr_mult, "base_lr": args.lr * args.gate_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def _param_names(model: CometModel) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def save_checkpoint(directory: Path, model: CometModel, opt: torch.optim.Optimizer, step: int,
                    args: TrainArgs, history: list[dict[str, float]], events: list[dict] | None = None) -> None:
    """Adapter + AdamW moments (two safetensors files) + JSON trainer state, written atomically. ``events``:
    surgery done on the checkpoint between runs (e.g. :func:`reinit_gates`), kept for the record."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.invalidate_fingerprint()
    model.save_pretrained(tmp)
    names = _param_names(model)
    moments: dict[str, dict[str, torch.Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
    steps: dict[str, float] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            name = names[id(p)]
            for k in moments:
                moments[k][name] = st[k].detach().float().cpu().contiguous()
            steps[name] = float(st["step"])
    for k, tensors in moments.items():
        save_file(tensors, tmp / f"optim_{k}.safetensors")
    (tmp / STATE_FILE).write_text(json.dumps(
        {"step": step, "args": asdict(args), "adam_steps": steps, "history": history[-2000:],
         "events": events or []}, indent=1))
    if directory.exists():
        for f in directory.iterdir():
            f.unlink()
        directory.rmdir()
    tmp.rename(directory)


def load_checkpoint(directory: Path, model: CometModel,
                    opt: torch.optim.Optimizer) -> tuple[int, list[dict], list[dict]]:
    """Restore adapter weights and AdamW state; returns (next step, history, events)."""
    state = json.loads((directory / STATE_FILE).read_text())
    model.load_adapter_state_dict(load_file(str(directory / ADAPTER_FILE)))
    names = _param_names(model)
    moments = {k: load_file(str(directory / f"optim_{k}.safetensors")) for k in ("exp_avg", "exp_avg_sq")}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if name not in state["adam_steps"]:
                continue
            opt.state[p] = {
                "step": torch.tensor(state["adam_steps"][name]),
                "exp_avg": moments["exp_avg"][name].to(p.device, p.dtype),
                "exp_avg_sq": moments["exp_avg_sq"][name].to(p.device, p.dtype),
            }
    return int(state["step"]), list(state.get("history", [])), list(state.get("events", []))


def reinit_gates(directory: str | Path, *, std: float = 0.02, seed: int = 0) -> list[str]:
    """Re-initialise the global-memory gates of a checkpoint in place (N(0, std), g near 0.5 again) and drop
    their AdamW moments, leaving every other tensor and the step untouched. Returns the gate names.

    For a run whose gates saturated (every slot at g = 0 or 1: the sigmoid passes no gradient, so training
    cannot move them back). The adapter's fingerprint in ``comet_config.json`` is updated to match.
    """
    adapter = load_file(str(Path(directory) / ADAPTER_FILE))
    names = sorted(k for k in adapter if k.endswith(".global_net.gate.weight"))
    if not names:
        raise ValueError(f"{directory} holds no global-memory gates")
    gen = torch.Generator().manual_seed(seed)
    new = {name: (torch.randn(adapter[name].shape, generator=gen) * std).contiguous() for name in names}
    _rewrite_checkpoint(directory, new, {"event": "reinit_gates", "std": std, "seed": seed})
    return names


def copy_temporary_read_to_global(directory: str | Path) -> list[str]:
    """Give a checkpoint's global memory the temporary memory's read path, in place: each layer's
    ``global_net.norm`` and ``global_net.adapter`` become copies of its ``temp_net.norm`` and
    ``temp_net.adapter`` (their AdamW moments dropped). Returns the names written.

    With ``global_source="compression"`` a slot written once then holds exactly what a FIFO entry of the same
    compression token holds, so whatever the model learnt about reading the FIFO applies to the global memory
    from the first step; the two copies train apart afterwards. The gates and every other tensor stay.
    """
    adapter = load_file(str(Path(directory) / ADAPTER_FILE))
    new = {}
    for name in sorted(adapter):
        if ".global_net." in name and not name.endswith(".gate.weight"):
            src = name.replace(".global_net.", ".temp_net.")
            if src not in adapter:
                raise ValueError(f"{directory} has {name} but no {src} to copy it from")
            if adapter[src].shape != adapter[name].shape:
                raise ValueError(f"{src} {tuple(adapter[src].shape)} does not fit {name} {tuple(adapter[name].shape)}")
            new[name] = adapter[src].clone().contiguous()
    if not new:
        raise ValueError(f"{directory} holds no global-memory read path")
    _rewrite_checkpoint(directory, new, {"event": "copy_temporary_read_to_global"})
    return sorted(new)


def use_evicted_global(directory: str | Path) -> list[str]:
    """Switch a checkpoint to ``global_source="evicted"`` in place: its global memory's norm and adapter go (that
    memory keeps FIFO entries as they are), the gates and everything else stay, and ``comet_config.json`` says
    the new source. Returns the names removed. Resume it with ``--config-json '{"global_source": "evicted"}'``.
    """
    adapter = load_file(str(Path(directory) / ADAPTER_FILE))
    drop = sorted(n for n in adapter if ".global_net." in n and not n.endswith(".gate.weight"))
    if not any(n.endswith(".global_net.gate.weight") for n in adapter):
        raise ValueError(f"{directory} holds no global memory")
    _rewrite_checkpoint(directory, {}, {"event": "use_evicted_global"}, drop=drop,
                        comet={"global_source": "evicted"})
    return drop


def add_reader_lora(directory: str | Path, *, rank: int = 16, alpha: int = 32,
                    targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"), seed: int = 0) -> list[str]:
    """Give a checkpoint a reader LoRA (``CometConfig.reader_lora_rank``) in place, initialised as a new one is
    (``down`` random, ``up`` zero), so the model computes exactly what it computed and the run resumes where it
    was, with the text positions of chunks with memory now trainable. Returns the names added.

    The Linears' shapes come from the checkpoint's memory LoRA, so ``targets`` must be among its targets.
    Resume with ``--config-json`` carrying the same ``reader_lora_*`` fields (the trainer builds the model from
    it, then loads the checkpoint).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    adapter = load_file(str(Path(directory) / ADAPTER_FILE))
    if any(n.startswith("reader_lora.") for n in adapter):
        raise ValueError(f"{directory} already has a reader LoRA")
    layers = sorted({int(n.split(".")[1]) for n in adapter if n.startswith("memory_lora.")})
    if not layers:
        raise ValueError(f"{directory} has no memory LoRA to take the Linear shapes from")
    gen = torch.Generator().manual_seed(seed)
    new: dict[str, torch.Tensor] = {}
    for layer in layers:
        for name in targets:
            down = adapter.get(f"memory_lora.{layer}.down.{name}.weight")
            up = adapter.get(f"memory_lora.{layer}.up.{name}.weight")
            if down is None or up is None:
                raise ValueError(f"{directory} has no memory LoRA on {name!r} to take its shape from")
            d_in, d_out = down.shape[1], up.shape[0]
            new[f"reader_lora.{layer}.down.{name}.weight"] = (torch.randn(rank, d_in, generator=gen)
                                                              / d_in**0.5).contiguous()
            new[f"reader_lora.{layer}.up.{name}.weight"] = torch.zeros(d_out, rank)
    _rewrite_checkpoint(directory, {}, {"event": "add_reader_lora", "rank": rank, "alpha": alpha,
                                        "targets": list(targets), "seed": seed}, add=new,
                        comet={"reader_lora_rank": rank, "reader_lora_alpha": alpha,
                               "reader_lora_targets": list(targets)})
    return sorted(new)


def _rewrite_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], event: dict[str, Any], *,
                        drop: Sequence[str] = (), comet: dict[str, Any] | None = None,
                        add: dict[str, torch.Tensor] | None = None) -> None:
    """Replace ``tensors`` in a checkpoint's adapter, remove ``drop`` and add the new tensors ``add``, dropping
    the AdamW moments and step counts of all three, log ``event`` in its state, update its config's ``comet``
    fields and refresh the adapter fingerprint. Written next to the checkpoint and swapped in, so a failure
    leaves the old checkpoint whole."""
    from ..config import CONFIG_FILE
    from ..modeling import adapter_fingerprint

    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    adapter = load_file(str(directory / ADAPTER_FILE))
    unknown = sorted((set(tensors) | set(drop)) - set(adapter))
    if unknown:
        raise ValueError(f"{directory} has no tensors {unknown}")
    add = add or {}
    clash = sorted(set(add) & set(adapter))
    if clash:
        raise ValueError(f"{directory} already has tensors {clash[:3]}")
    adapter.update(tensors)
    adapter.update(add)
    for name in drop:
        del adapter[name]
    touched = set(tensors) | set(drop) | set(add)
    moments = {k: load_file(str(directory / f"optim_{k}.safetensors")) for k in ("exp_avg", "exp_avg_sq")}
    state["adam_steps"] = {n: v for n, v in state["adam_steps"].items() if n not in touched}
    state.setdefault("events", []).append({"step": state["step"], **event})
    cfg = json.loads((directory / CONFIG_FILE).read_text())
    cfg.setdefault("meta", {})["adapter_fingerprint"] = adapter_fingerprint(adapter)
    if comet:
        cfg.setdefault("comet", {}).update(comet)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(directory, tmp)
    save_file(adapter, tmp / ADAPTER_FILE, metadata={"format": "comet-agents/adapter"})
    for k, kept in moments.items():
        save_file({n: t for n, t in kept.items() if n not in touched}, tmp / f"optim_{k}.safetensors")
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old)


class _StepProfiler:
    """Runs ``steps`` optimizer steps under :mod:`torch.profiler`, after ``skip`` steps of warm-up (allocator,
    kernel selection), and logs the top operators by device time (CPU time on a CPU run) with the share of the
    wall time the device was busy: a low share means the GPU waits for Python and kernel launches, a high one
    that the kernels themselves are slow. Never stops training: a failure is logged."""

    def __init__(self, steps: int, device: torch.device, log: Callable[[str], None], skip: int = 2) -> None:
        self.left, self.skip, self.device, self.log = steps, skip, device, log
        self.prof: Any = None
        self.t0 = 0.0
        self.steps = steps

    def after_step(self) -> None:
        if self.left <= 0:
            return
        if self.prof is None:
            if self.skip > 0:
                self.skip -= 1
                return
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize(self.device)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
            return
        self.left -= 1
        if self.left == 0:
            self._report()

    def close(self) -> None:
        """Report what was profiled when the run ends (time budget, last step) before ``steps`` were done."""
        if self.prof is not None:
            self.steps -= self.left
            self._report()

    def _report(self) -> None:
        try:
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize(self.device)
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            events = self.prof.key_averages()
            if cuda:  # kernel rows only: an operator's row repeats the time of the kernels it launched
                busy = sum(e.self_device_time_total for e in events
                           if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA) / 1e6
            else:
                busy = sum(e.self_cpu_time_total for e in events) / 1e6
            self.log(f"profile: {self.steps} steps in {wall:.1f} s wall, {'device' if cuda else 'CPU'} busy "
                     f"{busy:.1f} s ({100 * busy / max(wall, 1e-9):.0f} %)")
            self.log(events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25))
        except Exception as error:  # noqa: BLE001 - a profile must never end a training run
            self.log(f"profile failed: {error!r}")
        self.prof = None


def _peak_memory(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory so far, for sizing ``tokens_per_micro_batch`` (empty on CPU)."""
    if device.type != "cuda":
        return {}
    return {"peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def train(args: TrainArgs, *, model: CometModel | None = None, sample_fn: Callable | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) training; returns a summary. Refuses to run on CPU unless ``args.smoke``."""
    rank, world = _dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif args.smoke:
        device = torch.device("cpu")
    else:
        raise RuntimeError("training needs a CUDA GPU; use --smoke for a tiny CPU run (tests)")
    if model is None:
        comet = CometConfig(**args.comet) if args.comet else CometConfig()
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = CometModel.from_pretrained(args.base or DEFAULT_BASE, config=comet, device=device, dtype=dtype)
    if args.fifo_dropout and model.config.global_from_fifo:
        raise ValueError('fifo_dropout must be 0 with global_source="evicted": the FIFO writes that global '
                         "memory, so a sequence without the FIFO would have no memory at all")
    model.to(device)
    model.train()
    if args.fuse:
        from .fusion import fuse_elementwise

        fused = fuse_elementwise(model, device, model.dtype)
        log(f"fused: {', '.join(fused)}" if fused else "fused: nothing (torch.compile failed; see the warning)")
    groups = trainable_groups(model, args)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    out_dir = Path(args.output_dir)
    ckpt = out_dir / "checkpoint"
    start, history, events = 0, [], []
    if (ckpt / STATE_FILE).exists():
        start, history, events = load_checkpoint(ckpt, model, opt)
        log(f"resumed from {ckpt} at step {start}")
    if start >= args.last_step:
        return {"step": start, "history": history}
    if model.tokenizer is None and sample_fn is None:
        raise ValueError("training needs a tokenizer (or an explicit sample_fn)")
    if sample_fn is None:
        source = SampleSource(args, model.tokenizer, model.config.chunk_size)
        sample_fn = source.micro_batch
    workers = 0 if args.smoke else args.num_workers
    dataset = _MicroBatches(sample_fn, Collator.for_model(model), start, args.last_step, args.grad_accum, rank, world,
                            args.fifo_dropout, args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        collate_fn=_as_is,  # the default would turn the numpy arrays back into tensors inside the worker
    )
    params = [p for g in groups for p in g["params"]]
    from tqdm import tqdm

    bar = tqdm(total=args.last_step, initial=start, disable=rank != 0, dynamic_ncols=True, mininterval=5)
    t0, tokens, step = time.time(), 0, start
    acc_loss, acc_n, micro_i = 0.0, 0, 0
    fam_loss: dict[str, list[float]] = {}
    window_chunks: list[int] = []  # chunks per sequence of each micro-batch since the last log line
    # Where the wall time goes between two log lines: waiting for the data workers (which also collate), the
    # rest (GPU).
    split = {"data_s": 0.0, "compute_s": 0.0}
    mark = time.perf_counter()
    deadline = t0 + 60 * args.max_minutes if args.max_minutes else None
    profiler = _StepProfiler(args.profile_steps if rank == 0 else 0, device, log)
    for step_of_batch, examples, fields, arrays in loader:
        batches, weights = _from_arrays(fields, arrays)
        got = time.perf_counter()
        split["data_s"] += got - mark
        mark = got
        recompute = args.gradient_checkpointing and len(batches) >= args.checkpoint_from_chunks
        window_chunks.append(len(batches))
        out = model.forward_train(batches, loss_weights=weights, gradient_checkpointing=recompute)
        for ex, sample_loss in zip(examples, out["sample_loss"].tolist()):
            fam_loss.setdefault(ex.family, []).append(sample_loss)
            if ex.key_age is not None:  # e.g. "passkey_memory@global": keys only the global memory can carry
                tier = model.config.memory_tier(ex.key_age)
                tier = "nofifo" if ex.without_fifo and tier != "open" else tier
                fam_loss.setdefault(f"{ex.family}@{tier}", []).append(sample_loss)
        if out["loss"] is not None:
            (out["loss"] / args.grad_accum).backward()
            acc_loss += float(out["loss"].detach())
            acc_n += 1
        tokens += sum(ex.num_tokens for ex in examples)
        micro_i += 1
        if micro_i < args.grad_accum:
            split["compute_s"] += time.perf_counter() - mark
            mark = time.perf_counter()
            continue
        micro_i = 0
        if world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, args.grad_clip))
        factor = lr_factor(step, args)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        opt.step()
        opt.zero_grad(set_to_none=True)
        split["compute_s"] += time.perf_counter() - mark
        loss = acc_loss / max(1, acc_n)
        history.append({"step": step, "loss": loss, "grad_norm": grad_norm, "lr": args.lr * factor,
                        "chunks": args.chunks_at(step) + 1})
        acc_loss, acc_n = 0.0, 0
        step += 1
        elapsed = time.time() - t0
        profiler.after_step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens * world / max(elapsed, 1e-9):.0f}")
        if rank == 0 and (step % args.log_every == 0 or step == args.last_step):
            per_family = {k: round(sum(v) / len(v), 4) for k, v in sorted(fam_loss.items())}
            fam_loss = {}
            history[-1]["families"] = per_family
            chunks = round(sum(window_chunks) / max(1, len(window_chunks)), 2)
            window_chunks = []
            log(json.dumps({"step": step, "chunks": chunks, "loss": round(loss, 5),
                            "grad_norm": round(grad_norm, 3),
                            "tokens_per_s": round(tokens * world / elapsed), "elapsed_s": round(elapsed, 1),
                            "family_loss": per_family, **_peak_memory(device),
                            **{k: round(v, 2) for k, v in split.items()}}))
            split = dict.fromkeys(split, 0.0)
        stop = deadline is not None and time.time() > deadline
        if world > 1:
            flag = torch.tensor([float(stop)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if rank == 0 and (step % args.save_every == 0 or step == args.last_step or stop):
            save_checkpoint(ckpt, model, opt, step, args, history, events)
        if stop:
            log(f"time budget reached at step {step}")
            break
        mark = time.perf_counter()
    profiler.close()
    bar.close()
    model.eval()
    model.invalidate_fingerprint()
    return {"step": step, "history": history, "tokens": tokens * world, "seconds": time.time() - t0}
