"""MemoryState: everything a CoMeT memory keeps between chunks, for one or several sessions.

Per layer ``l`` and session ``b``:

* ``global_state[l, b]`` — S, the gated global memory in RMS-normalised space (m x d, float32). What is
  injected is ``RLA_g(S)``, recomputed on use, so it is not stored.
* ``fifo[l, b, :fifo_len[b]]`` — Q, the temporary memory, oldest entry first (at most B x d, model dtype);
  rows past ``fifo_len`` are kept at zero.

Per session: ``has_global`` (False until the first chunk wrote S: the first-chunk rule), ``pending`` (tail
tokens that do not yet fill a chunk), ``context`` (with ``CometConfig.chunk_overlap`` K > 0: the last K
absorbed tokens, which the next chunk re-reads), and counters. The size never depends on how much was absorbed.

States serialise to safetensors bytes (never pickle); a state remembers the config and base-weight
fingerprints it was made with and refuses to load into anything else.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT = "comet-agents/memory-state"
FORMAT_VERSION = "1"


class StateMismatchError(ValueError):
    """A state was made with another config, base model or adapter than the one asked to use it."""


class CorruptStateError(ValueError):
    """Stored state bytes are not a valid memory state."""


@dataclass
class MemoryState:
    """Memory of ``B`` sessions (``B`` = ``global_state.shape[1]``)."""

    global_state: torch.Tensor  # (L, B, m, d) float32
    has_global: torch.Tensor  # (B,) bool
    fifo: torch.Tensor  # (L, B, Bf, d)
    fifo_len: torch.Tensor  # (B,) long
    pending: list[list[int]]  # per session, tokens not yet absorbed as a chunk
    tokens_absorbed: torch.Tensor  # (B,) long, text tokens processed into memory (pending excluded)
    chunks: torch.Tensor  # (B,) long
    config_fingerprint: str
    base_fingerprint: str
    adapter_fingerprint: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    # per session, the overlap tokens the next chunk re-reads (CometConfig.chunk_overlap); left out: none
    context: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.context:
            self.context = [[] for _ in self.pending]

    @classmethod
    def empty(
        cls,
        *,
        num_layers: int,
        num_global: int,
        fifo_budget: int,
        hidden_size: int,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        config_fingerprint: str,
        base_fingerprint: str,
        adapter_fingerprint: str = "",
    ) -> "MemoryState":
        return cls(
            global_state=torch.zeros(num_layers, batch, num_global, hidden_size, dtype=torch.float32, device=device),
            has_global=torch.zeros(batch, dtype=torch.bool, device=device),
            fifo=torch.zeros(num_layers, batch, fifo_budget, hidden_size, dtype=dtype, device=device),
            fifo_len=torch.zeros(batch, dtype=torch.long, device=device),
            pending=[[] for _ in range(batch)],
            tokens_absorbed=torch.zeros(batch, dtype=torch.long, device=device),
            chunks=torch.zeros(batch, dtype=torch.long, device=device),
            config_fingerprint=config_fingerprint,
            base_fingerprint=base_fingerprint,
            adapter_fingerprint=adapter_fingerprint,
        )

    @property
    def batch_size(self) -> int:
        return self.global_state.shape[1]

    @property
    def device(self) -> torch.device:
        return self.global_state.device

    def nbytes(self) -> int:
        """Bytes held by the tensors of this state (pending and overlap tokens counted at 8 bytes each)."""
        tensors = (self.global_state, self.has_global, self.fifo, self.fifo_len, self.tokens_absorbed, self.chunks)
        tokens = sum(len(p) for p in self.pending) + sum(len(c) for c in self.context)
        return sum(t.numel() * t.element_size() for t in tensors) + 8 * tokens

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None, *, copy: bool = False) -> "MemoryState":
        """This state on ``device`` with the FIFO in ``dtype`` (S always stays float32).

        Tensors already on ``device`` (in ``dtype``) are shared with this state unless ``copy=True``.
        """
        return MemoryState(
            global_state=self.global_state.to(device, copy=copy),
            has_global=self.has_global.to(device, copy=copy),
            fifo=self.fifo.to(device=device, dtype=dtype or self.fifo.dtype, copy=copy),
            fifo_len=self.fifo_len.to(device, copy=copy),
            pending=[list(p) for p in self.pending],
            tokens_absorbed=self.tokens_absorbed.to(device, copy=copy),
            chunks=self.chunks.to(device, copy=copy),
            config_fingerprint=self.config_fingerprint,
            base_fingerprint=self.base_fingerprint,
            adapter_fingerprint=self.adapter_fingerprint,
            meta=dict(self.meta),
            context=[list(c) for c in self.context],
        )

    def clone(self) -> "MemoryState":
        """A deep copy: new tensors, so absorbing into either state never changes the other."""
        return self.to(self.device, copy=True)

    # ---- batching -------------------------------------------------------------------------------------------

    def select(self, index: Sequence[int]) -> "MemoryState":
        """The sub-batch of the given sessions (a copy)."""
        idx = torch.tensor(list(index), dtype=torch.long, device=self.device)
        return MemoryState(
            global_state=self.global_state.index_select(1, idx),
            has_global=self.has_global.index_select(0, idx),
            fifo=self.fifo.index_select(1, idx),
            fifo_len=self.fifo_len.index_select(0, idx),
            pending=[list(self.pending[i]) for i in index],
            tokens_absorbed=self.tokens_absorbed.index_select(0, idx),
            chunks=self.chunks.index_select(0, idx),
            config_fingerprint=self.config_fingerprint,
            base_fingerprint=self.base_fingerprint,
            adapter_fingerprint=self.adapter_fingerprint,
            meta=dict(self.meta),
            context=[list(self.context[i]) for i in index],
        )

    def split(self) -> list["MemoryState"]:
        """One single-session state per session."""
        return [self.select([b]) for b in range(self.batch_size)]

    @classmethod
    def merge(cls, states: Sequence["MemoryState"]) -> "MemoryState":
        """Concatenate sessions; all states must share config, base and adapter fingerprints and shapes."""
        if not states:
            raise ValueError("merge needs at least one state")
        first = states[0]
        for s in states[1:]:
            first.check_compatible(s.config_fingerprint, s.base_fingerprint, s.adapter_fingerprint)
            if s.global_state.shape[::2] != first.global_state.shape[::2] or s.fifo.shape[2:] != first.fifo.shape[2:]:
                raise StateMismatchError("cannot merge states of different shapes")
        fifo_dtype = first.fifo.dtype
        return cls(
            global_state=torch.cat([s.global_state for s in states], dim=1),
            has_global=torch.cat([s.has_global for s in states]),
            fifo=torch.cat([s.fifo.to(fifo_dtype) for s in states], dim=1),
            fifo_len=torch.cat([s.fifo_len for s in states]),
            pending=[list(p) for s in states for p in s.pending],
            tokens_absorbed=torch.cat([s.tokens_absorbed for s in states]),
            chunks=torch.cat([s.chunks for s in states]),
            config_fingerprint=first.config_fingerprint,
            base_fingerprint=first.base_fingerprint,
            adapter_fingerprint=first.adapter_fingerprint,
            meta=dict(first.meta),
            context=[list(c) for s in states for c in s.context],
        )

    def assign(self, index: Sequence[int], other: "MemoryState") -> None:
        """Write the sessions of ``other`` back into positions ``index`` of this state (in place)."""
        idx = torch.tensor(list(index), dtype=torch.long, device=self.device)
        self.global_state.index_copy_(1, idx, other.global_state)
        self.has_global.index_copy_(0, idx, other.has_global)
        self.fifo.index_copy_(1, idx, other.fifo.to(self.fifo.dtype))
        self.fifo_len.index_copy_(0, idx, other.fifo_len)
        self.tokens_absorbed.index_copy_(0, idx, other.tokens_absorbed)
        self.chunks.index_copy_(0, idx, other.chunks)
        for j, i in enumerate(index):
            self.pending[i] = list(other.pending[j])
            self.context[i] = list(other.context[j])

    # ---- compatibility ----------------------------------------------------------------------------------------

    def check_compatible(self, config_fingerprint: str, base_fingerprint: str, adapter_fingerprint: str = "") -> None:
        """Raise :class:`StateMismatchError` naming the first fingerprint that differs."""
        pairs = (
            ("CometConfig", self.config_fingerprint, config_fingerprint),
            ("base model weights", self.base_fingerprint, base_fingerprint),
            ("CoMeT adapter", self.adapter_fingerprint, adapter_fingerprint),
        )
        for what, mine, theirs in pairs:
            if mine != theirs:
                raise StateMismatchError(
                    f"memory state was made with another {what} (state {mine or '-'}, model {theirs or '-'}); "
                    "it cannot be used with this model"
                )

    # ---- serialisation ----------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Safetensors bytes; FIFO rows past each session's fill are omitted (they are zero)."""
        width = int(self.fifo_len.max().item()) if self.batch_size else 0
        pending_flat = [t for p in self.pending for t in p]
        context_flat = [t for c in self.context for t in c]
        tensors = {
            "global_state": self.global_state.contiguous().cpu(),
            "has_global": self.has_global.to(torch.uint8).cpu(),
            "fifo": self.fifo[:, :, :width].contiguous().cpu(),
            "fifo_len": self.fifo_len.cpu(),
            "pending": torch.tensor(pending_flat, dtype=torch.long),
            "pending_len": torch.tensor([len(p) for p in self.pending], dtype=torch.long),
            "context": torch.tensor(context_flat, dtype=torch.long),
            "context_len": torch.tensor([len(c) for c in self.context], dtype=torch.long),
            "tokens_absorbed": self.tokens_absorbed.cpu(),
            "chunks": self.chunks.cpu(),
        }
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config_fingerprint": self.config_fingerprint,
            "base_fingerprint": self.base_fingerprint,
            "adapter_fingerprint": self.adapter_fingerprint,
            "fifo_budget": str(self.fifo.shape[2]),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        return st_save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, device: torch.device | str = "cpu") -> "MemoryState":
        """Parse bytes written by :meth:`to_bytes`; raises :class:`CorruptStateError` on anything else."""
        metadata = read_safetensors_metadata(data)
        if metadata.get("format") != FORMAT:
            raise CorruptStateError(f"not a memory state (format {metadata.get('format')!r})")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise CorruptStateError(f"unsupported memory state version {metadata.get('format_version')!r}")
        try:
            t = st_load(bytes(data))
            budget = int(metadata["fifo_budget"])
            fifo = t["fifo"]
            if fifo.shape[2] < budget:
                pad = torch.zeros(*fifo.shape[:2], budget - fifo.shape[2], fifo.shape[3], dtype=fifo.dtype)
                fifo = torch.cat([fifo, pad], dim=2)
            pending = _unflatten(t["pending"], t["pending_len"], "pending")
            # Absent in blobs written before chunk_overlap existed (their configs have none).
            context = _unflatten(t["context"], t["context_len"], "context") if "context" in t else []
            state = cls(
                global_state=t["global_state"].to(device),
                has_global=t["has_global"].to(torch.bool).to(device),
                fifo=fifo.to(device),
                fifo_len=t["fifo_len"].to(device),
                pending=pending,
                tokens_absorbed=t["tokens_absorbed"].to(device),
                chunks=t["chunks"].to(device),
                config_fingerprint=metadata["config_fingerprint"],
                base_fingerprint=metadata["base_fingerprint"],
                adapter_fingerprint=metadata.get("adapter_fingerprint", ""),
                meta=json.loads(metadata.get("meta", "{}")),
                context=context,
            )
        except CorruptStateError:
            raise
        except Exception as exc:  # safetensors raises several types on bad bytes
            raise CorruptStateError(f"memory state bytes are damaged: {exc}") from None
        b = state.global_state.shape[1]
        if not (state.has_global.shape[0] == state.fifo_len.shape[0] == len(state.pending) == len(state.context) == b):
            raise CorruptStateError("memory state tensors disagree on the number of sessions")
        return state


def _unflatten(flat: torch.Tensor, lengths: torch.Tensor, what: str) -> list[list[int]]:
    """Per-session token lists from a flat tensor and its per-session counts (``to_bytes``' layout)."""
    counts, values = lengths.tolist(), flat.tolist()
    if sum(counts) != len(values) or any(n < 0 for n in counts):
        raise CorruptStateError(f"{what} token counts do not add up")
    out, pos = [], 0
    for n in counts:
        out.append(values[pos : pos + n])
        pos += n
    return out


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes, parsed as JSON only (no tensor is touched)."""
    if len(data) < 8:
        raise CorruptStateError("memory state bytes are truncated (no header)")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if header_len > len(data) - 8:
        raise CorruptStateError("memory state bytes are truncated (header)")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptStateError("memory state header is not valid JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CorruptStateError("memory state has no metadata")
    return meta
