"""The CoMeT recurrence: streaming equivalence, batching, layer-major vs chunk-major, wrapper sanity, rules."""

from __future__ import annotations

import random

import pytest
import torch

from comet_agents import CometConfig, CometModel, MemoryState
from comet_agents.engine import MemoryEngine
from comet_agents.layout import pad_layouts, sequence_layouts, split_into_chunks
from comet_agents.modeling import fifo_push
from comet_agents.state import StateMismatchError

from tiny import (
    VOCAB,
    absorb_in_random_pieces,
    assert_training_matches_streaming,
    recall_logits,
    tiny_base,
    tiny_model,
    tokens,
)

ATOL = 1e-5


def assert_same_state(a: MemoryState, b: MemoryState, atol: float = ATOL) -> None:
    assert torch.equal(a.has_global, b.has_global)
    assert torch.equal(a.fifo_len, b.fifo_len)
    assert a.pending == b.pending
    assert torch.equal(a.chunks, b.chunks) and torch.equal(a.tokens_absorbed, b.tokens_absorbed)
    torch.testing.assert_close(a.global_state, b.global_state, atol=atol, rtol=1e-4)
    torch.testing.assert_close(a.fifo, b.fifo, atol=atol, rtol=1e-4)


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def engine(request) -> MemoryEngine:
    return MemoryEngine(tiny_model(request.param), max_batch=4)


def test_streaming_is_independent_of_how_input_is_cut(engine: MemoryEngine) -> None:
    toks = tokens(107)
    one = engine.absorb(engine.new_state(), toks)
    assert int(one.chunks) == 107 // engine.config.chunk_size and len(one.pending[0]) == 107 % 12
    by_token = engine.new_state()
    for t in toks:
        engine.absorb(by_token, [t])
    pieces = absorb_in_random_pieces(engine, toks, seed=1)
    prompt = tokens(9, seed=5)
    ref = recall_logits(engine, one, prompt)
    for other in (by_token, pieces):
        assert_same_state(one, other)
        torch.testing.assert_close(recall_logits(engine, other, prompt), ref, atol=ATOL, rtol=1e-4)


def test_batched_sessions_equal_single_sessions(engine: MemoryEngine) -> None:
    # Different lengths: sessions sit at different FIFO fills and first-chunk states when batched.
    streams = [tokens(n, seed=n) for n in (5, 13, 40, 77, 100)]
    singles = [engine.absorb(engine.new_state(), s) for s in streams]
    batched = [engine.new_state() for _ in streams]
    engine.absorb_many(batched, [s[:20] for s in streams])
    engine.absorb_many(batched, [s[20:] for s in streams])
    prompt = tokens(7, seed=99)
    for single, b in zip(singles, batched):
        assert_same_state(single, b)
        torch.testing.assert_close(recall_logits(engine, b, prompt), recall_logits(engine, single, prompt),
                                   atol=ATOL, rtol=1e-4)


def test_layer_major_training_forward_equals_chunk_major_streaming(engine: MemoryEngine) -> None:
    assert_training_matches_streaming(engine, tokens(12 * 7 + 5, seed=3), tokens(6, seed=4), atol=ATOL)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_chunk_without_memory_features_equals_the_base_model(kind: str, attn: str) -> None:
    base = tiny_base(kind, attn)
    model = CometModel(base, CometConfig(chunk_size=16, global_memory=False, temporary_memory=False, lora_rank=0))
    toks = tokens(16, seed=7)
    layouts = sequence_layouts([toks], num_global=0, fifo_budget=0, stride=0, ids=model.special, last_open=True)
    with torch.no_grad():
        ours = model.forward_train([pad_layouts(layouts, model.special.pad)], return_logits=True)["logits"][0]
        ref = base(torch.tensor([toks])).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_first_chunk_text_logits_equal_base_without_temporary_memory(kind: str) -> None:
    """With s = -1 (no compression tokens), chunk 0's text positions see only text: base logits."""
    base = tiny_base(kind)
    model = CometModel(base, CometConfig(chunk_size=16, num_global_slots=3, temporary_memory=False, lora_rank=0))
    toks = tokens(16, seed=8)
    layouts = sequence_layouts([toks], num_global=3, fifo_budget=0, stride=0, ids=model.special, last_open=False)
    with torch.no_grad():
        ours = model.forward_train([pad_layouts(layouts, model.special.pad)], return_logits=True)["logits"][0]
        ref = base(torch.tensor([toks])).logits
    torch.testing.assert_close(ours[:, list(layouts[0].text_index)], ref, atol=1e-5, rtol=1e-4)


