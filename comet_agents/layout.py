"""Chunk layouts: where slots, text, compression tokens and readouts sit, their positions, masks and labels.

Pure functions, no model state. One chunk's layout (docs/architecture.md):

    [ m global slots ][ q temporary slots ][ K overlap tokens ][ x1..xs <C> x(s+1)..x2s <C> ... ][ R_0 .. R_{m-1} ]

* chunk 0 of a stream has no slots (there is no memory yet) and nothing to overlap;
* with ``CometConfig.chunk_overlap`` K > 0, every later chunk first re-reads the last K stream tokens before it
  (:func:`overlap_context`), as plain text: no compression tokens, no labels, not counted as absorbed;
* a *closed* chunk (absorbed into memory) puts a compression token after every group of ``s`` text tokens,
  the final partial group included, and ends with the m readouts;
* the *open* last chunk (the one holding the question and the answer being generated) has no readouts and,
  by default, no compression tokens (callers pass stride 0 for it; ``CometConfig.open_stride``). With
  open-chunk compression it puts a compression token after a complete group only once a further text token
  follows it; decoding keeps that rule, which makes the layout of an open chunk the same whether its text came
  from the prompt or was generated token by token.

Position ids are local to the chunk (0..len-1); a pad never consumes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the added tokens: ``<|memory|>``, ``<beacon_0..m-1>`` (readouts) and ``<beacon>`` (compression)."""

    memory: int
    first_readout: int
    compression: int
    pad: int

    @classmethod
    def contiguous(cls, first: int, num_readouts: int, pad: int) -> "SpecialIds":
        """The official order: memory, readouts 0..m-1, compression, starting at id ``first``."""
        return cls(memory=first, first_readout=first + 1, compression=first + 1 + num_readouts, pad=pad)


@dataclass(frozen=True)
class ChunkLayout:
    """One chunk's token layout. Index fields are positions inside ``input_ids``."""

    input_ids: tuple[int, ...]
    num_global: int
    num_temp: int
    text_index: tuple[int, ...]  # the chunk's own text (overlap tokens excluded)
    compression_index: tuple[int, ...]
    readout_index: tuple[int, ...]
    # Positions whose hidden states become the global candidates, slot i from entry i: the readouts, or the
    # first m compression tokens with ``global_from_compression``; empty where the chunk does not write. With
    # ``fifo_writes`` (global_source="evicted") they are rows of the FIFO before this chunk's push instead,
    # the ones the push evicts (0 .. fifo_writes - 1, oldest first).
    global_write_index: tuple[int, ...]
    num_context: int = 0  # overlap tokens re-read right after the slots

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def position_ids(self) -> tuple[int, ...]:
        return tuple(range(len(self.input_ids)))


def compression_after(n_text: int, stride: int, closed: bool) -> list[bool]:
    """For each text token, whether a compression token follows it.

    A complete group of ``stride`` tokens is followed by one; in a closed chunk so is the last partial group;
    in an open chunk a group's token is only placed once more text follows.
    """
    if stride <= 0:
        return [False] * n_text
    after = [False] * n_text
    for i in range(n_text):
        last = i == n_text - 1
        if (i + 1) % stride == 0:
            after[i] = closed or not last
        elif last and closed:
            after[i] = True
    return after


