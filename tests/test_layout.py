"""Property tests of the pure layout functions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from comet_agents.layout import (
    IGNORE_INDEX,
    SpecialIds,
    build_chunk_layout,
    causal_mask,
    compression_after,
    decode_mask,
    key_age,
    layout_labels,
    pad_layouts,
    sequence_layouts,
    shift_labels,
    split_into_chunks,
)

IDS = SpecialIds.contiguous(1000, 4, pad=1)
texts = st.lists(st.integers(2, 999), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(text=texts, g=st.sampled_from([0, 4]), q=st.integers(0, 9), s=st.integers(0, 9), closed=st.booleans())
def test_chunk_layout_structure(text, g, q, s, closed) -> None:
    r = g if closed else 0
    lay = build_chunk_layout(text, num_global=g, num_temp=q, stride=s, num_readouts=r, closed=closed, ids=IDS)
    n = len(text)
    if s == 0:
        n_comp = 0
    elif closed:
        n_comp = math.ceil(n / s)
    else:
        n_comp = (n - 1) // s  # complete groups followed by more text
    assert len(lay.compression_index) == n_comp
    assert len(lay) == g + q + n + n_comp + r
    assert lay.input_ids[: g + q] == (IDS.memory,) * (g + q)
    assert [lay.input_ids[i] for i in lay.text_index] == text  # text order preserved
    assert all(lay.input_ids[i] == IDS.compression for i in lay.compression_index)
    assert [lay.input_ids[i] for i in lay.readout_index] == [IDS.first_readout + i for i in range(r)]
    assert lay.readout_index == tuple(range(len(lay) - r, len(lay)))  # readouts at the very end
    assert lay.global_write_index == lay.readout_index
    assert lay.position_ids == tuple(range(len(lay)))
    # every compression token directly follows the last text token of its group
    for k, pos in enumerate(lay.compression_index):
        before = lay.text_index.index(pos - 1)
        assert (before + 1) % s == 0 or (closed and before == n - 1)
        assert before + 1 == min(n, (k + 1) * s)


@settings(max_examples=100, deadline=None)
@given(text=texts, g=st.sampled_from([0, 4]), q=st.integers(0, 9), s=st.integers(1, 9), closed=st.booleans())
def test_compression_tokens_write_the_global_memory(text, g, q, s, closed) -> None:
    """global_from_compression: no readouts; slot i is written from the i-th compression token of a closed chunk."""
    r = 4 if closed else 0
    lay = build_chunk_layout(text, num_global=g, num_temp=q, stride=s, num_readouts=r, closed=closed, ids=IDS,
                             global_from_compression=True)
    plain = build_chunk_layout(text, num_global=g, num_temp=q, stride=s, num_readouts=0, closed=closed, ids=IDS)
    assert lay.input_ids == plain.input_ids  # the layout of a chunk without readouts
    assert lay.readout_index == ()
    assert lay.global_write_index == lay.compression_index[:r]


def test_short_chunks_write_fewer_global_slots() -> None:
    long = build_chunk_layout(list(range(2, 14)), num_global=0, num_temp=0, stride=3, num_readouts=4, closed=True,
                              ids=IDS, global_from_compression=True)
    short = build_chunk_layout(list(range(2, 6)), num_global=4, num_temp=0, stride=3, num_readouts=4, closed=True,
                               ids=IDS, global_from_compression=True)
    open_ = build_chunk_layout([7, 8, 9, 10], num_global=4, num_temp=0, stride=3, num_readouts=0, closed=False,
                               ids=IDS, global_from_compression=True)
    batch = pad_layouts([long, short, open_], IDS.pad)
    assert batch.global_write_valid.tolist() == [[True] * 4, [True, True, False, False], [False] * 4]
    assert batch.writes_global.tolist() == [True, True, False]
    assert batch.any_global_write and batch.partial_global_write
    seq = sequence_layouts([list(range(2, 14)), [5, 6]], num_global=4, fifo_budget=8, stride=3, ids=IDS,
                           last_open=True, global_from_compression=True)
    assert seq[1].num_global == 4  # the first chunk wrote the global memory without readouts


@given(n=st.integers(1, 100), s=st.integers(1, 10))
def test_open_chunk_grows_into_the_closed_layout(n, s) -> None:
    """Appending text to an open chunk never moves what is already laid out (decoding relies on it)."""
    short = compression_after(n, s, closed=False)
    longer = compression_after(n + 1, s, closed=False)
    assert longer[: n - 1] == short[: n - 1]
    assert longer[n - 1] == (n % s == 0)


@given(ids=st.lists(st.integers(0, 50), min_size=1, max_size=40), data=st.data())
def test_shift_labels_before_insertion(ids, data) -> None:
    sup = data.draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
    labels = shift_labels(ids, sup)
    for t in range(len(ids)):
        expect = ids[t + 1] if t + 1 < len(ids) and sup[t + 1] else IGNORE_INDEX
        assert labels[t] == expect
    lay = build_chunk_layout(ids, num_global=4, num_temp=2, stride=3, num_readouts=4, closed=True, ids=IDS)
    spread = layout_labels(lay, labels)
    assert [spread[i] for i in lay.text_index] == labels
    others = set(range(len(lay))) - set(lay.text_index)
    assert all(spread[i] == IGNORE_INDEX for i in others)


@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4))
def test_causal_mask_is_per_chunk_and_masks_padding(lengths) -> None:
    total = max(lengths)
    mask = causal_mask(torch.tensor(lengths), total)
    assert mask.shape == (len(lengths), 1, total, total)
    for b, n in enumerate(lengths):
        m = mask[b, 0]
        assert bool(m.any(-1).all())  # no empty row
        for i in range(total):
            for j in range(total):
                assert bool(m[i, j]) == (j <= i and j < n)


def test_decode_mask_sees_real_cache_and_causal_new_tokens() -> None:
    mask = decode_mask(torch.tensor([3, 5]), 5, 2)[:, 0]
    assert mask.shape == (2, 2, 7)
    assert mask[0, 0].tolist() == [True, True, True, False, False, True, False]
    assert mask[0, 1].tolist() == [True, True, True, False, False, True, True]
    assert mask[1, 0].tolist() == [True] * 5 + [True, False]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_padding_recovers_each_layout(data) -> None:
    n = data.draw(st.integers(1, 4))
    layouts = []
    for _ in range(n):
        text = data.draw(texts)
        q = data.draw(st.integers(0, 6))
        g = data.draw(st.sampled_from([0, 4]))
        layouts.append(build_chunk_layout(text, num_global=g, num_temp=q, stride=3, num_readouts=4, closed=True,
                                          ids=IDS))
    batch = pad_layouts(layouts, IDS.pad)
    for b, lay in enumerate(layouts):
        L = len(lay)
        assert batch.input_ids[b, :L].tolist() == list(lay.input_ids)
        assert (batch.input_ids[b, L:] == IDS.pad).all()
        assert batch.position_ids[b, :L].tolist() == list(range(L))
        assert (batch.position_ids[b, L:] == L).all()  # pads consume no new position
        assert batch.temp_index[b][batch.temp_valid[b]].tolist() == list(range(lay.num_global, lay.num_global + lay.num_temp))
        assert batch.compression_index[b][batch.compression_valid[b]].tolist() == list(lay.compression_index)
        assert batch.text_index[b][batch.text_valid[b]].tolist() == list(lay.text_index)
        assert batch.global_write_index[b].tolist() == list(lay.readout_index)  # readouts write the global memory
        assert bool(batch.writes_global[b])
        assert bool(batch.has_global[b]) == (lay.num_global > 0)


@given(n=st.integers(1, 200), C=st.integers(1, 50))
def test_sequence_plan_tracks_fifo_fill(n, C) -> None:
    chunks = split_into_chunks(list(range(2, n + 2)), C)
    assert sum(chunks, []) == list(range(2, n + 2))
    lays = sequence_layouts(chunks, num_global=4, fifo_budget=7, stride=3, ids=IDS, last_open=True)
    entries = 0
    for c, lay in enumerate(lays):
        assert lay.num_global == (4 if c > 0 else 0)  # first-chunk rule
        assert lay.num_temp == min(7, entries)
        entries += len(lay.compression_index)
    assert lays[-1].readout_index == ()  # the open chunk has no readouts


@given(n=st.integers(1, 300), C=st.integers(1, 40), data=st.data())
def test_key_age_counts_closed_chunks_back_from_the_question(n, C, data) -> None:
    """As the engine cuts a stream: full chunks are closed, the rest is the open chunk's tail."""
    i = data.draw(st.integers(0, n - 1))
    full = [c for c in split_into_chunks(list(range(n)), C) if len(c) == C]
    holding = [k for k, c in enumerate(full) if i in c]
    expected = len(full) - holding[0] if holding else 0
    assert key_age(i, n, C) == expected


def test_key_age_examples_and_bad_arguments() -> None:
    assert [key_age(i, 4096, 1024) for i in (0, 1023, 1024, 3072, 4095)] == [4, 4, 3, 1, 1]
    assert key_age(4096, 4100, 1024) == 0  # in the tail, read as part of the open chunk
    for bad in ((-1, 10, 4), (10, 10, 4)):
        with pytest.raises(ValueError, match="outside a stream of 10 tokens"):
            key_age(*bad)