def test_sdpa_and_eager_agree() -> None:
    a = MemoryEngine(tiny_model("llama", "sdpa"))
    b = MemoryEngine(tiny_model("llama", "eager"))
    toks = tokens(60, seed=11)
    sa, sb = a.absorb(a.new_state(), toks), b.absorb(b.new_state(), toks)
    assert_same_state(sa, sb, atol=1e-4)
    assert a.generate(sa, [3, 4, 5], max_new_tokens=12) == b.generate(sb, [3, 4, 5], max_new_tokens=12)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_implicit_causal_attention_equals_the_explicit_mask(kind: str) -> None:
    """SDPA without a mask tensor gives what the padded causal mask gives: training losses, states, recall."""
    explicit = tiny_model(kind)
    explicit.implicit_causal = False
    implicit = tiny_model(kind)
    assert implicit.implicit_causal and implicit.attn_implementation == "sdpa"
    streams = [tokens(n, seed=n) for n in (3, 29, 61, 100)]  # different lengths: padded chunks, empty chunks
    states = []
    for model in (explicit, implicit):
        engine = MemoryEngine(model, max_batch=4)
        batch = [engine.new_state() for _ in streams]
        engine.absorb_many(batch, streams)
        states.append(batch)
    for a, b in zip(*states):
        assert_same_state(a, b)
    prompt = tokens(7, seed=5)
    for a, b in zip(*states):
        torch.testing.assert_close(recall_logits(MemoryEngine(implicit), b, prompt),
                                   recall_logits(MemoryEngine(explicit), a, prompt), atol=ATOL, rtol=1e-4)
    from comet_agents.training.examples import TrainingExample, collate

    C = explicit.config.chunk_size
    examples = []
    for last in (3, C - 2):  # the open chunks differ in length: the second batch of chunks is padded
        ids = [tokens(C, seed=1), tokens(C, seed=2), tokens(last, seed=last)]
        labels = [[-100] * C, [-100] * C, ids[2][1:] + [-100]]
        examples.append(TrainingExample(chunk_texts=ids, chunk_labels=labels,
                                        chunk_weights=[[1.0] * len(x) for x in ids], family="key"))
    batches, weights = collate(examples, explicit)
    assert batches[-1].lengths[0] < batches[-1].lengths[1]
    hidden = implicit.embed(batches[-1].input_ids)
    assert implicit.chunk_context(batches[-1], hidden, torch.zeros(2, dtype=torch.long))["attention_mask"] is None
    assert explicit.chunk_context(batches[-1], hidden, torch.zeros(2, dtype=torch.long))["attention_mask"] is not None
    with torch.no_grad():
        outs = [m.forward_train(batches, loss_weights=weights, return_logits=True) for m in (explicit, implicit)]
    torch.testing.assert_close(outs[1]["loss"], outs[0]["loss"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(outs[1]["global_state"], outs[0]["global_state"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(outs[1]["fifo"], outs[0]["fifo"], atol=ATOL, rtol=1e-4)
    for c, batch in enumerate(batches):  # every real position of every chunk
        real = torch.arange(batch.input_ids.shape[1])[None, :] < batch.lengths[:, None]
        torch.testing.assert_close(outs[1]["logits"][c][real], outs[0]["logits"][c][real], atol=ATOL, rtol=1e-4)


def test_bfloat16_runs_and_stays_close_to_float32() -> None:
    model = tiny_model("llama")
    e32 = MemoryEngine(model)
    s32 = e32.absorb(e32.new_state(), tokens(50))
    model16 = tiny_model("llama").to(torch.bfloat16)
    model16.memory.float()
    model16.special_embeddings.data = model16.special_embeddings.data.float()
    e16 = MemoryEngine(model16)
    s16 = e16.absorb(e16.new_state(), tokens(50))
    assert s16.fifo.dtype == torch.bfloat16 and s16.global_state.dtype == torch.float32
    assert torch.isfinite(s16.global_state).all()
    cos = torch.nn.functional.cosine_similarity(s16.global_state.flatten(), s32.global_state.flatten(), dim=0)
    assert cos > 0.98


# ---- the rules, each with a test that fails if the rule is broken ----------------------------------------------


def test_first_chunk_sets_state_to_the_candidate_whatever_the_gate() -> None:
    """First chunk: S = candidate (no gate). Changing the gate weights must not change S after chunk 0,
    but must change it after chunk 1."""
    toks = tokens(24, seed=2)
    results = []
    for scale in (0.0, 5.0):
        model = tiny_model("llama")
        with torch.no_grad():
            for mem in model.memory:
                mem.global_net.gate.weight.mul_(scale)
        model.invalidate_fingerprint()
        e = MemoryEngine(model)
        s = e.absorb(e.new_state(), toks[:12])
        s1 = s.global_state.clone()
        e.absorb(s, toks[12:])
        results.append((s1, s.global_state.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    assert (results[0][1] - results[1][1]).abs().max() > 1e-3


def test_gated_update_follows_the_formula() -> None:
    """S_c = g * S_old + (1-g) * S_hat, g = sigmoid([S_hat ; S_old] @ w): recomputed here from hooks."""
    model = tiny_model("llama")
    e = MemoryEngine(model)
    toks = tokens(24, seed=4)
    s = e.absorb(e.new_state(), toks[:12])
    old = s.global_state.clone()
    captured = {}
    layer = 1
    net = model.memory[layer].global_net
    handle = net.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("cand", out.detach()))
    e.absorb(s, toks[12:])
    handle.remove()
    cand = captured["cand"][0]
    w = net.gate.weight.detach()[0]
    d = cand.shape[-1]
    g = torch.sigmoid(cand @ w[:d] + old[layer, 0] @ w[d:])[:, None]
    torch.testing.assert_close(s.global_state[layer, 0], g * old[layer, 0] + (1 - g) * cand, atol=1e-6, rtol=1e-5)


def test_no_gate_ablation_replaces_state_by_candidate() -> None:
    gated = MemoryEngine(tiny_model("llama"))
    plain = MemoryEngine(tiny_model("llama", gate=False))
    toks = tokens(36, seed=6)
    sg, sp = gated.absorb(gated.new_state(), toks), plain.absorb(plain.new_state(), toks)
    assert (sg.global_state - sp.global_state).abs().max() > 1e-3


def test_fifo_push_matches_a_list_reference() -> None:
    rng = random.Random(0)
    budget, d = 5, 2
    for _ in range(200):
        bsz = rng.randint(1, 4)
        lens = [rng.randint(0, budget) for _ in range(bsz)]
        nnew = [rng.randint(0, 7) for _ in range(bsz)]
        fifo = torch.zeros(bsz, budget, d)
        ref = []
        for b in range(bsz):
            rows = [[float(100 * b + i), -1.0] for i in range(lens[b])]
            ref.append(rows)
            if rows:
                fifo[b, : lens[b]] = torch.tensor(rows)
        width = max(nnew) or 1
        entries = torch.full((bsz, width, d), 7.0)
        for b in range(bsz):
            for i in range(nnew[b]):
                entries[b, i] = torch.tensor([1000.0 + 10 * b + i, 1.0])
                ref[b].append([1000.0 + 10 * b + i, 1.0])
        out, keep = fifo_push(fifo, torch.tensor(lens), entries, torch.tensor(nnew))
        for b in range(bsz):
            expect = ref[b][-budget:]
            assert int(keep[b]) == len(expect)
            if expect:
                assert out[b, : len(expect)].tolist() == expect  # oldest first, oldest evicted
            assert (out[b, len(expect) :] == 0).all()


def test_fifo_evicts_oldest_in_the_model() -> None:
    """After enough chunks the FIFO is full and holds exactly the newest compression entries."""
    model = tiny_model("llama")
    e = MemoryEngine(model)
    toks = tokens(12 * 4, seed=9)
    s = e.absorb(e.new_state(), toks)
    # 3 compression tokens per 12-token chunk, budget 5: after 4 chunks the FIFO holds the last 5 entries.
    assert int(s.fifo_len) == 5
    captured = []
    net = model.memory[0].temp_net
    handle = net.adapter.register_forward_hook(lambda mod, inp, out: captured.append(out.detach()))
    s2 = e.absorb(e.new_state(), toks)
    handle.remove()
    all_entries = torch.cat([c[0] for c in captured])  # 12 entries in order
    torch.testing.assert_close(s2.fifo[0, 0], all_entries[-5:].to(s2.fifo.dtype), atol=1e-6, rtol=1e-5)


# ---- state handling ---------------------------------------------------------------------------------------------


def test_state_round_trip_is_bit_exact_and_mismatches_are_refused(engine: MemoryEngine) -> None:
    s = engine.absorb(engine.new_state(), tokens(50))
    back = MemoryState.from_bytes(s.to_bytes())
    for name in ("global_state", "has_global", "fifo", "fifo_len", "tokens_absorbed", "chunks"):
        assert torch.equal(getattr(s, name), getattr(back, name)), name
    assert back.pending == s.pending
    engine.absorb(back, tokens(5))  # still usable
    other_cfg = MemoryEngine(tiny_model("llama", fifo_budget=6))
    with pytest.raises(StateMismatchError, match="CometConfig"):
        other_cfg.absorb(MemoryState.from_bytes(s.to_bytes()), tokens(3))
    other_base = MemoryEngine(tiny_model("llama", seed=5))
    with pytest.raises(StateMismatchError, match="base model"):
        other_base.generate(MemoryState.from_bytes(s.to_bytes()), [3])


def test_split_merge_round_trip(engine: MemoryEngine) -> None:
    states = [engine.absorb(engine.new_state(), tokens(n, seed=n)) for n in (3, 30, 70)]
    merged = MemoryState.merge(states)
    assert merged.batch_size == 3
    for a, b in zip(states, merged.split()):
        assert_same_state(a, b, atol=0)
    assert MemoryState.from_bytes(merged.to_bytes()).batch_size == 3


def test_bad_tokens_and_empty_prompt_are_refused(engine: MemoryEngine) -> None:
    s = engine.new_state()
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        engine.absorb(s, [5, VOCAB + 3])
    assert s.pending == [[]]
    with pytest.raises(ValueError, match="nothing to answer"):
        engine.generate(s, [])


def test_state_size_is_constant(engine: MemoryEngine) -> None:
    s = engine.new_state()
    size0 = s.nbytes() - 0
    engine.absorb(s, tokens(12 * 20))
    assert s.nbytes() == size0  # no pending tokens left, all tensors fixed-size


def test_adapter_save_load_round_trip(tmp_path) -> None:
    model = tiny_model("llama", lora_rank=4)
    model.save_pretrained(tmp_path)
    fresh = CometModel(tiny_base("llama"), model.config, base_fingerprint=model.base_fingerprint)
    assert fresh.adapter_fingerprint != model.adapter_fingerprint
    from safetensors.torch import load_file

    fresh.load_adapter_state_dict(load_file(tmp_path / "comet_adapter.safetensors"))
    assert fresh.adapter_fingerprint == model.adapter_fingerprint
    e1, e2 = MemoryEngine(model), MemoryEngine(fresh)
    toks = tokens(40)
    torch.testing.assert_close(e1.absorb(e1.new_state(), toks).global_state,
                               e2.absorb(e2.new_state(), toks).global_state, atol=0, rtol=0)


def test_ship_tool_copies_the_adapter_with_its_note_and_refuses_an_oversized_one(tmp_path) -> None:
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ship_adapter", Path(__file__).resolve().parents[1] / "tools" / "ship_adapter.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "ckpt")
    dest = tool.ship(tmp_path / "ckpt", "Preview.", tmp_path / "weights")
    shipped, saved = dest / "comet_adapter.safetensors", tmp_path / "ckpt" / "comet_adapter.safetensors"
    assert shipped.read_bytes() == saved.read_bytes()
    assert json.loads((dest / "comet_config.json").read_text())["meta"]["note"] == "Preview."
    assert CometConfig.load(dest)[0] == model.config
    tool.ship(tmp_path / "ckpt", "", dest)
    assert "note" not in json.loads((dest / "comet_config.json").read_text())["meta"]
    with open(tmp_path / "ckpt" / "comet_adapter.safetensors", "r+b") as f:
        f.truncate(tool.LIMIT)
    with pytest.raises(ValueError, match="must stay under 24 MiB"):
        tool.ship(tmp_path / "ckpt", "x", tmp_path / "other")
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError):
        tool.ship(tmp_path / "nothing", "x", tmp_path / "other")


def test_unsupported_backbone_is_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="supports decoder models of type llama, qwen2, qwen3, mistral"):
        CometModel(base)


# ---- where memory is written from, and the memory LoRA -------------------------------------------------------


@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16])
def test_row_low_rank_matches_the_autograd_expression(act_dtype: torch.dtype) -> None:
    """Two LoRAs of one Linear at disjoint row masks (the memory and the reader LoRA), applied together by
    ``add_row_low_rank`` with its hand-written backward and ``row_weights``, give the values and gradients of the plain autograd
    expression (each part at its rows, float32 weights, activations in float32 or bfloat16 as in GPU
    training), and the rows of neither mask keep their output exactly."""
    from comet_agents.modeling import add_row_low_rank, row_weights

    g = torch.Generator().manual_seed(3)
    n, d_in, d_out = 20, 12, 8
    masks = [torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]
    masks[0][[0, 3, 4]] = True
    masks[1][[7, 8, 9, 15, 19]] = True
    leaves = {
        "out": torch.randn(n, d_out, generator=g).to(act_dtype),
        "x": torch.randn(n, d_in, generator=g).to(act_dtype),
        "down0": torch.randn(4, d_in, generator=g), "up0": torch.randn(d_out, 4, generator=g),
        "down1": torch.randn(2, d_in, generator=g), "up1": torch.randn(d_out, 2, generator=g),
    }
    scales = [2.0, 0.5]
    grad_out = torch.randn(n, d_out, generator=g).to(act_dtype)
    results = []
    for fused in (False, True):
        t = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        if fused:
            weight = row_weights([(t[f"down{i}"].shape[0], scales[i], masks[i]) for i in (0, 1)], act_dtype)
            y = add_row_low_rank(t["out"], t["x"], [t["down0"], t["down1"]], [t["up0"], t["up1"]], weight)
        else:
            y = t["out"]
            for i in (0, 1):
                rows = masks[i].nonzero().squeeze(1)
                delta = (t["x"].index_select(0, rows).float() @ t[f"down{i}"].t() @ t[f"up{i}"].t()) * scales[i]
                y = y.index_add(0, rows, delta.to(act_dtype))
        y.backward(grad_out)
        results.append((y.detach(), {k: v.grad for k, v in t.items()}))
    (y_ref, g_ref), (y_new, g_new) = results

    def close(new: torch.Tensor, ref: torch.Tensor) -> None:
        if act_dtype == torch.float32:
            torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5)
        else:  # products in bfloat16 (the reference: float32): a few units in the last place of the largest value
            torch.testing.assert_close(new.float(), ref.float(), rtol=0, atol=float(ref.abs().max()) * 2**-6)

    close(y_new, y_ref)
    neither = ~(masks[0] | masks[1])
    assert torch.equal(y_new[neither], leaves["out"][neither])
    for k in leaves:
        assert g_new[k].dtype == leaves[k].dtype
        close(g_new[k], g_ref[k])
    assert (g_new["x"][neither] == 0).all() and g_new["x"][~neither].abs().sum(1).gt(0).all()