def build_chunk_layout(
    text_ids: Sequence[int],
    *,
    num_global: int,
    num_temp: int,
    stride: int,
    num_readouts: int,
    closed: bool,
    ids: SpecialIds,
    global_from_compression: bool = False,
    fifo_writes: int = 0,
    context_ids: Sequence[int] = (),
) -> ChunkLayout:
    """Build one chunk's layout.

    Args:
        text_ids: the chunk's text tokens.
        num_global: global slots to place (``m``, or 0 for the first chunk / no global memory).
        num_temp: temporary slots to place (current FIFO fill ``q``).
        stride: compression stride ``s`` (0 disables compression tokens).
        num_readouts: readouts appended at the end (``m`` for a closed chunk, 0 for the open last chunk).
        closed: whether the chunk is absorbed into memory (closes its final partial group).
        global_from_compression: the global memory is written by the compression tokens
            (``CometConfig.global_source == "compression"``): then ``num_readouts`` is the number of slots they
            write (the first ``num_readouts`` compression tokens, slot i from the i-th), and no readout tokens
            are appended.
        fifo_writes: with ``CometConfig.global_source == "evicted"``, how many of the FIFO's oldest entries this
            chunk's push evicts; they write slots 0 .. fifo_writes - 1. Pass ``num_readouts=0`` with it.
        context_ids: overlap tokens (``CometConfig.chunk_overlap``), placed after the slots and before the text
            as plain tokens: they get no compression tokens and are not in ``text_index``.
    """
    if fifo_writes and (num_readouts or global_from_compression):
        raise ValueError("fifo_writes excludes readouts and global_from_compression: one writer per global memory")
    if not closed and num_readouts:
        raise ValueError("an open chunk has no readouts")
    tokens: list[int] = [ids.memory] * (num_global + num_temp) + [int(t) for t in context_ids]
    text_index: list[int] = []
    comp_index: list[int] = []
    for tok, comp in zip(text_ids, compression_after(len(text_ids), stride, closed)):
        text_index.append(len(tokens))
        tokens.append(int(tok))
        if comp:
            comp_index.append(len(tokens))
            tokens.append(ids.compression)
    if fifo_writes:
        readout_index, writes = (), tuple(range(fifo_writes))
    elif global_from_compression:
        readout_index, writes = (), tuple(comp_index[:num_readouts])
    else:
        readout_index = writes = tuple(range(len(tokens), len(tokens) + num_readouts))
        tokens.extend(ids.first_readout + i for i in range(num_readouts))
    return ChunkLayout(
        input_ids=tuple(tokens),
        num_global=num_global,
        num_temp=num_temp,
        text_index=tuple(text_index),
        compression_index=tuple(comp_index),
        readout_index=readout_index,
        global_write_index=writes,
        num_context=len(context_ids),
    )


def next_chunk_layout(
    text_ids: Sequence[int],
    *,
    has_global: bool,
    fifo_len: int,
    num_global: int,
    fifo_budget: int,
    stride: int,
    closed: bool,
    ids: SpecialIds,
    global_from_compression: bool = False,
    global_from_fifo: bool = False,
    context_ids: Sequence[int] = (),
) -> ChunkLayout:
    """The layout of a memory's next chunk, given what the memory holds (``has_global``: a global state exists;
    ``fifo_len``: the FIFO's fill; ``context_ids``: the overlap tokens it keeps) and the config's writer of the
    global memory: readouts (default), the compression tokens (``global_from_compression``) or the FIFO entries
    this chunk's push evicts (``global_from_fifo``). One rule for streaming
    (:meth:`comet_agents.engine.MemoryEngine.chunk_layout`) and training (:func:`sequence_layouts`)."""
    evicts = 0
    if global_from_fifo and closed:
        evicts = fifo_evictions(fifo_len, sum(compression_after(len(text_ids), stride, closed)), fifo_budget)
    return build_chunk_layout(
        text_ids,
        num_global=num_global if has_global else 0,
        num_temp=fifo_len,
        stride=stride,
        num_readouts=num_global if closed and not global_from_fifo else 0,
        closed=closed,
        ids=ids,
        global_from_compression=global_from_compression,
        fifo_writes=evicts,
        context_ids=context_ids,
    )


def overlap_context(context: Sequence[int], text: Sequence[int], overlap: int) -> list[int]:
    """The overlap tokens the chunk after ``text`` re-reads: the last ``overlap`` stream tokens so far, i.e. the
    tail of ``context`` (what ``text``'s own chunk re-read) followed by ``text``. Empty when ``overlap`` is 0."""
    if overlap <= 0:
        return []
    return [int(t) for t in (list(context) + list(text))[-overlap:]]


def fifo_evictions(fifo_len: int, num_new: int, budget: int) -> int:
    """How many of the oldest FIFO entries a push of ``num_new`` entries evicts from a FIFO of ``budget`` rows
    holding ``fifo_len`` (what :func:`comet_agents.modeling.fifo_push` drops)."""
    return max(0, min(fifo_len, fifo_len + num_new - budget)) if budget else 0


