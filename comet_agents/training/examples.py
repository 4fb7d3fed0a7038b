"""From generated samples to training chunks: tokenisation, supervision, chunk plans and padded batches.

A training sequence is laid out exactly as the engine lays out a stream at run time: the stream is cut into
closed chunks of ``C`` tokens, and the stream's tail plus the question/answer turns form the open last chunk
(no readouts), so the model learns on the very layouts it will see when answering. Questions are chat turns
built by :func:`comet_agents.engine.chat_question`; only the answers (and the end-of-turn token) are
supervised, plus optionally the stream itself at a small weight (``lm_weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import CometConfig
from ..engine import chat_question, encode_text, token_index_at
from ..events import render
from ..layout import LayoutBatch, SpecialIds, key_age, layout_labels, pad_layouts, sequence_layouts, shift_labels
from ..modeling import CometModel
from .data.common import standalone_starts


@dataclass
class TrainingExample:
    """One tokenised sequence: closed chunks, then the open chunk; labels/weights per text token.

    ``without_fifo``: lay the sequence out without the temporary memory (no compression tokens, no FIFO), so
    that whatever crosses a chunk boundary crosses it through the global memory (``TrainArgs.fifo_dropout``).

    ``key_age``: for a sample with one needle (families ``passkey``, ``passkey_memory``), how many closed chunks
    back the key sits (:func:`~comet_agents.layout.key_age`; 0 = in the open chunk), else None. The trainer
    logs losses per memory tier with it, so a run shows whether keys older than the FIFO are learnt.
    """

    chunk_texts: list[list[int]]
    chunk_labels: list[list[int]]
    chunk_weights: list[list[float]]
    family: str
    key_age: int | None = None
    without_fifo: bool = False

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_texts)

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.chunk_texts)


def qa_pieces(tokenizer: Any, qa: Sequence[Any]) -> list[tuple[str, bool]]:
    """Question/answer turns as (text, supervised) pieces.

    Every question is rendered by :func:`chat_question`, as at recall time; every answer is followed by the
    template's end-of-turn marker so the model learns to stop.
    """
    end = "<|im_end|>\n" if "<|im_end|>" in tokenizer.get_vocab() else (tokenizer.eos_token or "") + "\n"
    pieces: list[tuple[str, bool]] = []
    for item in qa:
        pieces.append((chat_question(tokenizer, item.question), False))
        pieces.append((item.answer.strip() + end.rstrip("\n"), True))
        pieces.append(("\n", False))
    return pieces


def cut_stream(sample: Any, stream: list[int], tokenizer: Any, start: int, stop: int) -> list[int] | None:
    """``stream[start:stop]`` (the sample's stream tokens) when the cut keeps every standalone occurrence
    (:func:`~comet_agents.training.data.common.standalone_starts`) of every answer, else None: a sample whose
    answers are not all spelled out in its stream (a count, a summary) is never cut."""
    answers = [item.answer for item in sample.qa]
    if not answers or any(not standalone_starts(sample.stream, a) for a in answers):
        return None
    kept = tokenizer.decode(stream[start:stop])
    if all(len(standalone_starts(kept, a)) == len(standalone_starts(sample.stream, a)) for a in answers):
        return stream[start:stop]
    return None


def trim_tail(sample: Any, stream: list[int], tokenizer: Any, chunk_size: int, tail: int) -> list[int]:
    """``stream`` (the sample's stream tokens) cut to ``tail`` tokens past its last full chunk, when the cut
    keeps every occurrence of every answer (:func:`cut_stream`); otherwise ``stream`` unchanged.

    Generated streams end on a whole piece (a filler sentence, an event), so their tails rarely come out shorter
    than a piece (~30 tokens), while at recall time a stream's tail is anything from 0 tokens (right after a
    chunk closed) to a chunk (docs/training.md, steps 2,668-2,831).
    """
    if not 0 <= tail < chunk_size:
        raise ValueError(f"tail must be in [0, {chunk_size}), got {tail}")
    keep = (len(stream) // chunk_size) * chunk_size + tail
    if keep >= len(stream):
        return stream
    cut = cut_stream(sample, stream, tokenizer, 0, keep)
    return stream if cut is None else cut


def chunk_end_cut(sample: Any, stream: list[int], tokenizer: Any, chunk_size: int, closed: int, tail: int,
                  from_end: int) -> tuple[list[int], int] | None:
    """``stream`` cut to ``closed`` chunks plus ``tail`` tokens, with the first answer's first occurrence
    starting ``from_end`` tokens before the end of a closed chunk (the latest such chunk for which the cut keeps
    every occurrence of every answer, :func:`cut_stream`), and the number of tokens cut from the front; None
    when there is none (the answer too early, not spelled out, the stream too short).

    A fact in the last few tokens of a chunk is seen by few of the chunk's compression tokens: keys starting in
    the last 64 tokens of their chunk were found 3 of 28 times at step 2,945, earlier ones 43 of 50, whatever the
    stream's tail (docs/training.md, steps 2,831-2,945). Uniform depths put 5 % of first answers there; this
    cut lets the trainer ask for more (``TrainArgs.chunk_end_share``). The first cut tried moves the answer back
    by less than a chunk and drops as much of the stream's end, so the answer keeps its age (closed chunks back).
    """
    if not 1 <= from_end <= chunk_size:
        raise ValueError(f"from_end must be in [1, {chunk_size}], got {from_end}")
    if closed < 1 or not 0 <= tail < chunk_size:
        raise ValueError(f"need closed >= 1 and 0 <= tail < {chunk_size}, got {closed} and {tail}")
    answer = sample.qa[0].answer if sample.qa else ""
    starts = standalone_starts(sample.stream, answer)
    if not starts:
        return None
    at = token_index_at(tokenizer, sample.stream, starts[0], len(stream))
    length = closed * chunk_size + tail
    q = min(at, closed * chunk_size - 1)
    q -= (q - (chunk_size - from_end)) % chunk_size  # the latest index <= q at chunk_size - from_end of a chunk
    while q >= 0:  # later mentions (a needle states its key twice) may need the key a chunk earlier
        start = at - q
        if start + length > len(stream):
            return None
        cut = cut_stream(sample, stream, tokenizer, start, start + length)
        if cut is not None:
            return cut, start
        q -= chunk_size
    return None


def echo_question(tokenizer: Any, stream: list[int], question: str) -> list[int]:
    """The tokens of ``question`` as the user's chat message (``[user] <question>``, rendered by
    :mod:`comet_agents.events`), on a line of its own, to append to ``stream``.

    A memory middleware absorbs the user's request before it asks memory about it, so at run time the question
    often stands at the end of the stream, in the open chunk, right before the same question in the chat
    template. A model that never saw that during training copies the echo as its answer (docs/training.md,
    steps 3,184-3,293).
    """
    text = render({"type": "message", "role": "user", "content": question})
    if stream and not tokenizer.decode(stream[-1:]).endswith("\n"):
        text = "\n" + text
    return encode_text(tokenizer, text)


def encode_sample(sample: Any, tokenizer: Any, chunk_size: int, *, lm_weight: float = 0.0,
                  tail: int | None = None, chunk_end: tuple[int, int] | None = None,
                  echo: bool = False, end_weight: float = 1.0) -> TrainingExample:
    """Tokenise a :class:`~comet_agents.training.data.common.Sample` into a chunk plan with labels.

    ``tail``: cut the stream to this many tokens past its last full chunk where :func:`trim_tail` allows it.
    ``chunk_end`` = (closed chunks, from_end): instead cut the stream to ``closed`` chunks plus ``tail`` tokens
    so that the first answer starts ``from_end`` tokens before the end of a closed chunk
    (:func:`chunk_end_cut`), where that is possible; else as ``tail`` alone.
    ``echo``: after the cuts, end the stream with the first question as the user's message
    (:func:`echo_question`).
    ``end_weight``: loss weight of the end-of-turn token that closes each answer (every other answer token
    weighs 1): where the model decides that an answer, a key, is complete.
    """
    full = encode_text(tokenizer, sample.stream)
    stream, start = full, 0
    if chunk_end is not None:
        if tail is None:
            raise ValueError("chunk_end needs a tail")
        cut = chunk_end_cut(sample, full, tokenizer, chunk_size, chunk_end[0], tail, chunk_end[1])
        if cut is not None:
            stream, start = cut
    if tail is not None and stream is full:
        stream = trim_tail(sample, stream, tokenizer, chunk_size, tail)
    if echo and sample.qa:
        stream = stream + echo_question(tokenizer, stream, sample.qa[0].question)
    qa_ids: list[int] = []
    qa_sup: list[bool] = []
    answer_ends: list[int] = []  # where each answer's closing token sits in stream + qa_ids
    for text, sup in qa_pieces(tokenizer, sample.qa):
        ids = encode_text(tokenizer, text)
        qa_ids.extend(ids)
        qa_sup.extend([sup] * len(ids))
        if sup and ids:
            answer_ends.append(len(stream) + len(qa_ids) - 1)
    n_closed = len(stream) // chunk_size
    ids = stream + qa_ids
    supervised = [False] * len(stream) + qa_sup
    labels = shift_labels(ids, supervised)
    weights = [1.0 if lab != -100 else 0.0 for lab in labels]
    for at in answer_ends:  # the label of position t is token t + 1
        weights[at - 1] = end_weight
    if lm_weight > 0:
        stream_labels = shift_labels(ids, [True] * len(stream) + [False] * len(qa_ids))
        for t in range(len(stream) - 1):
            if labels[t] == -100:
                labels[t] = stream_labels[t]
                weights[t] = lm_weight
    bounds = [i * chunk_size for i in range(n_closed + 1)] + [len(ids)]
    age = None
    needle = sample.meta.get("needle_char_offset")
    if needle is not None and stream:
        at = sample.stream.index(sample.meta["key"], needle)
        age = key_age(token_index_at(tokenizer, sample.stream, at, len(full)) - start, len(stream), chunk_size)
    return TrainingExample(
        chunk_texts=[ids[a:b] for a, b in zip(bounds, bounds[1:])],
        chunk_labels=[labels[a:b] for a, b in zip(bounds, bounds[1:])],
        chunk_weights=[weights[a:b] for a, b in zip(bounds, bounds[1:])],
        family=sample.family,
        key_age=age,
    )


@dataclass(frozen=True)
class Collator:
    """Examples -> padded chunk batches, from the model's layout settings only (no tensors of the model), so
    that the trainer's data workers can collate while the GPU trains."""

    config: CometConfig
    special: SpecialIds

    @classmethod
    def for_model(cls, model: CometModel) -> "Collator":
        return cls(model.config, model.special)

    def __call__(self, examples: Sequence[TrainingExample]) -> tuple[list[LayoutBatch], list[torch.Tensor]]:
        return _collate(examples, self.config, self.special)