def test_memory_lora_acts_only_at_added_token_positions() -> None:
    """Text tokens before the first added token see the backbone alone; the first compression token (and every
    text token after it, which attends to it) sees the memory LoRA."""
    model = tiny_model("llama")
    plain = tiny_model("llama")
    with torch.no_grad():
        for lora in plain.memory_lora:
            for lin in lora.up.values():
                lin.weight.zero_()
    cfg = model.config
    toks = tokens(10, seed=5)
    layouts = sequence_layouts([toks], num_global=cfg.m, fifo_budget=cfg.fifo, stride=cfg.stride,
                               ids=model.special, last_open=False)
    batch = [pad_layouts(layouts, model.special.pad)]
    with torch.no_grad():
        a = model.forward_train(batch, return_logits=True)["logits"][0][0]
        b = plain.forward_train(batch, return_logits=True)["logits"][0][0]
    text = layouts[0].text_index
    first_comp = layouts[0].compression_index[0]
    before = [i for i in text if i < first_comp]
    after = [i for i in text if i > first_comp]
    assert len(before) == cfg.stride and after
    torch.testing.assert_close(a[before], b[before], atol=0, rtol=0)
    assert (a[after] - b[after]).abs().max() > 1e-3


def _without_reader(**overrides) -> CometModel:
    """``tiny_model("llama", **overrides)`` with its reader LoRA adding nothing (``up`` at zero, as a new one
    starts)."""
    plain = tiny_model("llama", **overrides)
    with torch.no_grad():
        for lora in plain.reader_lora:
            for lin in lora.up.values():
                lin.weight.zero_()
    plain.invalidate_fingerprint()
    return plain