def split_into_chunks(token_ids: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Cut a token stream into consecutive chunks of ``chunk_size`` (the last one may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [list(token_ids[i : i + chunk_size]) for i in range(0, len(token_ids), chunk_size)]


def key_age(token_index: int, stream_tokens: int, chunk_size: int) -> int:
    """How many closed chunks back token ``token_index`` of a ``stream_tokens``-token stream sits when a question
    follows the stream: 0 in the open chunk (the tail after the last full chunk), 1 in the newest closed chunk, and
    so on. Streams are cut into closed chunks of ``chunk_size`` tokens as the engine and the trainer cut them;
    :meth:`comet_agents.config.CometConfig.memory_tier` says which memory holds such a token."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= token_index < stream_tokens:
        raise ValueError(f"token_index {token_index} is outside a stream of {stream_tokens} tokens")
    closed = stream_tokens // chunk_size
    chunk = token_index // chunk_size
    return closed - chunk if chunk < closed else 0


def shift_labels(text_ids: Sequence[int], supervised: Sequence[bool]) -> list[int]:
    """Labels on the text stream, shifted *before* special tokens are inserted.

    ``label[t] = text_ids[t+1]`` when token ``t+1`` is supervised, else ``IGNORE_INDEX``. Inserting slots and
    compression tokens afterwards therefore never changes what a text token predicts, and the loss needs no
    second shift.
    """
    if len(text_ids) != len(supervised):
        raise ValueError(f"text_ids ({len(text_ids)}) and supervised ({len(supervised)}) differ in length")
    labels = [IGNORE_INDEX] * len(text_ids)
    for t in range(len(text_ids) - 1):
        if supervised[t + 1]:
            labels[t] = int(text_ids[t + 1])
    return labels


def layout_labels(layout: ChunkLayout, text_labels: Sequence[int]) -> list[int]:
    """Spread a chunk's text labels onto its layout; every non-text position gets ``IGNORE_INDEX``."""
    if len(text_labels) != len(layout.text_index):
        raise ValueError(f"{len(text_labels)} labels for {len(layout.text_index)} text tokens")
    labels = [IGNORE_INDEX] * len(layout)
    for pos, lab in zip(layout.text_index, text_labels):
        labels[pos] = int(lab)
    return labels


def causal_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """Per-chunk boolean attention mask ``(B, 1, total, total)``; True means "may attend".

    Causal inside each sample's real positions, padded keys masked. Pad queries see the real keys before them,
    so no row is empty (an empty row would give NaN in SDPA); their outputs are never read.
    """
    ar = torch.arange(total, device=lengths.device)
    causal = ar[None, :] <= ar[:, None]
    real_key = ar[None, :] < lengths[:, None]
    return (causal[None] & real_key[:, None, :])[:, None]


def decode_mask(past_lengths: torch.Tensor, past_total: int, num_new: int) -> torch.Tensor:
    """Mask ``(B, 1, num_new, past_total + num_new)`` for new tokens appended after a (padded) KV cache.

    Sample ``b`` has ``past_lengths[b]`` real cached positions at the front of the cache; new tokens see those
    and, causally, each other.
    """
    ar = torch.arange(past_total, device=past_lengths.device)
    past = (ar[None, :] < past_lengths[:, None])[:, None, :].expand(-1, num_new, -1)
    new = torch.ones(num_new, num_new, dtype=torch.bool, device=past_lengths.device).tril()
    new = new[None].expand(past_lengths.shape[0], -1, -1)
    return torch.cat([past, new], dim=-1)[:, None]


def to_attention_mask(mask: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """Convert a boolean mask to what the backbone's attention implementation expects.

    SDPA takes the boolean mask directly; eager attention adds the mask to its scores.
    """
    if implementation == "sdpa":
        return mask
    if implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(f"unsupported attn_implementation {implementation!r}: use 'sdpa' or 'eager'")


@dataclass
class LayoutBatch:
    """A batch of chunk layouts padded on the right to a common length, as tensors.

    Index tensors are padded with 0 and come with a validity mask; ``temp_index`` points at the temporary
    slots, oldest first.
    """

    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    lengths: torch.Tensor  # (B,)
    has_global: torch.Tensor  # (B,) bool: global slots at positions 0..m-1
    temp_index: torch.Tensor  # (B, Qmax)
    temp_valid: torch.Tensor  # (B, Qmax)
    compression_index: torch.Tensor  # (B, Nmax)
    compression_valid: torch.Tensor  # (B, Nmax)
    global_write_index: torch.Tensor  # (B, W): rows whose states are the global candidates, slot i from row i
    global_write_valid: torch.Tensor  # (B, W): False where slot i gets no candidate (it keeps its value)
    writes_global: torch.Tensor  # (B,) bool: the chunk updates the global memory
    text_index: torch.Tensor  # (B, Tmax)
    text_valid: torch.Tensor  # (B, Tmax)
    labels: torch.Tensor | None = None  # (B, T) when built with labels
    # Host-side summaries, so the forward pass never waits on the device to branch.
    any_global: bool = False
    any_global_write: bool = False
    partial_global_write: bool = False  # some writing chunk has fewer candidates than the widest one
    num_labelled: int = 0

    def to(self, device: torch.device | str) -> "LayoutBatch":
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return LayoutBatch(**moved)


def _padded_index(rows: Sequence[Sequence[int]], min_width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(r) for r in rows] + [min_width])
    index = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            index[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            valid[b, : len(r)] = True
    return index, valid


def pad_layouts(
    layouts: Sequence[ChunkLayout], pad_id: int, labels: Sequence[Sequence[int]] | None = None
) -> LayoutBatch:
    """Pad layouts of different shapes into one batch. Pads sit at the end and take position ``len``."""
    if not layouts:
        raise ValueError("pad_layouts needs at least one layout")
    num_readouts = {len(lay.readout_index) for lay in layouts if lay.readout_index}
    if len(num_readouts) > 1:
        raise ValueError(f"layouts disagree on the number of readouts: {sorted(num_readouts)}")
    total = max(len(lay) for lay in layouts)
    bsz = len(layouts)
    input_ids = torch.full((bsz, total), pad_id, dtype=torch.long)
    position_ids = torch.zeros((bsz, total), dtype=torch.long)
    label_t = torch.full((bsz, total), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for b, lay in enumerate(layouts):
        n = len(lay)
        input_ids[b, :n] = torch.tensor(lay.input_ids, dtype=torch.long)
        position_ids[b, :n] = torch.arange(n)
        position_ids[b, n:] = n
        if label_t is not None:
            lab = labels[b]
            if len(lab) != n:
                raise ValueError(f"labels of sample {b} have length {len(lab)}, layout {n}")
            label_t[b, :n] = torch.tensor(lab, dtype=torch.long)
    temp_index, temp_valid = _padded_index(
        [list(range(lay.num_global, lay.num_global + lay.num_temp)) for lay in layouts]
    )
    comp_index, comp_valid = _padded_index([lay.compression_index for lay in layouts])
    writes = [lay.global_write_index for lay in layouts]
    write_index, write_valid = _padded_index(writes)
    text_index, text_valid = _padded_index([lay.text_index for lay in layouts])
    return LayoutBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        lengths=torch.tensor([len(lay) for lay in layouts], dtype=torch.long),
        has_global=torch.tensor([lay.num_global > 0 for lay in layouts], dtype=torch.bool),
        temp_index=temp_index,
        temp_valid=temp_valid,
        compression_index=comp_index,
        compression_valid=comp_valid,
        global_write_index=write_index,
        global_write_valid=write_valid,
        writes_global=torch.tensor([len(w) > 0 for w in writes], dtype=torch.bool),
        text_index=text_index,
        text_valid=text_valid,
        labels=label_t,
        any_global=any(lay.num_global > 0 for lay in layouts),
        any_global_write=any(len(w) > 0 for w in writes),
        partial_global_write=any(0 < len(w) < write_index.shape[1] for w in writes),
        num_labelled=int((label_t != IGNORE_INDEX).sum()) if label_t is not None else 0,
    )


def sequence_layouts(
    chunk_texts: Sequence[Sequence[int]],
    *,
    num_global: int,
    fifo_budget: int,
    stride: int,
    ids: SpecialIds,
    last_open: bool,
    open_stride: int | None = None,
    global_from_compression: bool = False,
    global_from_fifo: bool = False,
    overlap: int = 0,
) -> list[ChunkLayout]:
    """Layouts of a whole sequence of chunks starting from empty memory (training's chunk plan).

    The FIFO fill and first-chunk rule follow from the plan alone: chunk c gets ``min(B, entries so far)``
    temporary slots and global slots once an earlier chunk wrote the global memory. With ``last_open`` the final chunk is
    laid out as at inference (no readouts, open final group), with compression stride ``open_stride`` (default:
    ``stride``; 0 places no compression tokens in it). ``global_from_compression``: see
    :func:`build_chunk_layout`. ``global_from_fifo`` (global_source="evicted"): a closed chunk writes the
    global memory with the FIFO entries its push evicts (:func:`fifo_evictions`); ``fifo_budget`` must then be
    the real FIFO's. ``overlap``: ``CometConfig.chunk_overlap``, the stream tokens each chunk re-reads from
    before its start (:func:`overlap_context`).
    """
    layouts: list[ChunkLayout] = []
    q, has_global, context = 0, False, []
    for c, text in enumerate(chunk_texts):
        closed = not (last_open and c == len(chunk_texts) - 1)
        lay = next_chunk_layout(
            text, has_global=has_global, fifo_len=q, num_global=num_global, fifo_budget=fifo_budget,
            stride=stride if closed or open_stride is None else open_stride, closed=closed, ids=ids,
            global_from_compression=global_from_compression, global_from_fifo=global_from_fifo,
            context_ids=context,
        )
        context = overlap_context(context, text, overlap)
        layouts.append(lay)
        q = min(fifo_budget, q + len(lay.compression_index)) if fifo_budget else 0
        has_global = has_global or bool(lay.global_write_index)
    return layouts