def collate(examples: Sequence[TrainingExample], model: CometModel) -> tuple[list[LayoutBatch], list[torch.Tensor]]:
    """Padded chunk batches (with labels) and per-position loss weights; all examples need equal chunk counts."""
    return _collate(examples, model.config, model.special)


def _collate(examples: Sequence[TrainingExample], cfg: CometConfig,
             special: SpecialIds) -> tuple[list[LayoutBatch], list[torch.Tensor]]:
    counts = {ex.num_chunks for ex in examples}
    if len(counts) != 1:
        raise ValueError(f"examples in one batch must have the same number of chunks, got {sorted(counts)}")
    per_example = []
    for ex in examples:
        fifo, stride, open_stride = cfg.fifo, cfg.stride, cfg.open_stride
        if ex.without_fifo:  # compression tokens stay where they write the global memory, the FIFO slots go
            if cfg.global_from_fifo:
                raise ValueError('a sequence without the FIFO has no global memory either with global_source='
                                 '"evicted" (the FIFO writes it): FIFO dropout does not apply')
            fifo, stride, open_stride = (0, stride, open_stride) if cfg.global_from_compression else (0, 0, 0)
        lays = sequence_layouts(ex.chunk_texts, num_global=cfg.m, fifo_budget=fifo, stride=stride,
                                ids=special, last_open=True, open_stride=open_stride,
                                global_from_compression=cfg.global_from_compression,
                                global_from_fifo=cfg.global_from_fifo, overlap=cfg.chunk_overlap)
        per_example.append(lays)
    batches, weights = [], []
    for c in range(counts.pop()):
        lays = [p[c] for p in per_example]
        labs = [layout_labels(lay, ex.chunk_labels[c]) for lay, ex in zip(lays, examples)]
        batch = pad_layouts(lays, special.pad, labels=labs)
        w = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for b, (lay, ex) in enumerate(zip(lays, examples)):
            w[b, list(lay.text_index)] = torch.tensor(ex.chunk_weights[c], dtype=torch.float32)
        batches.append(batch)
        weights.append(w)
    return batches, weights
