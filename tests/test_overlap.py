"""Chunk overlap (``CometConfig.chunk_overlap``): layout, state, streaming equivalence, persistence."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from comet_agents import CometConfig, MemoryState
from comet_agents.engine import MemoryEngine
from comet_agents.evaluation import truncation_budget
from comet_agents.layout import (
    IGNORE_INDEX,
    SpecialIds,
    build_chunk_layout,
    layout_labels,
    overlap_context,
    sequence_layouts,
    split_into_chunks,
)
from comet_agents.state import read_safetensors_metadata

from tiny import (
    VOCAB,
    absorb_in_random_pieces,
    assert_training_matches_streaming,
    recall_logits,
    tiny_model,
    tokens,
)

IDS = SpecialIds(memory=90, first_readout=91, compression=95, pad=1)
K = 5
ATOL = 1e-5


@pytest.fixture(scope="module", params=[("llama", "readouts"), ("qwen3", "evicted")], ids=["llama", "qwen3-evicted"])
def engine(request) -> MemoryEngine:
    kind, source = request.param
    return MemoryEngine(tiny_model(kind, chunk_overlap=K, global_source=source, fifo_budget=6), max_batch=4)


# ---- config and layout ----------------------------------------------------------------------------------------


def test_config_validates_overlap_and_keeps_old_fingerprints() -> None:
    for bad in (-1, 13):
        with pytest.raises(ValueError, match="chunk_overlap must be between 0 and chunk_size"):
            CometConfig(chunk_size=12, chunk_overlap=bad)
    plain = CometConfig()
    assert "chunk_overlap" not in plain.state_fields()  # states made before the field existed stay loadable
    with_overlap = CometConfig(chunk_overlap=128)
    assert with_overlap.fingerprint() != plain.fingerprint()
    assert with_overlap.steady_layout_len() == plain.steady_layout_len() + 128
    assert CometConfig.from_dict(with_overlap.to_dict()) == with_overlap
    assert truncation_budget(with_overlap) == truncation_budget(plain) + 128


def test_overlap_tokens_sit_after_the_slots_as_plain_text() -> None:
    context, text = [40, 41, 42], [10, 11, 12, 13, 14]
    lay = build_chunk_layout(text, num_global=2, num_temp=3, stride=2, num_readouts=0, closed=True, ids=IDS,
                             context_ids=context)
    assert lay.input_ids[:5] == (IDS.memory,) * 5
    assert lay.input_ids[5:8] == tuple(context) and lay.num_context == 3
    # The chunk's own text follows, with its compression tokens; the overlap gets none.
    assert [lay.input_ids[i] for i in lay.text_index] == text
    assert lay.text_index[0] == 8 and min(lay.compression_index) > 8
    assert len(lay.compression_index) == 3  # groups of 2 over the 5 text tokens only
    labels = layout_labels(lay, [7, 7, 7, 7, 7])
    assert all(labels[i] == IGNORE_INDEX for i in range(8))
    # Without overlap tokens, the same layout as before shifted by nothing.
    plain = build_chunk_layout(text, num_global=2, num_temp=3, stride=2, num_readouts=0, closed=True, ids=IDS)
    assert plain.num_context == 0 and plain.input_ids == lay.input_ids[:5] + lay.input_ids[8:]


def test_overlap_context_is_the_last_k_stream_tokens() -> None:
    assert overlap_context([1, 2, 3], [4, 5, 6, 7], 0) == []
    assert overlap_context([1, 2, 3], [4, 5, 6, 7], 3) == [5, 6, 7]
    assert overlap_context([1, 2, 3], [4], 3) == [2, 3, 4]  # a short chunk keeps part of what came before
    assert overlap_context([], [4], 3) == [4]


def test_sequence_layouts_reread_the_tokens_before_each_chunk() -> None:
    stream = tokens(12 * 3 + 4, seed=1)
    chunks = split_into_chunks(stream, 12)
    lays = sequence_layouts(chunks, num_global=3, fifo_budget=6, stride=4, ids=IDS, last_open=True, overlap=K)
    assert lays[0].num_context == 0
    for c in range(1, len(chunks)):
        start = lays[c].num_global + lays[c].num_temp
        assert list(lays[c].input_ids[start : start + K]) == stream[12 * c - K : 12 * c]
        assert [lays[c].input_ids[i] for i in lays[c].text_index] == chunks[c]
    without = sequence_layouts(chunks, num_global=3, fifo_budget=6, stride=4, ids=IDS, last_open=True)
    assert all(lay.num_context == 0 for lay in without)
    assert [len(a) - len(b) for a, b in zip(lays, without)] == [0, K, K, K]


# ---- streaming ---------------------------------------------------------------------------------------------------


def test_state_keeps_the_last_k_absorbed_tokens(engine: MemoryEngine) -> None:
    toks = tokens(30, seed=2)
    state = engine.absorb(engine.new_state(), toks)
    assert int(state.chunks) == 2 and state.pending[0] == toks[24:]
    assert state.context[0] == toks[24 - K : 24]
    assert int(state.tokens_absorbed[0]) == 24  # overlap tokens are not counted twice
    engine.flush(state)  # a short closed chunk of 6: the last K of everything absorbed
    assert state.context[0] == toks[30 - K :] and int(state.tokens_absorbed[0]) == 30


def test_streaming_with_overlap_is_independent_of_how_input_is_cut(engine: MemoryEngine) -> None:
    toks = tokens(107, seed=3)
    one = engine.absorb(engine.new_state(), toks)
    pieces = absorb_in_random_pieces(engine, toks, seed=4)
    assert pieces.context == one.context and pieces.pending == one.pending
    torch.testing.assert_close(pieces.fifo, one.fifo, atol=ATOL, rtol=1e-4)
    prompt = tokens(9, seed=5)
    torch.testing.assert_close(recall_logits(engine, pieces, prompt), recall_logits(engine, one, prompt),
                               atol=ATOL, rtol=1e-4)


def test_batched_sessions_with_overlap_equal_single_sessions(engine: MemoryEngine) -> None:
    streams = [tokens(n, seed=n) for n in (5, 13, 40, 77)]
    singles = [engine.absorb(engine.new_state(), s) for s in streams]
    batched = [engine.new_state() for _ in streams]
    engine.absorb_many(batched, streams)
    prompt = tokens(7, seed=99)
    for single, b in zip(singles, batched):
        assert single.context == b.context
        torch.testing.assert_close(recall_logits(engine, b, prompt), recall_logits(engine, single, prompt),
                                   atol=ATOL, rtol=1e-4)


def test_training_layout_with_overlap_equals_streaming(engine: MemoryEngine) -> None:
    """Layer-major training over sequence_layouts(overlap=K) computes what chunk-major streaming computes."""
    assert_training_matches_streaming(engine, tokens(12 * 7 + 5, seed=6), tokens(6, seed=7), atol=ATOL)


def test_the_open_chunk_reads_the_overlap(engine: MemoryEngine) -> None:
    """The overlap reaches the answer: other tokens in the last K absorbed positions change the recall logits
    even though memory would otherwise see the same chunk count."""
    toks = tokens(24, seed=8)
    a = engine.absorb(engine.new_state(), toks)
    b = a.clone()
    b.context = [[(t + 1) % (VOCAB - 2) + 2 for t in a.context[0]]]
    prompt = tokens(5, seed=9)
    assert not torch.allclose(recall_logits(engine, a, prompt), recall_logits(engine, b, prompt))
    batch, length, n_text = engine.open_chunk(a, prompt)
    assert n_text == len(prompt) and length == int(a.fifo_len[0]) + (engine.config.m if bool(a.has_global[0]) else 0) \
        + K + len(prompt)


def test_prompt_limit_counts_the_overlap(engine: MemoryEngine) -> None:
    state = engine.absorb(engine.new_state(), tokens(24, seed=10))
    limit = engine.max_context_positions
    slots = int(state.fifo_len[0]) + (engine.config.m if bool(state.has_global[0]) else 0)
    fits = limit - slots - K
    engine.check_fits(state, fits - 4, 4)
    with pytest.raises(ValueError, match=r"overlap 5"):
        engine.check_fits(state, fits - 3, 4)


# ---- persistence -------------------------------------------------------------------------------------------------


def test_overlap_tokens_survive_serialisation(engine: MemoryEngine) -> None:
    states = [engine.absorb(engine.new_state(), tokens(n, seed=n)) for n in (7, 30)]
    merged = MemoryState.merge(states)
    back = MemoryState.from_bytes(merged.to_bytes())
    assert back.context == [[], states[1].context[0]] and back.pending == merged.pending
    assert [s.context for s in back.split()] == [s.context for s in states]


def test_blobs_without_overlap_tokens_still_load(engine: MemoryEngine) -> None:
    """Blobs written before the overlap existed have no context tensors: they load with empty contexts."""
    blob = engine.new_state().to_bytes()
    tensors = {k: v for k, v in st_load(blob).items() if k not in ("context", "context_len")}
    old = st_save(tensors, metadata=read_safetensors_metadata(blob))
    assert MemoryState.from_bytes(old).context == [[]]


def test_damaged_overlap_counts_are_refused(engine: MemoryEngine) -> None:
    from comet_agents.state import CorruptStateError

    blob = engine.absorb(engine.new_state(), tokens(30, seed=11)).to_bytes()
    tensors = dict(st_load(blob))
    tensors["context_len"] = torch.tensor([K + 2])
    with pytest.raises(CorruptStateError, match="context token counts do not add up"):
        MemoryState.from_bytes(st_save(tensors, metadata=read_safetensors_metadata(blob)))