def test_reader_lora_acts_only_in_chunks_that_have_memory() -> None:
    """A chat that fits one chunk (empty memory) and a stream's first chunk run without it: the same logits and
    the same first-chunk memory as with the reader LoRA at zero. Once memory exists, the chunks that read it
    (and so what they write, and what recall answers) change."""
    model = tiny_model("llama", reader_lora_rank=2)
    plain = _without_reader(reader_lora_rank=2)
    with_reader, without = MemoryEngine(model), MemoryEngine(plain)
    prompt = tokens(9, seed=21)
    torch.testing.assert_close(recall_logits(with_reader, with_reader.new_state(), prompt),
                               recall_logits(without, without.new_state(), prompt), atol=0, rtol=0)
    first = tokens(12, seed=22)
    a, b = with_reader.absorb(with_reader.new_state(), first), without.absorb(without.new_state(), first)
    torch.testing.assert_close(a.fifo, b.fifo, atol=0, rtol=0)
    assert (recall_logits(with_reader, a, prompt) - recall_logits(without, b, prompt)).abs().max() > 1e-3
    more = tokens(12, seed=23)
    with_reader.absorb(a, more)
    without.absorb(b, more)
    assert (a.fifo - b.fifo).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_reader_lora_keeps_training_streaming_and_decoding_equal(kind: str) -> None:
    """Layer-major training computes what streaming computes with the reader LoRA too, and greedy decoding runs
    it at each new token exactly as a prefill of the longer prompt does."""
    engine = MemoryEngine(tiny_model(kind, reader_lora_rank=2, chunk_overlap=3))
    assert_training_matches_streaming(engine, tokens(12 * 6 + 5, seed=24), tokens(6, seed=25), atol=ATOL)
    state = engine.absorb(engine.new_state(), tokens(30, seed=26))
    prompt = tokens(5, seed=27)
    out = engine.generate(state, prompt, max_new_tokens=7, stop_ids=[])
    for k in range(len(out)):
        assert int(recall_logits(engine, state, prompt + out[:k]).argmax()) == out[k]


