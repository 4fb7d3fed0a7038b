"""CometModel: CoMeT's per-layer dual memory over a Hugging Face decoder (Llama, Qwen2, Qwen3, Mistral).

The backbone's decoder layers run unmodified, one chunk at a time, with attention confined to the chunk.
Memory crosses chunks only through per-layer state written into slot positions (docs/architecture.md):

    Injection, before layer l, chunks with memory (every layer, the first included):
        X[global slots] <- M = RLA_g(S)                      overwrite, m x d
        X[temp slots]   <- Q                                 overwrite, q x d (oldest first)
    Y = DecoderLayer_l(X; causal mask of this chunk, RoPE(chunk-local positions))
    Global memory (closed chunks; the writers are the m readouts, or the first m compression tokens with
    global_source="compression", or with "evicted" the FIFO entries the chunk's push evicts, used as they are,
    no RMSNorm_g and RLA_g = identity):
        S_hat = RMSNorm_g(Y[writers])                         slot i from writer i
        S     = S_hat                                         first chunk (no previous S)
        g     = sigmoid([S_hat ; S_old] @ w_g)                one scalar per slot
        S     = g * S_old + (1 - g) * S_hat
    Temporary memory (chunks with compression tokens):
        E = RLA_t(RMSNorm_t(Y[compression tokens]))
        Q = last B rows of [Q ; E]                            oldest evicted first
    RLA(x) = x + (x D) U,  D: d x r, U: r x d

``memory_source="input"`` (the default) writes layer l's memory from X, the layer's *input*, at the
compression tokens and readouts; ``"output"`` from Y, as the paper's code does. Injection writes into layer
l's input, so with "input" an entry presents the same keys and values to later chunks that its compression
token presented inside its own chunk (docs/architecture.md, "Where memory is written from").

The memory LoRA (``memory_lora_rank``) adds low-rank deltas to chosen backbone Linears at the positions of the
added tokens only (slots, compression tokens, readouts): the tokens that write and present memory get their own
capacity while every text position runs the backbone exactly as it was. The reader LoRA (``reader_lora_rank``,
off by default) adds its own deltas at the text positions of chunks that have memory, the tokens that read the
slots; chunks without memory (a one-chunk chat, a stream's first chunk) still run the backbone alone.

``layer_step`` is that block for one layer and one batch of chunks. Streaming (``absorb``) runs it
chunk-major (chunks outside, layers inside: one chunk of activations alive); training runs it layer-major
(layers outside, all chunks of a sequence inside), which computes the same function.

Memory nets and S are kept in float32 whatever the backbone dtype: the gated recurrence runs for millions of
steps and bf16 rounding would accumulate there.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import CometConfig
from .layout import (
    IGNORE_INDEX,
    LayoutBatch,
    SpecialIds,
    causal_mask,
    decode_mask,
    overlap_context,
    to_attention_mask,
)
from .state import MemoryState

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
ADAPTER_FILE = "comet_adapter.safetensors"
MEMORY_ROWS = "memory_lora_rows"  # chunk-context key of the memory-LoRA rows (not passed to the decoder layers)
READER_ROWS = "reader_lora_rows"  # likewise, the reader-LoRA rows
FIFO_PLAN = "fifo_plan"  # chunk-context key of the FIFO push plan (likewise)
WEIGHTS_DIR = Path(__file__).parent / "weights"
MEMORY_TOKEN = "<|memory|>"
COMPRESSION_TOKEN = "<beacon>"


def readout_token(i: int) -> str:
    return f"<beacon_{i}>"


def adapter_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of adapter tensors by name and float32 value: what a memory state was written with."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class LowRankAdapter(nn.Module):
    """RLA(x) = x + (x D) U: identity plus a rank-r correction, no bias, no activation."""

    def __init__(self, d: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(d, rank, bias=False)
        self.up = nn.Linear(rank, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


class GlobalMemoryNet(nn.Module):
    """RMSNorm_g, the per-slot gate over [candidate ; old], and RLA_g (state -> injected memory).

    With ``gate_only`` (global_source="evicted") just the gate: candidates are FIFO entries, already normalised
    and adapted by the temporary memory's net, and the state is injected as it is.
    """

    def __init__(self, d: int, rank: int, gate_only: bool = False) -> None:
        super().__init__()
        # eps = machine epsilon of the input dtype, as in the official code
        self.norm = None if gate_only else nn.RMSNorm(d)
        self.gate = nn.Linear(2 * d, 1, bias=False)
        self.adapter = None if gate_only else LowRankAdapter(d, rank)

    def candidates(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.float() if self.norm is None else self.norm(rows.float())

    def inject(self, S: torch.Tensor) -> torch.Tensor:
        return S if self.adapter is None else self.adapter(S)


class TemporaryMemoryNet(nn.Module):
    """RMSNorm_t (eps 1e-12) and RLA_t (compression outputs -> FIFO entries)."""

    def __init__(self, d: int, rank: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=1e-12)
        self.adapter = LowRankAdapter(d, rank)


class LayerMemory(nn.Module):
    def __init__(self, d: int, config: CometConfig) -> None:
        super().__init__()
        self.global_net = GlobalMemoryNet(d, config.adapter_rank, gate_only=config.global_from_fifo) if config.m else None
        self.temp_net = TemporaryMemoryNet(d, config.adapter_rank) if config.fifo else None


class MemoryLoRA(nn.Module):
    """Per-layer low-rank deltas ``scale * up(down(x))`` for the Linears named in ``targets``.

    Applied by forward hooks on those Linears (:func:`add_row_low_rank`), and only at the rows
    :attr:`CometModel._memory_positions` names for it (flattened over batch and time): the added-token positions
    for the memory LoRA, the text positions of chunks with memory for the reader LoRA. ``up`` starts at zero, so
    a new one changes nothing until it is trained.
    """

    def __init__(self, linears: dict[str, nn.Module], rank: int, alpha: float, gen: torch.Generator) -> None:
        super().__init__()
        self.scale = alpha / rank
        self.down = nn.ModuleDict()
        self.up = nn.ModuleDict()
        for name, lin in linears.items():
            down = nn.Linear(lin.in_features, rank, bias=False)
            with torch.no_grad():
                down.weight.copy_(torch.randn(down.weight.shape, generator=gen) / lin.in_features**0.5)
            up = nn.Linear(rank, lin.out_features, bias=False)
            nn.init.zeros_(up.weight)
            self.down[name] = down
            self.up[name] = up


def row_weights(parts: Sequence[tuple[int, float, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """(rows, total rank) weights of stacked low-rank parts ``(rank, scale, mask)``: each part's rank columns
    hold its scale where its flat (batch x time) bool ``mask`` is set and zero elsewhere."""
    return torch.cat([(m.to(dtype) * scale)[:, None].expand(-1, r) for r, scale, m in parts], dim=1)


def add_row_low_rank(output: torch.Tensor, x: torch.Tensor, downs: Sequence[torch.Tensor],
                     ups: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``output`` (of a Linear on input ``x``) plus ``((x D^T) * weight) U^T`` for the stacked parts ``D`` =
    ``downs``, ``U`` = ``ups`` and their :func:`row_weights`.

    The memory LoRA (added-token rows) and the reader LoRA (text rows of chunks with memory) of one Linear are
    one low-rank product of their stacked ranks, each rank column weighted by its part's mask and scale: one
    pair of matrix products per projection for both, with the add fused into the second (:class:`_MaskedLowRank`).
    """
    down = torch.cat(list(downs)) if len(downs) > 1 else downs[0]
    up = torch.cat(list(ups), dim=1) if len(ups) > 1 else ups[0]
    flat = _MaskedLowRank.apply(output.reshape(-1, output.shape[-1]), x.reshape(-1, x.shape[-1]), weight, down, up)
    return flat.view_as(output)


