"""CometConfig: the shape of a CoMeT memory, saved as JSON next to the adapter weights.

Every field changes what a memory state *means*, so a state or adapter made under one config is refused under
another (see :meth:`CometConfig.fingerprint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "comet_config.json"
MEMORY_SOURCES = ("input", "output")
GLOBAL_SOURCES = ("readouts", "compression", "evicted")


@dataclass(frozen=True)
class CometConfig:
    """Hyper-parameters of the per-layer dual memory (see docs/architecture.md).

    Attributes:
        chunk_size: text tokens per chunk (C). The layout of a steady chunk is
            ``m + B + K + C + ceil(C/s) + m`` positions (K: ``chunk_overlap``; the last ``m``, the readouts,
            only with ``global_source="readouts"``).
        num_global_slots: global memory slots = readout tokens per chunk (m).
        compression_stride: text tokens per compression token (s).
        fifo_budget: maximum entries of the temporary (FIFO) memory per layer (B).
        adapter_rank: rank of the residual low-rank adapters of both memory nets (r).
        global_memory: ablation switch; ``False`` removes global slots and readouts.
        temporary_memory: ablation switch; ``False`` removes compression tokens and the FIFO.
        gate: ablation switch; ``False`` replaces the gated update by ``S = candidate``.
        open_chunk_compression: whether the open last chunk (the stream's pending tail, the question and the
            answer being generated) also gets compression tokens. Off by default: that chunk is never written
            to memory (its text is absorbed later as part of a closed chunk, laid out anew), so compression
            tokens there would only cost positions and decode steps and put tokens between the question and
            its answer that text never needs; with an empty memory the model then answers exactly as the
            base model does. On: the official code's behaviour (every group of ``s`` text tokens, generated
            ones included, gets a compression token).
        memory_source: which hidden states of layer ``l`` the memory of layer ``l`` is written from, at the
            compression tokens and readouts. ``"input"`` (default) takes the layer's input, the very space that
            injection writes back into at layer ``l``, so a FIFO entry presents the same keys and values to a
            later chunk as the compression token presented inside its own chunk. ``"output"`` takes the
            layer's output, as the paper's code does (one layer off; a full fine-tune can absorb that, a frozen
            backbone reads it poorly: docs/training.md).
        global_source: which tokens of a closed chunk write the global memory's candidates. ``"readouts"``
            (default, the paper's design): ``m`` readout tokens appended to the chunk, readout ``i`` writing slot
            ``i``. ``"compression"``: the chunk's compression tokens themselves, the ``i``-th one writing slot
            ``i`` (so ``m`` must not exceed ``ceil(C/s)``; 128 = 1024/8 by default), and no readouts are laid
            out. A compression token's input already holds its group of ``s`` tokens (the FIFO is made of
            the same rows), so every slot starts from content a frozen backbone can read, and the gate only
            has to learn what to keep; readouts must first learn to find content in the whole chunk
            (docs/training.md, "The global memory from compression tokens"). Needs the temporary memory.
            ``"evicted"``: the FIFO entries a chunk's push evicts, the ``i``-th evicted row writing slot ``i``
            (so ``m`` must be at least ``ceil(C/s)``, the entries one closed chunk pushes, and ``B`` a multiple
            of it: each push then evicts one whole older chunk). The global memory
            then holds only what has left the FIFO, never a second copy of what the FIFO shows, and a slot
            written once presents exactly the FIFO entry it came from: no norm or adapter of its own, the
            read path the model has for the FIFO works for it from the start. Until the first eviction
            (``B / ceil(C/s)`` chunks, 4 by default) no global slots are laid out. Needs the temporary memory.
        chunk_overlap: stream tokens a chunk re-reads from before its start (K), as plain text between its
            memory slots and its own text, without compression tokens or labels. 0 (default) re-reads nothing,
            as in the paper. With K > 0 a fact that ends near a chunk's end, or is cut by the boundary, is seen
            whole and followed by its context once more in the next chunk, whose compression tokens write it to
            memory again, and the open chunk always shows the last K tokens of the stream verbatim
            (docs/architecture.md, "Chunk overlap"). The state keeps those K token ids; a chunk costs K more
            positions.
        memory_lora_rank: rank of the LoRA that runs only at memory positions (the added tokens: slots,
            compression tokens, readouts); 0 disables it. Text positions never see it, so the backbone's
            behaviour on plain text is untouched while the tokens that write and present memory get their own
            capacity (the design of Activation Beacon's beacon-specific projections, at low rank).
        memory_lora_alpha: its scaling numerator (scale = alpha / rank).
        memory_lora_targets: backbone Linear module names (inside each decoder layer) that get it.
        reader_lora_rank: rank of the LoRA that runs at the text positions of chunks that have memory (every
            chunk after the first, and the open chunk once anything was absorbed); 0 (default) disables it.
            The text tokens are the ones that read the memory slots; with this LoRA they learn to read them,
            instead of the frozen backbone having to read whatever the memory writes. A chunk without
            memory, such as a one-chunk chat, never sees it, so short chats stay exactly the base model's.
        reader_lora_alpha: its scaling numerator (scale = alpha / rank).
        reader_lora_targets: backbone Linear module names (inside each decoder layer) that get it.
        lora_rank: rank of the peft LoRA on the backbone, at every position (0 = no LoRA).
        lora_alpha: LoRA scaling numerator.
        lora_targets: backbone Linear module names that receive LoRA.
    """

    chunk_size: int = 1024
    num_global_slots: int = 128
    compression_stride: int = 8
    fifo_budget: int = 512
    adapter_rank: int = 8
    global_memory: bool = True
    temporary_memory: bool = True
    gate: bool = True
    open_chunk_compression: bool = False
    memory_source: str = "input"
    global_source: str = "readouts"
    chunk_overlap: int = 0
    memory_lora_rank: int = 16
    memory_lora_alpha: int = 32
    memory_lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj"))
    reader_lora_rank: int = 0
    reader_lora_alpha: int = 32
    reader_lora_targets: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj"))
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )

    def __post_init__(self) -> None:
        problems = []
        if self.chunk_size < 1:
            problems.append(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.global_memory and self.num_global_slots < 1:
            problems.append(f"num_global_slots must be >= 1 with global_memory on, got {self.num_global_slots}")
        if self.temporary_memory and self.compression_stride < 1:
            problems.append(f"compression_stride must be >= 1 with temporary_memory on, got {self.compression_stride}")
        if self.temporary_memory and self.fifo_budget < 1:
            problems.append(f"fifo_budget must be >= 1 with temporary_memory on, got {self.fifo_budget}")
        if self.adapter_rank < 1:
            problems.append(f"adapter_rank must be >= 1, got {self.adapter_rank}")
        if self.lora_rank < 0:
            problems.append(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.memory_lora_rank < 0:
            problems.append(f"memory_lora_rank must be >= 0, got {self.memory_lora_rank}")
        if self.reader_lora_rank < 0:
            problems.append(f"reader_lora_rank must be >= 0, got {self.reader_lora_rank}")
        if not 0 <= self.chunk_overlap <= self.chunk_size:
            problems.append(f"chunk_overlap must be between 0 and chunk_size ({self.chunk_size}), "
                            f"got {self.chunk_overlap}")
        if self.memory_source not in MEMORY_SOURCES:
            problems.append(f"memory_source must be one of {', '.join(MEMORY_SOURCES)}, got {self.memory_source!r}")
        if self.global_source not in GLOBAL_SOURCES:
            problems.append(f"global_source must be one of {', '.join(GLOBAL_SOURCES)}, got {self.global_source!r}")
        elif self.global_source != "readouts" and self.global_memory:
            groups = -(-self.chunk_size // max(1, self.compression_stride))
            if not self.temporary_memory:
                problems.append(f"global_source={self.global_source!r} needs temporary_memory on (its compression "
                                "tokens and FIFO)")
            elif self.global_source == "compression" and self.num_global_slots > groups:
                problems.append(
                    f'global_source="compression" writes slot i from compression token i, so num_global_slots '
                    f"({self.num_global_slots}) must not exceed ceil(chunk_size / compression_stride) ({groups})")
            elif self.global_source == "evicted" and self.num_global_slots < groups:
                problems.append(
                    f'global_source="evicted" writes slot i from the i-th evicted FIFO entry, so num_global_slots '
                    f"({self.num_global_slots}) must be at least ceil(chunk_size / compression_stride) ({groups}), "
                    "the entries one chunk pushes")
            elif self.global_source == "evicted" and (self.fifo_budget < groups or self.fifo_budget % groups):
                problems.append(
                    f'global_source="evicted" needs fifo_budget ({self.fifo_budget}) to be a whole number of '
                    f"chunks' entries ({groups} each), so that every push evicts one whole older chunk, entry i "
                    "into slot i")
        if problems:
            raise ValueError("invalid CometConfig: " + "; ".join(problems))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "memory_lora_targets", tuple(self.memory_lora_targets))
        object.__setattr__(self, "reader_lora_targets", tuple(self.reader_lora_targets))

    # Effective sizes: the ablation switches zero them out so that layout code never branches on flags.
    @property
    def m(self) -> int:
        """Global slots actually used (0 when global memory is off)."""
        return self.num_global_slots if self.global_memory else 0

    @property
    def global_from_compression(self) -> bool:
        """Whether the compression tokens write the global memory (``global_source="compression"``)."""
        return bool(self.m) and self.global_source == "compression"

    @property
    def global_from_fifo(self) -> bool:
        """Whether the entries evicted from the FIFO write the global memory (``global_source="evicted"``)."""
        return bool(self.m) and self.global_source == "evicted"

    @property
    def num_readouts(self) -> int:
        """Readout tokens appended to a closed chunk: ``m`` when readouts write the global memory, else 0."""
        return 0 if self.global_from_compression or self.global_from_fifo else self.m

    @property
    def stride(self) -> int:
        """Compression stride actually used (0 when temporary memory is off)."""
        return self.compression_stride if self.temporary_memory else 0

    @property
    def open_stride(self) -> int:
        """Compression stride of the open last chunk (0 unless ``open_chunk_compression``)."""
        return self.stride if self.open_chunk_compression else 0

    @property
    def fifo(self) -> int:
        """FIFO budget actually used (0 when temporary memory is off)."""
        return self.fifo_budget if self.temporary_memory else 0

    @property
    def fifo_reach_chunks(self) -> int:
        """Closed full chunks whose compression entries all fit in the FIFO at once (B // ceil(C/s); 4 by default)."""
        if not self.fifo:
            return 0
        return self.fifo // -(-self.chunk_size // self.stride)

    def memory_tier(self, key_age: int) -> str:
        """Which memory can answer about a token ``key_age`` closed chunks back (see
        :func:`comet_agents.layout.key_age`): ``"open"`` (the open chunk's own text), ``"fifo"`` (the chunk's
        compression entries are all still in the FIFO) or ``"global"`` (only the gated global memory can carry
        it). Reading the last tier is what CoMeT adds over a window; pass-key grids and training logs report it
        separately."""
        if key_age < 0:
            raise ValueError(f"key_age must be >= 0, got {key_age}")
        if key_age == 0:
            return "open"
        return "fifo" if key_age <= self.fifo_reach_chunks else "global"

    def steady_layout_len(self) -> int:
        """Positions of a full chunk once the FIFO is full: m + B + K + C + ceil(C/s) + m (the last m readouts
        only with ``global_source="readouts"``; K the ``chunk_overlap``)."""
        comp = -(-self.chunk_size // self.stride) if self.stride else 0
        return self.m + self.num_readouts + self.fifo + self.chunk_overlap + self.chunk_size + comp

    def state_fields(self) -> dict[str, Any]:
        """The fields that determine what a memory state means (LoRA settings excluded: the adapter
        fingerprint covers the weights)."""
        d = self.to_dict()
        for k in ("lora_rank", "lora_alpha", "lora_targets", "memory_lora_rank", "memory_lora_alpha",
                  "memory_lora_targets", "reader_lora_rank", "reader_lora_alpha", "reader_lora_targets",
                  "open_chunk_compression"):
            d.pop(k)
        if d["global_source"] == "readouts":  # absent before the field existed: earlier states keep their fingerprint
            d.pop("global_source")
        if not d["chunk_overlap"]:  # likewise
            d.pop("chunk_overlap")
        return d

    def fingerprint(self) -> str:
        """Short stable hash of the state-defining fields, stored with every state."""
        blob = json.dumps(self.state_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["memory_lora_targets"] = list(self.memory_lora_targets)
        d["reader_lora_targets"] = list(self.reader_lora_targets)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CometConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CometConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``comet_config.json`` (this config plus optional metadata under ``"meta"``)."""
        path = Path(directory) / CONFIG_FILE
        payload: dict[str, Any] = {"comet": self.to_dict()}
        if extra:
            payload["meta"] = extra
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> tuple["CometConfig", dict[str, Any]]:
        """Read ``comet_config.json``; returns the config and its metadata dict."""
        path = Path(directory) / CONFIG_FILE
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if "comet" not in payload:
            raise ValueError(f"{path} has no 'comet' section")
        return cls.from_dict(payload["comet"]), payload.get("meta", {})