def test_reader_lora_round_trips_and_a_mismatched_adapter_is_refused(tmp_path) -> None:
    from safetensors.torch import load_file

    model = tiny_model("llama", reader_lora_rank=2)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "comet_adapter.safetensors")
    assert any(k.startswith("reader_lora.") for k in saved)
    fresh = CometModel(tiny_base("llama"), model.config, base_fingerprint=model.base_fingerprint)
    fresh.load_adapter_state_dict(saved)
    assert fresh.adapter_fingerprint == model.adapter_fingerprint
    assert model.describe()["reader_lora_parameters"] == sum(p.numel() for p in model.reader_lora.parameters())
    without = CometModel(tiny_base("llama"), tiny_model("llama").config, base_fingerprint=model.base_fingerprint)
    with pytest.raises(ValueError, match="reader-lora weights but its config has reader_lora_rank 0"):
        without.load_adapter_state_dict(saved)
    with pytest.raises(ValueError, match="reader_lora_rank must be >= 0"):
        CometConfig(reader_lora_rank=-1)
    with pytest.raises(ValueError, match=r"reader_lora_targets \['nope'\] are not Linear modules"):
        tiny_model("llama", reader_lora_rank=2, reader_lora_targets=("nope",))


@pytest.mark.parametrize("open_compression", [False, True])
def test_decode_steps_equal_prefill_of_the_longer_prompt(open_compression: bool) -> None:
    """Greedy decoding picks what a prefill of prompt + answer so far picks; with open-chunk compression its
    [<beacon>, token] steps run the compression tokens through the memory LoRA exactly as prefill does."""
    engine = MemoryEngine(tiny_model("llama", open_chunk_compression=open_compression))
    state = engine.absorb(engine.new_state(), tokens(30, seed=8))
    prompt = tokens(5, seed=9)
    out = engine.generate(state, prompt, max_new_tokens=9, stop_ids=[])
    assert len(out) == 9
    for k in range(len(out)):
        assert int(recall_logits(engine, state, prompt + out[:k]).argmax()) == out[k]