class _MaskedLowRank(torch.autograd.Function):
    """``out + ((x D^T) * W) U^T`` for a per-row, per-rank weight ``W`` (mask times scale), with a hand-written
    backward.

    Every row goes through the rank-wide product, rows outside a part's mask with weight zero: no gather, no
    atomic scatter (index_add over the ~50k reader rows of a training chunk batch was a tenth of a GPU step's
    kernel time, profile of 2026-12-04, docs/training.md). The products run in the activations' dtype and the
    add is fused into the last one (``addmm``): float32 copies of every row of four projections had been more
    memory traffic than the decoder layer's own. Autograd's version of these ops costs about twice the backward
    kernels (the step is launch-heavy at this model size). On the CPU (float32) the arithmetic is plain float32.
    """

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, down: torch.Tensor,
                up: torch.Tensor) -> torch.Tensor:
        dt = out.dtype
        hw = (x.to(dt) @ down.to(dt).t()) * weight
        ctx.save_for_backward(x, hw, weight, down, up)
        return torch.addmm(out, hw, up.to(dt).t())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, hw, weight, down, up = ctx.saved_tensors
        dt = grad.dtype
        g_h = (grad @ up.to(dt)) * weight
        grad_down = (g_h.t() @ x.to(dt)).to(down.dtype) if ctx.needs_input_grad[3] else None
        grad_up = (grad.t() @ hw).to(up.dtype) if ctx.needs_input_grad[4] else None
        grad_x = (g_h @ down.to(dt)).to(x.dtype) if ctx.needs_input_grad[1] else None
        return grad if ctx.needs_input_grad[0] else None, grad_x, None, grad_down, grad_up