def test_open_chunk_without_compression_and_empty_memory_is_the_base_model() -> None:
    """Default config: with nothing absorbed, answering runs the base model on the prompt alone."""
    model = tiny_model("llama")
    engine = MemoryEngine(model)
    prompt = tokens(21, seed=12)
    logits = recall_logits(engine, engine.new_state(), prompt)
    with torch.no_grad():
        base = model.backbone(input_ids=torch.tensor([prompt])).logits[:, -1]
    torch.testing.assert_close(logits, base, atol=ATOL, rtol=1e-4)
    batch, _, _ = engine.open_chunk(engine.new_state(), prompt)
    assert not bool(model.is_added_token(batch.input_ids).any())


@pytest.mark.parametrize("source", ["input", "output"])
def test_layer_major_equals_chunk_major_for_both_memory_sources(source: str) -> None:
    engine = MemoryEngine(tiny_model("qwen3", memory_source=source))
    model, cfg = engine.model, engine.config
    toks = tokens(12 * 4 + 3, seed=11)
    streamed = engine.absorb(engine.new_state(), toks)
    layouts = sequence_layouts(split_into_chunks(toks[: 12 * 4], cfg.chunk_size), num_global=cfg.m,
                               fifo_budget=cfg.fifo, stride=cfg.stride, ids=model.special, last_open=False)
    with torch.no_grad():
        out = model.forward_train([pad_layouts([lay], model.special.pad) for lay in layouts])
    torch.testing.assert_close(out["global_state"], streamed.global_state, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out["fifo"], streamed.fifo, atol=ATOL, rtol=1e-4)