def fifo_plan(
    fifo_len: torch.Tensor, num_new: torch.Tensor, budget: int, width: int, d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a FIFO push takes its rows from, for :func:`fifo_push`; the same for every layer of a chunk, so it
    is computed once per chunk.

    Returns the gather index ``(B, budget, d)`` into ``[fifo ; entries]`` (``width`` entry rows), the mask of
    rows past the new length ``(B, budget, 1)`` and the new lengths ``(B,)``. Output row j of sample b is logical
    row ``total - keep + j`` of ``[fifo[b, :len] ; entries[b, :n]]``.
    """
    total = fifo_len + num_new
    keep = total.clamp(max=budget)
    j = torch.arange(budget, device=fifo_len.device)
    logical = (total - keep)[:, None] + j[None, :]
    src = torch.where(logical < fifo_len[:, None], logical, budget + logical - fifo_len[:, None])
    src = src.clamp(max=budget + width - 1)
    empty = (j[None, :] >= keep[:, None])[..., None]
    return src[..., None].expand(-1, -1, d), empty, keep


def fifo_push(
    fifo: torch.Tensor, fifo_len: torch.Tensor, entries: torch.Tensor, num_new: torch.Tensor,
    plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``entries[b, :num_new[b]]`` to each FIFO and keep the newest ``B`` rows, oldest first.

    Vectorised over the batch; rows past the new length are zero. ``plan`` is :func:`fifo_plan` of these
    arguments, when the caller has it already.
    """
    _, budget, d = fifo.shape
    src, empty, keep = plan if plan is not None else fifo_plan(fifo_len, num_new, budget, entries.shape[1], d)
    combined = torch.cat([fifo, entries.to(fifo.dtype)], dim=1)
    return combined.gather(1, src).masked_fill(empty, 0), keep


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _decoder_parts(base: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(inner decoder model with embed_tokens/layers/norm/rotary_emb, lm_head) of a CausalLM, peft or not."""
    model = base.get_base_model() if hasattr(base, "get_base_model") else base
    return model.model, model.lm_head


def _cache_keyword(layer: nn.Module) -> str:
    """The keyword a decoder layer takes its KV cache under: ``cache`` in newer transformers releases, which warn
    about (and will drop) the older ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(type(layer).forward).parameters else "past_key_values"


class CometModel(nn.Module):
    """A frozen (optionally LoRA-adapted) decoder plus CoMeT memory modules and added-token embeddings.

    Build one with :meth:`from_pretrained` (adapter directory, ``"default"``, or a bare base model) or directly
    from a loaded ``*ForCausalLM``.
    """

    # A chunk's attention under SDPA without a mask tensor (``is_causal``): chunks are padded on the right, so a
    # real query's earlier keys are all real and plain causal attention equals :func:`causal_mask` wherever an
    # output is read (pad rows, never read, then see pads). SDPA can then run its causal flash kernel instead of
    # a masked one, and no (B, 1, T, T) mask is built per chunk. False: the explicit mask (eager always uses it).
    implicit_causal: bool = True

    def __init__(
        self,
        base: nn.Module,
        config: CometConfig | None = None,
        *,
        tokenizer: Any = None,
        base_name: str = "",
        base_fingerprint: str = "",
        seed: int = 0,
    ) -> None:
        super().__init__()
        config = config or CometConfig()
        model_type = getattr(base.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"CoMeT supports decoder models of type {', '.join(SUPPORTED_MODEL_TYPES)}; got {model_type!r}"
            )
        impl = getattr(base.config, "_attn_implementation", None) or "sdpa"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation {impl!r} is not supported; load the base with 'sdpa' or 'eager'")
        self.config = config
        self.tokenizer = tokenizer
        self.base_name = base_name or getattr(base.config, "_name_or_path", "") or model_type
        self.base_fingerprint = base_fingerprint
        self._check_sliding_window(base.config)

        for p in base.parameters():
            p.requires_grad_(False)
        if config.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                target_modules=list(config.lora_targets),
                lora_dropout=0.0,
                bias="none",
            )
            base = get_peft_model(base, lora)
        self.backbone = base
        inner, lm_head = _decoder_parts(base)
        self._inner = [inner]  # kept out of the module tree: it is already under self.backbone
        self._lm_head = [lm_head]
        d = inner.config.hidden_size
        self.hidden_size = d
        self.num_layers = len(inner.layers)
        self._cache_kw = _cache_keyword(inner.layers[0])

        vocab_rows = inner.embed_tokens.weight.shape[0]
        if tokenizer is not None:
            first = self._add_special_tokens(tokenizer)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        else:
            first = vocab_rows
            pad = getattr(base.config, "eos_token_id", None) or 0
            pad = pad[0] if isinstance(pad, list) else pad
        self.special = SpecialIds.contiguous(first, config.num_global_slots, pad)
        self.first_special_id = first
        self.num_special = config.num_global_slots + 2

        gen = torch.Generator().manual_seed(seed)
        self.memory = nn.ModuleList(LayerMemory(d, config) for _ in range(self.num_layers))
        for mod in self.memory.modules():
            if isinstance(mod, nn.Linear):
                with torch.no_grad():
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * 0.02)
        mean = inner.embed_tokens.weight[: min(first, vocab_rows)].detach().float().mean(0)
        self.special_embeddings = nn.Parameter(mean[None].repeat(self.num_special, 1).clone())
        self.memory.float()
        # Where the memory LoRA and the reader LoRA run (flat bool masks) while a forward runs;
        # per thread, so that forwards of one model in several threads (or an autograd recompute on another
        # thread) never see each other's rows.
        self._memory_positions = threading.local()
        self.memory_lora = self._row_loras(inner, "memory_lora", config.memory_lora_rank, config.memory_lora_alpha,
                                           config.memory_lora_targets, gen)
        self.reader_lora = self._row_loras(inner, "reader_lora", config.reader_lora_rank, config.reader_lora_alpha,
                                           config.reader_lora_targets, gen)
        self._hook_row_loras(inner)
        self._adapter_fingerprint: str | None = None

    # ---- construction helpers ---------------------------------------------------------------------------------

    def _add_special_tokens(self, tokenizer: Any) -> int:
        from tokenizers import AddedToken

        names = [MEMORY_TOKEN] + [readout_token(i) for i in range(self.config.num_global_slots)] + [COMPRESSION_TOKEN]
        vocab = tokenizer.get_vocab()
        missing = [n for n in names if n not in vocab]
        if missing:
            tokenizer.add_tokens([AddedToken(n, special=True, normalized=False) for n in missing], special_tokens=True)
        ids = tokenizer.convert_tokens_to_ids(names)
        if ids != list(range(ids[0], ids[0] + len(names))):
            raise ValueError("the tokenizer already holds some CoMeT tokens at non-contiguous ids")
        return ids[0]

    def _row_loras(self, inner: nn.Module, kind: str, rank: int, alpha: float, targets: Sequence[str],
                   gen: torch.Generator) -> nn.ModuleList | None:
        """One :class:`MemoryLoRA` per decoder layer on its ``targets``; ``kind`` ("memory_lora" or
        "reader_lora") names the rows it runs at. None for rank 0."""
        if rank <= 0:
            return None
        loras = nn.ModuleList()
        for layer in inner.layers:
            linears = self._target_linears(layer, targets, f"{kind}_targets")
            loras.append(MemoryLoRA({n: lin for n, (lin, _) in linears.items()}, rank, alpha, gen))
        return loras.float()

    def _hook_row_loras(self, inner: nn.Module) -> None:
        """One forward hook on each Linear that a memory or reader LoRA targets, applying both together."""
        targets = [t for kind, cfg in (("memory_lora", self.config.memory_lora_targets),
                                       ("reader_lora", self.config.reader_lora_targets))
                   if getattr(self, kind) is not None for t in cfg]
        for i, layer in enumerate(inner.layers):
            for name, (_, module) in self._target_linears(layer, list(dict.fromkeys(targets))).items():
                module.register_forward_hook(self._row_lora_hook(i, name))

    @staticmethod
    def _target_linears(layer: nn.Module, targets: Sequence[str],
                        option: str = "memory_lora_targets") -> dict[str, tuple[nn.Linear, nn.Module]]:
        """``{target: (its nn.Linear, the module to hook)}`` inside one decoder layer, peft-wrapped or not."""
        found: dict[str, tuple[nn.Linear, nn.Module]] = {}
        for name, module in layer.named_modules():
            short = name.rsplit(".", 1)[-1]
            if short in targets:
                lin = getattr(module, "base_layer", module)
                if isinstance(lin, nn.Linear):
                    found[short] = (lin, module)
        missing = [t for t in targets if t not in found]
        if missing:
            raise ValueError(f"{option} {missing} are not Linear modules of the base's decoder layers")
        return found

    def _row_lora_hook(self, layer: int, name: str) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            local = self._memory_positions
            active = []
            for kind in ("memory_lora", "reader_lora"):
                mask, loras = getattr(local, kind, None), getattr(self, kind)
                if mask is not None and loras is not None and name in loras[layer].down:
                    active.append((kind, loras[layer], mask))
            if not active:
                return None
            # The same weights serve every projection inside one memory_positions block (a layer of a chunk).
            key = (tuple(kind for kind, _, _ in active), output.dtype)
            weight = local.weights.get(key)
            if weight is None:
                weight = local.weights[key] = row_weights(
                    [(lora.down[name].weight.shape[0], lora.scale, mask) for _, lora, mask in active], output.dtype)
            return add_row_low_rank(output, inputs[0], [lora.down[name].weight for _, lora, _ in active],
                                    [lora.up[name].weight for _, lora, _ in active], weight)
        return hook

    @contextmanager
    def memory_positions(self, rows: torch.Tensor | None, reader_rows: torch.Tensor | None = None) -> Iterator[None]:
        """Run the memory LoRA at ``rows`` and the reader LoRA at ``reader_rows`` (the masks from
        :meth:`added_rows` and :meth:`reader_rows`) inside this block, in this thread only; None: nowhere."""
        local = self._memory_positions
        local.memory_lora, local.reader_lora, local.weights = rows, reader_rows, {}
        try:
            yield
        finally:
            local.memory_lora = local.reader_lora = None
            local.weights = {}

    def added_rows(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Flat (batch x time) bool mask of the added-token positions, for the memory LoRA; None when there is
        no memory LoRA or no added token (then the backbone runs alone)."""
        if self.memory_lora is None:
            return None
        rows = self.is_added_token(input_ids).reshape(-1)
        return rows if bool(rows.any()) else None

    def reader_rows(self, input_ids: torch.Tensor, lengths: torch.Tensor | None,
                    has_memory: torch.Tensor | None) -> torch.Tensor | None:
        """Flat (batch x time) bool mask of the text positions (within ``lengths``, all if None) of the samples
        whose chunk has memory (``has_memory``, (B,) bool), for the reader LoRA; None when there is no reader
        LoRA or no such position."""
        if self.reader_lora is None or has_memory is None:
            return None
        device = input_ids.device
        rows = ~self.is_added_token(input_ids) & has_memory.to(device)[:, None]
        if lengths is not None:
            rows &= torch.arange(input_ids.shape[1], device=device)[None, :] < lengths.to(device)[:, None]
        rows = rows.reshape(-1)
        return rows if bool(rows.any()) else None

    @staticmethod
    def has_memory(batch: LayoutBatch) -> torch.Tensor:
        """(B,) bool: whether each sample's chunk in ``batch`` shows memory (global slots or FIFO entries)."""
        flags = batch.has_global.clone()
        if batch.temp_valid.shape[1]:
            flags |= batch.temp_valid.any(1)
        return flags

    def is_added_token(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where ``input_ids`` holds one of CoMeT's added tokens (slot placeholder, readout, compression)."""
        return (input_ids >= self.first_special_id) & (input_ids < self.first_special_id + self.num_special)

    @staticmethod
    def _check_sliding_window(cfg: Any) -> None:
        window = getattr(cfg, "sliding_window", None)
        uses = getattr(cfg, "use_sliding_window", window is not None)
        layer_types = getattr(cfg, "layer_types", None) or []
        if window and uses and any("sliding" in str(t) for t in layer_types or ["sliding"]):
            raise ValueError(
                f"the base model uses sliding-window attention (window {window}); CoMeT chunks need full "
                "attention inside a chunk. Load the base with use_sliding_window=False."
            )

    # ---- properties -------------------------------------------------------------------------------------------

    @property
    def inner(self) -> nn.Module:
        return self._inner[0]

    @property
    def lm_head(self) -> nn.Module:
        return self._lm_head[0]

    @property
    def device(self) -> torch.device:
        return self.special_embeddings.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.embed_tokens.weight.dtype

    @property
    def attn_implementation(self) -> str:
        return getattr(self.inner.config, "_attn_implementation", None) or "sdpa"

    @property
    def adapter_fingerprint(self) -> str:
        """Hash of the adapter tensors (memory nets, added embeddings, LoRA); cached until weights change."""
        if self._adapter_fingerprint is None:
            self._adapter_fingerprint = adapter_fingerprint(self.adapter_state_dict())
        return self._adapter_fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing adapter weights (training)."""
        self._adapter_fingerprint = None

    # ---- state ------------------------------------------------------------------------------------------------

    def new_state(self, batch: int = 1) -> MemoryState:
        """An empty memory for ``batch`` sessions, on this model's device."""
        return MemoryState.empty(
            num_layers=self.num_layers,
            num_global=self.config.m,
            fifo_budget=self.config.fifo,
            hidden_size=self.hidden_size,
            batch=batch,
            dtype=self.dtype,
            device=self.device,
            config_fingerprint=self.config.fingerprint(),
            base_fingerprint=self.base_fingerprint,
            adapter_fingerprint=self.adapter_fingerprint,
        )

    def check_state(self, state: MemoryState) -> None:
        state.check_compatible(self.config.fingerprint(), self.base_fingerprint, self.adapter_fingerprint)

    # ---- the per-layer recurrence -----------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; added tokens read ``special_embeddings``."""
        is_special = self.is_added_token(input_ids)
        base_ids = torch.where(is_special, torch.zeros_like(input_ids), input_ids)
        emb = self.inner.embed_tokens(base_ids)
        # F.embedding, not indexing: its backward reduces the many repeated ids by segment, where indexing's
        # accumulating index_put serialised them (a twentieth of a GPU training step, 2026-12-04 profile).
        extra = nn.functional.embedding((input_ids - self.first_special_id).clamp(0, self.num_special - 1),
                                        self.special_embeddings)
        return torch.where(is_special[..., None], extra.to(emb.dtype), emb)

    def chunk_context(self, batch: LayoutBatch, hidden: torch.Tensor, fifo_len: torch.Tensor) -> dict[str, Any]:
        """Mask, rotary embeddings, memory-LoRA rows and the FIFO push plan of a chunk batch (``fifo_len``: the
        FIFO fill before it), computed once for all layers. The mask is None under SDPA with
        :attr:`implicit_causal` (a chunk attends only to itself, so query and key lengths agree)."""
        if self.implicit_causal and self.attn_implementation == "sdpa":
            attention_mask = None
        else:
            attention_mask = to_attention_mask(causal_mask(batch.lengths, batch.input_ids.shape[1]),
                                               self.attn_implementation, hidden.dtype)
        ctx = {
            "attention_mask": attention_mask,
            "position_ids": batch.position_ids,
            "position_embeddings": self.inner.rotary_emb(hidden, batch.position_ids),
            MEMORY_ROWS: self.added_rows(batch.input_ids),
            READER_ROWS: self.reader_rows(batch.input_ids, batch.lengths, self.has_memory(batch)),
        }
        if self.config.fifo and batch.compression_index.shape[1] > 0:
            ctx[FIFO_PLAN] = fifo_plan(fifo_len.to(hidden.device), batch.compression_valid.sum(1), self.config.fifo,
                                       batch.compression_index.shape[1], hidden.shape[-1])
        return ctx

    def layer_step(
        self,
        layer: int,
        hidden: torch.Tensor,
        batch: LayoutBatch,
        ctx: dict[str, Any],
        S: torch.Tensor | None,
        has_S: torch.Tensor,
        Q: torch.Tensor | None,
        q_len: torch.Tensor,
        cache: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Run decoder layer ``layer`` on a batch of chunks with memory injection and update.

        Returns (layer output, new S, new Q). S/Q are returned unchanged for samples whose chunk has no
        readouts / compression tokens. ``has_S`` and ``q_len`` describe the state *before* this chunk.
        """
        mem = self.memory[layer]
        x = hidden
        m = self.config.m
        if mem.global_net is not None and S is not None and batch.any_global:
            injected = mem.global_net.inject(S).to(x.dtype)
            head = torch.where(batch.has_global[:, None, None], injected, x[:, :m])
            x = torch.cat([head, x[:, m:]], dim=1)
        if Q is not None and batch.temp_index.shape[1] > 0:
            idx = batch.temp_index[..., None].expand(-1, -1, x.shape[-1])
            cur = x.gather(1, idx)
            src = torch.where(batch.temp_valid[..., None], Q[:, : idx.shape[1]].to(x.dtype), cur)
            x = x.scatter(1, idx, src)

        layer_kwargs = {k: v for k, v in ctx.items() if k not in (MEMORY_ROWS, READER_ROWS, FIFO_PLAN)}
        with self.memory_positions(ctx.get(MEMORY_ROWS), ctx.get(READER_ROWS)):
            y = self.inner.layers[layer](x, use_cache=cache is not None, **{self._cache_kw: cache},
                                         **layer_kwargs)
        if isinstance(y, tuple):
            y = y[0]
        src = x if self.config.memory_source == "input" else y

        new_S = S
        if mem.global_net is not None and S is not None and batch.any_global_write:
            index, valid, partial = batch.global_write_index, batch.global_write_valid, batch.partial_global_write
            if index.shape[1] < m:  # fewer writers than slots (a chunk shorter than m * s): the last slots get none
                index = nn.functional.pad(index, (0, m - index.shape[1]))
                valid, partial = nn.functional.pad(valid, (0, m - valid.shape[1])), True
            rows = Q if self.config.global_from_fifo else src  # FIFO rows before this chunk's push, or chunk rows
            cand = mem.global_net.candidates(_gather_rows(rows, index))
            if self.config.gate:
                g = torch.sigmoid(mem.global_net.gate(torch.cat([cand, S], dim=-1)))
                upd = torch.where(has_S[:, None, None], g * S + (1 - g) * cand, cand)
            else:
                upd = cand
            if partial:  # slots without a candidate keep their value
                upd = torch.where(valid[..., None], upd, S)
            new_S = torch.where(batch.writes_global[:, None, None], upd, S)
        new_Q = Q
        if mem.temp_net is not None and Q is not None and batch.compression_index.shape[1] > 0:
            comp = _gather_rows(src, batch.compression_index).float()
            entries = mem.temp_net.adapter(mem.temp_net.norm(comp))
            new_Q, _ = fifo_push(Q, q_len, entries, batch.compression_valid.sum(1), ctx.get(FIFO_PLAN))
        return y, new_S, new_Q

    def _next_counters(self, batch: LayoutBatch, has_S: torch.Tensor, q_len: torch.Tensor):
        new_has = has_S | batch.writes_global if self.config.m else has_S
        new_q = (q_len + batch.compression_valid.sum(1)).clamp(max=self.config.fifo) if self.config.fifo else q_len
        return new_has, new_q

    def _check_batch(self, batch: LayoutBatch, state: MemoryState) -> None:
        if not torch.equal(batch.has_global.cpu(), (state.has_global & (self.config.m > 0)).cpu()):
            raise ValueError("layout global slots disagree with the state's first-chunk flags")
        if not torch.equal(batch.temp_valid.sum(1).cpu(), state.fifo_len.cpu()):
            raise ValueError("layout temporary slots disagree with the state's FIFO fill")

    @torch.no_grad()
    def absorb_chunks(self, state: MemoryState, batch: LayoutBatch) -> None:
        """Absorb one closed chunk per session of ``state`` (chunk-major, no KV cache), updating it in place."""
        self._check_batch(batch, state)
        host, batch = batch, batch.to(self.device)
        hidden = self.embed(batch.input_ids)
        ctx = self.chunk_context(batch, hidden, state.fifo_len)
        S_all = state.global_state if self.config.m else None
        Q_all = state.fifo if self.config.fifo else None
        for layer in range(self.num_layers):
            S = S_all[layer] if S_all is not None else None
            Q = Q_all[layer] if Q_all is not None else None
            hidden, S, Q = self.layer_step(layer, hidden, batch, ctx, S, state.has_global, Q, state.fifo_len)
            if S_all is not None:
                S_all[layer] = S
            if Q_all is not None:
                Q_all[layer] = Q
        state.has_global, state.fifo_len = self._next_counters(batch, state.has_global, state.fifo_len)
        state.chunks += 1
        state.tokens_absorbed += batch.text_valid.sum(1).to(state.tokens_absorbed.device)
        if self.config.chunk_overlap:
            for b in range(host.input_ids.shape[0]):
                text = host.input_ids[b, host.text_index[b][host.text_valid[b]]].tolist()
                state.context[b] = overlap_context(state.context[b], text, self.config.chunk_overlap)

    # ---- training forward (layer-major) -----------------------------------------------------------------------

    def forward_train(
        self,
        chunks: Sequence[LayoutBatch],
        *,
        loss_weights: Sequence[torch.Tensor] | None = None,
        gradient_checkpointing: bool = False,
        return_logits: bool = False,
        return_token_losses: bool = False,
    ) -> dict[str, Any]:
        """Layer-major forward over all chunks of a batch of sequences, memory reset at the start.

        ``chunks[c]`` is the padded batch of every sequence's c-th chunk, with ``labels`` aligned to the layout
        (see :func:`comet_agents.layout.layout_labels`). The loss is the weighted mean cross-entropy over
        labelled positions (weights default to 1), computed chunk by chunk so full logits never exist at once.

        Returns ``loss`` (None if nothing is labelled), ``num_labelled``, ``sample_loss`` (each sequence's
        weighted mean, detached, for logging), the final state tensors, and ``logits`` (list per chunk) when
        ``return_logits``. With ``return_token_losses`` (no-grad diagnostics), ``token_losses``: per chunk,
        ``(sample, cross-entropy, argmax == label)`` for each labelled position in order, or None.
        """
        cfg = self.config
        chunks = [c.to(self.device) for c in chunks]
        bsz = chunks[0].input_ids.shape[0]
        d = self.hidden_size
        hidden = [self.embed(c.input_ids) for c in chunks]
        has_S0 = torch.zeros(bsz, dtype=torch.bool, device=self.device)
        q0 = torch.zeros(bsz, dtype=torch.long, device=self.device)
        flags = [(has_S0, q0)]
        for c in chunks[:-1]:
            flags.append(self._next_counters(c, *flags[-1]))
        ctxs = [self.chunk_context(c, h, f[1]) for c, h, f in zip(chunks, hidden, flags)]
        final_S, final_Q = [], []
        for layer in range(self.num_layers):
            S = torch.zeros(bsz, cfg.m, d, device=self.device) if cfg.m else None
            Q = torch.zeros(bsz, cfg.fifo, d, device=self.device, dtype=self.dtype) if cfg.fifo else None
            for c, batch in enumerate(chunks):
                has_S, q_len = flags[c]
                args = (layer, hidden[c], batch, ctxs[c], S, has_S, Q, q_len)
                if gradient_checkpointing and torch.is_grad_enabled():
                    hidden[c], S, Q = self._recomputed(self.layer_step, *args)
                else:
                    hidden[c], S, Q = self.layer_step(*args)
            final_S.append(S)
            final_Q.append(Q)

        out: dict[str, Any] = {"loss": None, "num_labelled": 0}
        sample_loss = torch.zeros(bsz, device=self.device)
        sample_weight = torch.zeros(bsz, device=self.device)
        logits_out = []
        token_losses: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = []
        for c, batch in enumerate(chunks):
            if return_logits:
                logits_out.append(self.logits(hidden[c]))
            if return_token_losses:
                token_losses.append(self._token_losses(hidden[c], batch.labels) if batch.labels is not None
                                    and batch.num_labelled else None)
            if batch.labels is None:
                continue
            if not batch.num_labelled:
                continue
            w = (loss_weights[c].to(self.device) if loss_weights is not None
                 else (batch.labels != IGNORE_INDEX).float())
            if gradient_checkpointing and torch.is_grad_enabled():
                row_loss, row_weight = self._recomputed(self._chunk_loss, hidden[c], batch.labels, w)
            else:
                row_loss, row_weight = self._chunk_loss(hidden[c], batch.labels, w)
            sample_loss = sample_loss + row_loss
            sample_weight = sample_weight + row_weight
            out["num_labelled"] += batch.num_labelled
        if out["num_labelled"]:
            out["loss"] = sample_loss.sum() / sample_weight.sum().clamp(min=1e-8)
        out["sample_loss"] = (sample_loss / sample_weight.clamp(min=1e-8)).detach()
        out["global_state"] = torch.stack(final_S) if cfg.m else None
        out["fifo"] = torch.stack(final_Q) if cfg.fifo else None
        out["has_global"], out["fifo_len"] = self._next_counters(chunks[-1], *flags[-1])
        if return_logits:
            out["logits"] = logits_out
        if return_token_losses:
            out["token_losses"] = token_losses
        return out

    def _recomputed(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` under activation checkpointing: only the inputs are kept, the rest is recomputed in backward.

        The reentrant variant is used whenever an input tensor requires grad (always in training: the hidden
        states depend on the trainable added-token embeddings). Its host overhead per call is far below the
        non-reentrant one, which packs and unpacks every saved tensor through Python hooks: on a host-bound
        tiny model (2-core CPU, 2026-12-01) a checkpointed step took 1.6 x the plain step with it and 2.5 x with
        the non-reentrant variant, and dispatch-bound GPU runs pay the same host cost. The RNG state is not
        stashed unless the base uses dropout: nothing else in a step draws random numbers.
        """
        preserve = bool(getattr(self.backbone.config, "attention_dropout", 0.0)) and self.training
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return checkpoint(fn, *args, use_reentrant=True, preserve_rng_state=preserve)
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=preserve)

    def _token_losses(self, hidden: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sample index, cross-entropy, greedy hit) at each labelled position of a chunk, in reading order."""
        sel = labels != IGNORE_INDEX
        logits = self.logits(hidden[sel]).float()
        target = labels[sel]
        ce = nn.functional.cross_entropy(logits, target, reduction="none")
        return sel.nonzero()[:, 0], ce.detach(), (logits.argmax(-1) == target)

    def _chunk_loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample weighted cross-entropy sums over labelled positions, and the per-sample weight sums."""
        sel = labels != IGNORE_INDEX
        logits = self.logits(hidden[sel]).float()
        ce = nn.functional.cross_entropy(logits, labels[sel], reduction="none")
        w = weights[sel].float()
        rows = sel.nonzero()[:, 0]
        zeros = torch.zeros(labels.shape[0], device=hidden.device)
        return zeros.index_add(0, rows, ce * w), zeros.index_add(0, rows, w)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits over the base vocabulary, added tokens masked out."""
        logits = self.lm_head(self.inner.norm(hidden))
        if self.first_special_id < logits.shape[-1]:
            logits[..., self.first_special_id :] = torch.finfo(logits.dtype).min
        return logits

    # ---- generation -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill_open_chunk(self, state: MemoryState, batch: LayoutBatch) -> tuple[torch.Tensor, Any]:
        """Run the open last chunk with a KV cache; returns (logits at each sample's last text token, cache).

        The state is read, never written: recall does not change memory.
        """
        from transformers import DynamicCache

        self._check_batch(batch, state)
        batch = batch.to(self.device)
        hidden = self.embed(batch.input_ids)
        ctx = self.chunk_context(batch, hidden, state.fifo_len)
        cache = DynamicCache(config=self.inner.config)
        S_all = state.global_state if self.config.m else None
        Q_all = state.fifo if self.config.fifo else None
        for layer in range(self.num_layers):
            S = S_all[layer] if S_all is not None else None
            Q = Q_all[layer] if Q_all is not None else None
            hidden, _, _ = self.layer_step(layer, hidden, batch, ctx, S, state.has_global, Q, state.fifo_len, cache)
        last = batch.text_index.gather(1, (batch.text_valid.sum(1) - 1).clamp(min=0)[:, None])
        return self.logits(_gather_rows(hidden, last))[:, 0], cache

    @torch.no_grad()
    def decode_step(
        self, cache: Any, input_ids: torch.Tensor, position_ids: torch.Tensor, past_lengths: torch.Tensor,
        has_memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed ``input_ids`` (B, k) after the cache; returns logits (B, k, V). Nothing is written to memory.

        ``has_memory`` ((B,) bool, :meth:`has_memory` of the prefilled open chunk) says where the reader LoRA
        runs, as it ran in the prefill; None: nowhere (right for a model without one, or for empty memory)."""
        # Decoding feeds added tokens only with open-chunk compression; look on the host (ids come from there).
        lora_rows = self.added_rows(input_ids)
        reader_rows = self.reader_rows(input_ids, None, has_memory)
        input_ids = input_ids.to(self.device)
        position_ids = position_ids.to(self.device)
        hidden = self.embed(input_ids)
        past_total = cache.get_seq_length()
        mask = decode_mask(past_lengths.to(self.device), past_total, input_ids.shape[1])
        ctx = {
            "attention_mask": to_attention_mask(mask, self.attn_implementation, hidden.dtype),
            "position_ids": position_ids,
            "position_embeddings": self.inner.rotary_emb(hidden, position_ids),
        }
        with self.memory_positions(None if lora_rows is None else lora_rows.to(self.device),
                                   None if reader_rows is None else reader_rows.to(self.device)):
            for layer in range(self.num_layers):
                hidden = self.inner.layers[layer](hidden, use_cache=True, **{self._cache_kw: cache}, **ctx)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
        return self.logits(hidden)

    # ---- persistence ------------------------------------------------------------------------------------------

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the adapter adds to the base: memory nets, added embeddings, LoRA weights."""
        sd = {f"memory.{k}": v for k, v in self.memory.state_dict().items()}
        sd["special_embeddings"] = self.special_embeddings.data
        for kind in ("memory_lora", "reader_lora"):
            loras = getattr(self, kind)
            if loras is not None:
                sd.update({f"{kind}.{k}": v for k, v in loras.state_dict().items()})
        if self.config.lora_rank > 0:
            from peft import get_peft_model_state_dict

            for k, v in get_peft_model_state_dict(self.backbone).items():
                sd[f"lora.{k}"] = v
        return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}

    def load_adapter_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        mem = {k[len("memory.") :]: v for k, v in sd.items() if k.startswith("memory.")}
        self.memory.load_state_dict({k: v.float() for k, v in mem.items()}, strict=True)
        for kind in ("memory_lora", "reader_lora"):
            weights = {k[len(kind) + 1 :]: v.float() for k, v in sd.items() if k.startswith(f"{kind}.")}
            loras = getattr(self, kind)
            if loras is not None:
                loras.load_state_dict(weights, strict=True)
            elif weights:
                raise ValueError(f"adapter has {kind.replace('_', '-')} weights but its config has {kind}_rank 0")
        emb = sd.get("special_embeddings")
        if emb is None or tuple(emb.shape) != tuple(self.special_embeddings.shape):
            raise ValueError("adapter special_embeddings are missing or have the wrong shape")
        with torch.no_grad():
            self.special_embeddings.copy_(emb)
        lora = {k[len("lora.") :]: v for k, v in sd.items() if k.startswith("lora.")}
        if self.config.lora_rank > 0:
            from peft import set_peft_model_state_dict

            if not lora:
                raise ValueError("adapter has no LoRA weights but its config asks for LoRA")
            dtype = self.dtype
            result = set_peft_model_state_dict(self.backbone, {k: v.to(dtype) for k, v in lora.items()})
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"adapter has LoRA weights the model does not expect: {unexpected[:3]}")
        self.invalidate_fingerprint()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter (``comet_adapter.safetensors``) and ``comet_config.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(), directory / ADAPTER_FILE, metadata={"format": "comet-agents/adapter"})
        self.config.save(
            directory,
            extra={
                "base_name": self.base_name,
                "base_fingerprint": self.base_fingerprint,
                "base_model_type": self.inner.config.model_type,
                "first_special_id": self.first_special_id,
                "adapter_fingerprint": self.adapter_fingerprint,
            },
        )
        return directory

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "default",
        *,
        base: str | None = None,
        config: CometConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str = "sdpa",
    ) -> "CometModel":
        """Load a CoMeT model.

        ``name_or_path`` is ``"default"`` (the adapter shipped in ``comet_agents/weights`` on SmolLM2-135M-
        Instruct), a directory holding ``comet_config.json`` + ``comet_adapter.safetensors``, or a bare base
        model (local directory or Hub id), which gets an untrained adapter built from ``config``.
        ``base`` overrides the base model an adapter names. Defaults: CUDA when available with bfloat16,
        else CPU with float32.
        """
        from .base_models import DEFAULT_BASE, load_base

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        adapter_dir: Path | None = None
        if str(name_or_path) == "default":
            if (WEIGHTS_DIR / ADAPTER_FILE).exists():
                adapter_dir = WEIGHTS_DIR
            else:
                log.warning("no trained default adapter is shipped in %s; using an untrained one", WEIGHTS_DIR)
                name_or_path = base or DEFAULT_BASE
        elif (Path(name_or_path) / ADAPTER_FILE).exists():
            adapter_dir = Path(name_or_path)

        meta: dict[str, Any] = {}
        if adapter_dir is not None:
            saved_config, meta = CometConfig.load(adapter_dir)
            if config is not None and config != saved_config:
                raise ValueError(f"the adapter in {adapter_dir} was trained with another CometConfig")
            config = saved_config
            name_or_path = base or meta.get("base_name") or DEFAULT_BASE
        loaded = load_base(str(name_or_path), dtype=dtype, device=device, attn_implementation=attn_implementation)
        expected = meta.get("base_fingerprint", "")
        if expected and loaded.fingerprint != expected:
            log.warning(
                "base weights differ from those the adapter was trained on (fingerprint %s, adapter expects %s); "
                "answers may degrade", loaded.fingerprint, expected,
            )
        model = cls(loaded.model, config, tokenizer=loaded.tokenizer, base_name=loaded.name,
                    base_fingerprint=loaded.fingerprint)
        if adapter_dir is not None:
            if "first_special_id" in meta and model.first_special_id != meta["first_special_id"]:
                raise ValueError("the tokenizer places the CoMeT tokens at other ids than the adapter expects")
            model.load_adapter_state_dict(load_file(str(adapter_dir / ADAPTER_FILE)))
        return model.to(device)

    def describe(self) -> dict[str, Any]:
        """Facts for ``comet-agents info`` and logs."""
        n_mem = sum(p.numel() for p in self.memory.parameters())
        n_lora = sum(p.numel() for n, p in self.backbone.named_parameters() if "lora_" in n)
        n_mlora = sum(p.numel() for p in self.memory_lora.parameters()) if self.memory_lora is not None else 0
        n_rlora = sum(p.numel() for p in self.reader_lora.parameters()) if self.reader_lora is not None else 0
        state_bytes = self.new_state().nbytes()
        return {
            "base": self.base_name,
            "base_model_type": self.inner.config.model_type,
            "base_fingerprint": self.base_fingerprint,
            "adapter_fingerprint": self.adapter_fingerprint,
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "config": self.config.to_dict(),
            "memory_parameters": n_mem,
            "lora_parameters": n_lora,
            "memory_lora_parameters": n_mlora,
            "reader_lora_parameters": n_rlora,
            "added_embedding_rows": self.num_special,
            "state_bytes_per_session": state_bytes,
            "steady_layout_positions": self.config.steady_layout_len(),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attn_implementation": self.attn_implementation,
            "implicit_causal": self.implicit_causal and self.attn_implementation == "sdpa",
        }

    def __repr__(self) -> str:  # nn.Module's repr of a peft-wrapped backbone is thousands of lines
        return f"CometModel({json.dumps(self.describe(), default=str)})"