def test_memory_source_decides_what_is_written() -> None:
    """Layer 0 written from its input holds the compression token's embedding: the same for any text."""
    states = {}
    for source in ("input", "output"):
        engine = MemoryEngine(tiny_model("llama", memory_source=source))
        states[source] = [engine.absorb(engine.new_state(), tokens(12, seed=s)) for s in (1, 2)]
    inp, outp = states["input"], states["output"]
    torch.testing.assert_close(inp[0].fifo[0, :, :3], inp[1].fifo[0, :, :3], atol=0, rtol=0)
    assert (outp[0].fifo[0, :, :3] - outp[1].fifo[0, :, :3]).abs().max() > 1e-3
    assert (inp[0].fifo[1:] - inp[1].fifo[1:]).abs().max() > 1e-3


def test_forwards_in_two_threads_do_not_share_the_memory_lora_rows() -> None:
    """The added-token rows are per thread: concurrent absorbs of differently shaped batches on one model give
    what they give alone (within float tolerance: threads may split the matrix products differently)."""
    import threading

    engine = MemoryEngine(tiny_model("llama"), max_batch=4)
    streams = [tokens(12 * 6, seed=s) for s in range(3)]
    alone_single = engine.absorb(engine.new_state(), streams[0])
    alone_pair = [engine.new_state(), engine.new_state()]
    engine.absorb_many(alone_pair, streams[1:])
    results: dict[str, object] = {}

    def single() -> None:
        for i in range(4):
            results[f"single{i}"] = engine.absorb(engine.new_state(), streams[0])

    def pair() -> None:
        for i in range(4):
            states = [engine.new_state(), engine.new_state()]
            engine.absorb_many(states, streams[1:])
            results[f"pair{i}"] = states

    threads = [threading.Thread(target=single), threading.Thread(target=pair)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert_same_state(results[f"single{i}"], alone_single)
        for got, want in zip(results[f"pair{i}"], alone_pair):
            assert_same_state(got, want)


def test_memory_tier_follows_the_fifo_reach() -> None:
    """Default layout: 128 compression entries per chunk and a 512-entry FIFO hold the last 4 closed chunks;
    anything older only the global memory can carry."""
    cfg = CometConfig()
    assert cfg.fifo_reach_chunks == 4
    assert [cfg.memory_tier(a) for a in (0, 1, 4, 5, 16)] == ["open", "fifo", "fifo", "global", "global"]
    assert CometConfig(fifo_budget=500).fifo_reach_chunks == 3  # a chunk partly evicted is no longer "fifo"
    no_fifo = CometConfig(temporary_memory=False)
    assert no_fifo.fifo_reach_chunks == 0 and no_fifo.memory_tier(1) == "global"
    with pytest.raises(ValueError, match="key_age must be >= 0"):
        cfg.memory_tier(-1)


def assert_streaming_equals_training(engine: MemoryEngine, toks: list[int], **layout_rule: bool) -> None:
    """Absorbing ``toks`` chunk by chunk leaves the state the layer-major training forward computes over its
    closed chunks (laid out with ``layout_rule``, the writer's flag for :func:`sequence_layouts`)."""
    model, cfg = engine.model, engine.config
    streamed = engine.absorb(engine.new_state(), toks)
    closed = len(toks) // cfg.chunk_size * cfg.chunk_size
    layouts = sequence_layouts(split_into_chunks(toks[:closed], cfg.chunk_size), num_global=cfg.m,
                               fifo_budget=cfg.fifo, stride=cfg.stride, ids=model.special, last_open=False,
                               **layout_rule)
    with torch.no_grad():
        out = model.forward_train([pad_layouts([lay], model.special.pad) for lay in layouts])
    torch.testing.assert_close(out["global_state"], streamed.global_state, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(out["fifo"], streamed.fifo, atol=ATOL, rtol=1e-4)


def test_global_memory_from_compression_tokens() -> None:
    """global_source="compression": no readouts are laid out, slot i of the first chunk's state is RMSNorm_g of
    the i-th compression token's layer input, streaming equals the training forward, and the state means
    something else than under readouts (another fingerprint); the readout default keeps its old fingerprint."""
    engine = MemoryEngine(tiny_model("qwen3", global_source="compression"))
    model, cfg = engine.model, engine.config
    assert cfg.num_readouts == 0 and cfg.steady_layout_len() == CometConfig(**{
        **cfg.to_dict(), "global_source": "readouts"}).steady_layout_len() - cfg.m
    toks = tokens(12 * 4 + 3, seed=11)
    inputs = {}
    layer = 2
    def grab(mod, args, kwargs) -> None:
        inputs.setdefault("x", (args[0] if args else kwargs["hidden_states"]).detach())

    handle = model.inner.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    first = engine.absorb(engine.new_state(), toks[:12])
    handle.remove()
    batch = engine.chunk_layout(engine.new_state(), 0, toks[:12], closed=True)
    assert batch.readout_index == () and len(batch.global_write_index) == cfg.m
    assert not bool(model.is_added_token(torch.tensor([batch.input_ids])).sum() - len(batch.compression_index))
    with torch.no_grad():
        want = model.memory[layer].global_net.norm(inputs["x"][0, list(batch.global_write_index)].float())
    torch.testing.assert_close(first.global_state[layer, 0], want, atol=1e-5, rtol=1e-4)

    assert_streaming_equals_training(engine, toks, global_from_compression=True)
    readouts = tiny_model("qwen3").config
    assert cfg.fingerprint() != readouts.fingerprint()
    assert "global_source" not in readouts.state_fields()


def test_global_memory_from_evicted_fifo_entries() -> None:
    """global_source="evicted": nothing reaches the global memory until the FIFO overflows; then each slot is
    first written with exactly the FIFO entry its push evicted (so the global memory holds what the FIFO no
    longer shows, read the way the FIFO is read), later mixed by the gate; streaming equals the training
    forward, and the global net is the gate alone."""
    engine = MemoryEngine(tiny_model("llama", global_source="evicted", fifo_budget=6))
    model, cfg = engine.model, engine.config
    assert cfg.num_readouts == 0 and model.memory[0].global_net.adapter is None
    assert cfg.stride == 4 and cfg.m == 3  # 3 entries a chunk, a FIFO of 2 chunks
    toks = tokens(12 * 5 + 3, seed=12)
    state = engine.new_state()
    for c in range(5):
        before_fifo, before_global = state.fifo.clone(), state.global_state.clone()
        lay = engine.chunk_layout(state, 0, toks[12 * c: 12 * (c + 1)], closed=True)
        assert lay.readout_index == () and lay.num_global == (cfg.m if c >= 3 else 0)
        assert lay.global_write_index == ((0, 1, 2) if c >= 2 else ())
        engine.absorb(state, toks[12 * c: 12 * (c + 1)])
        assert bool(state.has_global[0]) == (c >= 2)
        if c == 2:  # the first eviction: the oldest chunk's entries, exactly
            torch.testing.assert_close(state.global_state[:, 0], before_fifo[:, 0, :3].float(), atol=0, rtol=0)
        elif c > 2:  # later ones mixed in by the gate: neither the old state nor the evicted entries alone
            assert not torch.equal(state.global_state, before_global)
            assert not torch.equal(state.global_state[:, 0], before_fifo[:, 0, :3].float())
        else:
            assert not state.global_state.any()

    assert_streaming_equals_training(engine, toks, global_from_fifo=True)
    assert cfg.fingerprint() != tiny_model("llama", global_source="compression").config.fingerprint()


def test_global_from_evicted_needs_a_slot_and_a_fifo_row_for_every_entry() -> None:
    with pytest.raises(ValueError, match="needs temporary_memory"):
        CometConfig(global_source="evicted", temporary_memory=False)
    with pytest.raises(ValueError, match=r"must be at least ceil\(chunk_size / compression_stride\) \(128\)"):
        CometConfig(global_source="evicted", num_global_slots=127)
    for budget in (100, 600):
        with pytest.raises(ValueError, match=rf"fifo_budget \({budget}\) to be a whole number of chunks' entries"):
            CometConfig(global_source="evicted", fifo_budget=budget)
    assert CometConfig(global_source="evicted").num_readouts == 0


def test_global_from_compression_needs_compression_tokens_for_every_slot() -> None:
    with pytest.raises(ValueError, match="needs temporary_memory"):
        CometConfig(global_source="compression", temporary_memory=False)
    with pytest.raises(ValueError, match=r"must not exceed ceil\(chunk_size / compression_stride\) \(128\)"):
        CometConfig(global_source="compression", num_global_slots=129)
    with pytest.raises(ValueError, match="global_source must be one of readouts, compression"):
        CometConfig(global_source="tokens")
    assert CometConfig(global_source="compression").num_readouts == 0
