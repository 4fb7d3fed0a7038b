"""Smoke training on a tiny random model: the loss falls, and a resumed run continues exactly."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch

from comet_agents.training.examples import TrainingExample
from comet_agents.training.trainer import TrainArgs, train

from tiny import VOCAB, tiny_model

C = 12


def key_recall_batch(step: int, micro: int) -> list[TrainingExample]:
    """A key token at the start of a 3-chunk stream must be repeated after a fixed question token."""
    rng = random.Random(f"{step}/{micro}")
    out = []
    for _ in range(2):
        key = rng.randrange(2, 12)
        stream = [key] + [rng.randrange(20, VOCAB) for _ in range(2 * C - 1)]
        final = [rng.randrange(20, VOCAB) for _ in range(5)] + [13, 14, key, 15, 16, 17]
        ids = stream + final
        labels = [-100] * len(ids)
        for t in range(len(ids) - 6, len(ids) - 1):  # 13 -> 14 -> key -> 15 -> 16 -> 17
            labels[t] = ids[t + 1]
        weights = [1.0 if lab != -100 else 0.0 for lab in labels]
        cut = [0, C, 2 * C, len(ids)]
        out.append(TrainingExample(
            chunk_texts=[ids[a:b] for a, b in zip(cut, cut[1:])],
            chunk_labels=[labels[a:b] for a, b in zip(cut, cut[1:])],
            chunk_weights=[weights[a:b] for a, b in zip(cut, cut[1:])],
            family="key",
        ))
    return out


def args_for(tmp_path, steps: int) -> TrainArgs:
    return TrainArgs(output_dir=str(tmp_path), steps=steps, lr=3e-2, warmup_steps=1, save_every=3, log_every=100,
                     smoke=True, num_workers=0)


def test_smoke_training_reduces_loss(tmp_path) -> None:
    model = tiny_model("llama", lora_rank=4)
    result = train(args_for(tmp_path, 12), model=model, sample_fn=key_recall_batch, log=lambda s: None)
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert (tmp_path / "checkpoint" / "comet_adapter.safetensors").exists()


def test_profile_steps_log_the_top_operators_and_leave_training_alone(tmp_path) -> None:
    """``profile_steps`` logs where the profiled steps' time went, and the run's losses are those without it."""
    import dataclasses

    lines: list[str] = []
    args = args_for(tmp_path / "p", 6)
    profiled = train(dataclasses.replace(args, profile_steps=2), model=tiny_model("llama", lora_rank=4),
                     sample_fn=key_recall_batch, log=lines.append)
    plain = train(args_for(tmp_path / "q", 6), model=tiny_model("llama", lora_rank=4), sample_fn=key_recall_batch,
                  log=lambda s: None)
    assert [h["loss"] for h in profiled["history"]] == [h["loss"] for h in plain["history"]]
    head = [line for line in lines if line.startswith("profile: ")]
    assert len(head) == 1 and head[0].startswith("profile: 2 steps in ") and "CPU busy" in head[0], lines
    table = lines[lines.index(head[0]) + 1]
    assert "Self CPU" in table and "aten::" in table
    with pytest.raises(ValueError, match="profile_steps"):
        dataclasses.replace(args, profile_steps=-1)
    cut: list[str] = []  # a run that ends first reports the steps it profiled
    train(dataclasses.replace(args_for(tmp_path / "r", 6), profile_steps=10), model=tiny_model("llama", lora_rank=4),
          sample_fn=key_recall_batch, log=cut.append)
    assert [line for line in cut if line.startswith("profile: ")][0].startswith("profile: 3 steps in "), cut


def test_smoke_training_with_chunk_overlap_learns_and_records_it(tmp_path) -> None:
    model = tiny_model("llama", lora_rank=4, chunk_overlap=4)
    result = train(args_for(tmp_path, 12), model=model, sample_fn=key_recall_batch, log=lambda s: None)
    losses = [h["loss"] for h in result["history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    saved = json.loads((tmp_path / "checkpoint" / "comet_config.json").read_text())
    assert saved["comet"]["chunk_overlap"] == 4


def test_resume_gives_the_identical_next_step_loss(tmp_path) -> None:
    full = train(args_for(tmp_path / "a", 6), model=tiny_model("llama", lora_rank=4), sample_fn=key_recall_batch,
                 log=lambda s: None)

    def crash_after_three(step: int, micro: int):
        if step >= 3:
            raise KeyboardInterrupt("simulated crash")
        return key_recall_batch(step, micro)

    with pytest.raises(KeyboardInterrupt):
        train(args_for(tmp_path / "b", 6), model=tiny_model("llama", lora_rank=4), sample_fn=crash_after_three,
              log=lambda s: None)
    resumed = train(args_for(tmp_path / "b", 6), model=tiny_model("llama", lora_rank=4),
                    sample_fn=key_recall_batch, log=lambda s: None)
    a = [h["loss"] for h in full["history"]]
    b = [h["loss"] for h in resumed["history"]]
    assert len(b) == 6
    assert b[:3] == a[:3]
    assert b[3] == a[3]  # the first step after resuming, bit for bit


def test_training_refuses_cpu_without_smoke(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    args = args_for(tmp_path, 2)
    args.smoke = False
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        train(args, model=tiny_model("llama"), sample_fn=key_recall_batch)


@pytest.mark.parametrize("embeddings_train", [True, False])
def test_activation_checkpointing_gives_the_plain_gradients(embeddings_train: bool) -> None:
    """Recomputation must not change the loss or any gradient: with trainable added-token embeddings (hidden
    states require grad: the reentrant path) and with them frozen (no input requires grad: non-reentrant)."""
    from comet_agents.training.examples import collate

    model = tiny_model("llama", lora_rank=4, memory_lora_rank=4)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(model.memory.parameters()) + list(model.memory_lora.parameters())
    trainable += [p for n, p in model.backbone.named_parameters() if "lora_" in n]
    if embeddings_train:
        trainable.append(model.special_embeddings)
    for p in trainable:
        p.requires_grad_(True)
    batches, weights = collate(key_recall_batch(0, 0), model)
    results = []
    for recompute in (False, True):
        for p in trainable:
            p.grad = None
        out = model.forward_train(batches, loss_weights=weights, gradient_checkpointing=recompute)
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad.clone() for p in trainable]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert sum(bool(g.abs().sum() > 0) for g in grads_a) > len(grads_a) // 2  # the comparison is not vacuous
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_sequences_per_micro_batch_fixes_the_batch_at_every_stage() -> None:
    from comet_agents.training.trainer import SampleSource

    from tiny import tiny_chat_model

    model = tiny_chat_model(chunk_size=64)
    by_tokens = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(1, 1), (10**9, 3)],
                          tokens_per_micro_batch=640, smoke=True)
    fixed = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(1, 1), (10**9, 3)],
                      tokens_per_micro_batch=640, sequences_per_micro_batch=3, smoke=True)
    sizes = {name: [len(SampleSource(a, model.tokenizer, 64).micro_batch(step, 0)) for step in (0, 1)]
             for name, a in (("tokens", by_tokens), ("sequences", fixed))}
    assert sizes == {"tokens": [5, 2], "sequences": [3, 3]}
    batch = SampleSource(fixed, model.tokenizer, 64).micro_batch(1, 0)
    assert {ex.num_chunks for ex in batch} == {4}
    with pytest.raises(ValueError, match="sequences_per_micro_batch"):
        TrainArgs(output_dir="unused", sequences_per_micro_batch=-1)


def test_data_workers_collate_and_send_arrays_not_shared_tensors() -> None:
    """Worker-collated batches equal in-process ones, and travel as numpy arrays (through the worker's pipe, not
    /dev/shm, which containers often cap at 64 MB)."""
    import numpy as np

    from comet_agents.training.examples import Collator, collate
    from comet_agents.training.trainer import SampleSource, _as_is, _from_arrays, _MicroBatches

    from tiny import tiny_chat_model

    model = tiny_chat_model(chunk_size=64)
    args = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(10**9, 2)],
                     tokens_per_micro_batch=600, smoke=True)
    source = SampleSource(args, model.tokenizer, 64)
    data = _MicroBatches(source.micro_batch, Collator.for_model(model), 0, 3, 1, 0, 1)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, collate_fn=_as_is)
    seen = 0
    for step, examples, fields, arrays in loader:
        assert all(isinstance(v, np.ndarray) for f in fields for v in f.values() if v is not None
                   and not isinstance(v, (bool, int)))
        batches, weights = _from_arrays(fields, arrays)
        expect, expect_w = collate(examples, model)
        for got, want in zip(batches, expect):
            for name, value in want.__dict__.items():
                other = getattr(got, name)
                if isinstance(value, torch.Tensor):
                    assert other.dtype == value.dtype and torch.equal(other, value), name
                else:
                    assert other == value, name
        assert all(torch.equal(a, b) for a, b in zip(weights, expect_w))
        seen += 1
    assert seen == 3


def test_a_curriculum_range_draws_each_steps_chunks_reproducibly() -> None:
    from comet_agents.training.trainer import SampleSource

    from tiny import tiny_chat_model

    args = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(5, 1), (10**9, 2, 4)],
                     sequences_per_micro_batch=2, smoke=True)
    assert [args.chunks_at(s) for s in range(5)] == [1] * 5
    drawn = [args.chunks_at(s) for s in range(5, 200)]
    assert set(drawn) == {2, 3, 4}
    again = TrainArgs(output_dir="unused", curriculum=[[5, 1], [10**9, 2, 4]])  # as JSON gives it back
    assert drawn == [again.chunks_at(s) for s in range(5, 200)]
    assert drawn != [TrainArgs(output_dir="unused", curriculum=[(5, 1), (10**9, 2, 4)], seed=1).chunks_at(s)
                     for s in range(5, 200)]
    model = tiny_chat_model(chunk_size=64)
    source = SampleSource(args, model.tokenizer, 64)
    for step in (7, 8, 9):
        assert {ex.num_chunks for ex in source.micro_batch(step, 0)} == {args.chunks_at(step) + 1}
    for bad in ([(10, 0)], [(10, 4, 2)], []):
        with pytest.raises(ValueError, match="curriculum"):
            TrainArgs(output_dir="unused", curriculum=bad)


def test_cli_parses_curriculum_ranges_and_names_a_bad_stage() -> None:
    import typer

    from comet_agents.cli import _curriculum

    assert _curriculum("200:2,1000000000:2-8") == [(200, 2), (1000000000, 2, 8)]
    with pytest.raises(typer.BadParameter, match="'300-2'"):
        _curriculum("200:2,300-2")
    from comet_agents.cli import _anneal

    assert _anneal("3400:3800") == (3400, 3800) and _anneal(None) is None
    with pytest.raises(typer.BadParameter, match="--anneal '3400' is not FROM:TO"):
        _anneal("3400")


def test_gates_train_at_their_own_learning_rate() -> None:
    from comet_agents.training.trainer import trainable_groups

    model = tiny_model("llama", lora_rank=4)
    groups = trainable_groups(model, TrainArgs(output_dir="unused", lr=1e-3, memory_lr_mult=5, gate_lr_mult=0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {round(g["lr"], 8): {names[id(p)] for p in g["params"]} for g in groups}
    assert set(by_lr) == {5e-3, 1e-3, 5e-5}
    assert by_lr[5e-5] == {f"memory.{i}.global_net.gate.weight" for i in range(model.num_layers)}
    assert any(".global_net.adapter." in n for n in by_lr[5e-3])
    assert not any(".gate." in n for n in by_lr[5e-3] | by_lr[1e-3])


def test_reinit_gates_restarts_only_the_gates_and_the_run_resumes(tmp_path) -> None:
    import json

    from safetensors.torch import load_file

    from comet_agents.training.trainer import reinit_gates

    ckpt = tmp_path / "checkpoint"
    train(args_for(tmp_path, 3), model=tiny_model("llama", lora_rank=4), sample_fn=key_recall_batch,
          log=lambda s: None)
    before = load_file(str(ckpt / "comet_adapter.safetensors"))
    moments_before = load_file(str(ckpt / "optim_exp_avg.safetensors"))
    names = reinit_gates(ckpt, std=0.02, seed=3)
    after = load_file(str(ckpt / "comet_adapter.safetensors"))
    assert names and all(n.endswith(".global_net.gate.weight") for n in names)
    assert set(after) == set(before)
    for n in after:
        assert torch.equal(after[n], before[n]) != (n in names), n
    gates = torch.cat([after[n].flatten() for n in names])
    assert 0.01 < float(gates.std()) < 0.03
    moments = load_file(str(ckpt / "optim_exp_avg.safetensors"))
    assert set(moments) == set(moments_before) - set(names)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 3 and not set(names) & set(state["adam_steps"])
    assert state["events"] == [{"step": 3, "event": "reinit_gates", "std": 0.02, "seed": 3}]
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()
    model = tiny_model("llama", lora_rank=4)
    model.load_adapter_state_dict(after)
    meta = json.loads((ckpt / "comet_config.json").read_text())["meta"]
    assert meta["adapter_fingerprint"] == model.adapter_fingerprint
    result = train(args_for(tmp_path, 5), model=tiny_model("llama", lora_rank=4), sample_fn=key_recall_batch,
                   log=lambda s: None)
    assert result["step"] == 5 and all(math.isfinite(h["loss"]) for h in result["history"])
    assert json.loads((ckpt / "trainer_state.json").read_text())["events"] == state["events"]  # kept on save


def test_copy_temporary_read_to_global_makes_a_slot_written_once_read_like_its_fifo_entry(tmp_path) -> None:
    """After the copy, a global slot written by one chunk injects exactly what the FIFO entry of the same
    compression token injects, at every layer; nothing but the global read path changes, and the run resumes."""
    import json

    from safetensors.torch import load_file

    from comet_agents.engine import MemoryEngine
    from comet_agents.training.trainer import copy_temporary_read_to_global

    make = lambda: tiny_model("llama", lora_rank=4, global_source="compression")  # noqa: E731
    ckpt = tmp_path / "checkpoint"
    train(args_for(tmp_path, 3), model=make(), sample_fn=key_recall_batch, log=lambda s: None)
    before = load_file(str(ckpt / "comet_adapter.safetensors"))
    names = copy_temporary_read_to_global(ckpt)
    after = load_file(str(ckpt / "comet_adapter.safetensors"))
    assert names and all(".global_net." in n and ".gate." not in n for n in names)
    for n in after:
        assert torch.equal(after[n], before[n]) != (n in names), n
        if n in names:
            assert torch.equal(after[n], before[n.replace(".global_net.", ".temp_net.")])
    assert not set(names) & set(load_file(str(ckpt / "optim_exp_avg.safetensors")))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["events"][-1] == {"step": 3, "event": "copy_temporary_read_to_global"}

    model = make()
    model.load_adapter_state_dict(after)
    engine = MemoryEngine(model)
    mem = engine.absorb(engine.new_state(), list(range(20, 20 + model.config.chunk_size)))
    m = model.config.m
    with torch.no_grad():
        for layer, net in enumerate(model.memory):
            injected = net.global_net.adapter(mem.global_state[layer])
            assert torch.allclose(injected, mem.fifo[layer][:, :m].float(), atol=1e-4), layer
    with pytest.raises(ValueError, match="no global-memory read path"):
        copy_temporary_read_to_global(_without_global(tmp_path))
    result = train(args_for(tmp_path, 5), model=make(), sample_fn=key_recall_batch, log=lambda s: None)
    assert result["step"] == 5 and all(math.isfinite(h["loss"]) for h in result["history"])


def test_use_evicted_global_switches_a_checkpoint_and_the_run_resumes(tmp_path) -> None:
    """The switch removes only the global memory's norm and adapter (and their moments), records the new source
    in the checkpoint's config, and a run with global_source="evicted" resumes from it; FIFO dropout, which would
    leave such a model with no memory at all, is refused."""
    import json

    from safetensors.torch import load_file

    from comet_agents.training.trainer import use_evicted_global

    ckpt = tmp_path / "checkpoint"
    train(args_for(tmp_path, 3), model=tiny_model("llama", lora_rank=4, global_source="compression", fifo_budget=6),
          sample_fn=key_recall_batch, log=lambda s: None)
    before = load_file(str(ckpt / "comet_adapter.safetensors"))
    dropped = use_evicted_global(ckpt)
    after = load_file(str(ckpt / "comet_adapter.safetensors"))
    assert dropped and set(after) == set(before) - set(dropped)
    assert all(".global_net.norm." in n or ".global_net.adapter." in n for n in dropped)
    assert all(torch.equal(after[n], before[n]) for n in after)
    assert not set(dropped) & set(load_file(str(ckpt / "optim_exp_avg_sq.safetensors")))
    assert json.loads((ckpt / "comet_config.json").read_text())["comet"]["global_source"] == "evicted"
    make = lambda: tiny_model("llama", lora_rank=4, global_source="evicted", fifo_budget=6)  # noqa: E731
    result = train(args_for(tmp_path, 5), model=make(), sample_fn=key_recall_batch, log=lambda s: None)
    assert result["step"] == 5 and all(math.isfinite(h["loss"]) for h in result["history"])
    with pytest.raises(ValueError, match='fifo_dropout must be 0 with global_source="evicted"'):
        train(dataclasses.replace(args_for(tmp_path / "other", 2), fifo_dropout=0.3), model=make(),
              sample_fn=key_recall_batch, log=lambda s: None)


def _without_global(tmp_path):
    """A checkpoint of a model that has no global memory."""
    out = tmp_path / "no-global"
    train(args_for(out, 1), model=tiny_model("llama", lora_rank=4, global_memory=False), sample_fn=key_recall_batch,
          log=lambda s: None)
    return out / "checkpoint"


def test_open_chunk_tails_cover_short_ones_as_at_recall_time() -> None:
    """The stream's tail left in the open chunk ranges from nothing to most of a chunk: recall after absorbing a
    whole number of chunks leaves only a few tokens there, and a model never trained on that fails to read memory.
    Measured on the examples themselves (generated streams overshoot their target by a piece, so the requested
    targets alone said nothing about the tails trained on)."""
    from comet_agents.engine import encode_text
    from comet_agents.training.data.common import generate_mixed
    from comet_agents.training.examples import encode_sample
    from comet_agents.training.trainer import SampleSource

    from tiny import tiny_chat_model

    model = tiny_chat_model(chunk_size=64)
    tok = model.tokenizer
    samples = []

    def recording(seed, target, families, count):
        samples.append(generate_mixed(seed, target, families, count))
        return samples[-1]

    args = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(10**9, 2)],
                     sequences_per_micro_batch=8, smoke=True, chunk_end_share=0.0,
                     question_echo_share=0.0)  # tails only: no front cuts, no echoed questions
    source = SampleSource(args, tok, 64, generate=recording)
    examples = [ex for step in range(8) for ex in source.micro_batch(step, 0)]
    assert {ex.num_chunks for ex in examples} == {3}
    whole = [encode_sample(s, tok, 64) for s in samples]
    accepted = [w for w in whole if w.num_chunks == 3]
    tails = []
    for ex, full, sample in zip(examples, accepted, [s for s, w in zip(samples, whole) if w.num_chunks == 3]):
        qa_len = len(full.chunk_texts[-1]) - len(encode_text(tok, sample.stream)) % 64
        tails.append(len(ex.chunk_texts[-1]) - qa_len)
        assert ex.chunk_texts[:2] == full.chunk_texts[:2] and ex.key_age == full.key_age
    assert sum(t < 8 for t in tails) >= 3 and max(tails) > 40 and all(0 <= t < 64 for t in tails), sorted(tails)


def test_trim_tail_cuts_a_stream_only_where_every_answer_survives() -> None:
    """A pass-key stream is cut to the requested tail when its key stays whole; a cut through the needle, an
    answer the stream does not spell out, and a tail outside the chunk leave nothing changed."""
    import pytest

    from comet_agents.engine import encode_text
    from comet_agents.training.data import passkey
    from comet_agents.training.data.common import QA, Sample, generate_mixed
    from comet_agents.training.examples import encode_sample, trim_tail

    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    count = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    sample = passkey.generate(3, 300, count, depth=0.3)
    stream = encode_text(tok, sample.stream)
    full = encode_sample(sample, tok, 64)
    assert len(stream) % 64 > 10
    qa_len = len(full.chunk_texts[-1]) - len(stream) % 64
    for tail in (0, 3, 10):
        ex = encode_sample(sample, tok, 64, tail=tail)
        assert len(ex.chunk_texts[-1]) == tail + qa_len
        assert ex.chunk_texts[:-1] == full.chunk_texts[:-1] and ex.key_age == full.key_age
    assert encode_sample(sample, tok, 64, tail=63).chunk_texts == full.chunk_texts  # longer than the stream's tail
    last = passkey.generate(3, 300, count, depth=1.0)  # the needle ends the stream: a short cut would cut the key
    last_stream = encode_text(tok, last.stream)
    assert trim_tail(last, last_stream, tok, 64, 0) == last_stream
    chat = generate_mixed(0, 300, {"conversation": 1.0}, count)
    chat_stream = encode_text(tok, chat.stream)
    cut = tok.decode(trim_tail(chat, chat_stream, tok, 64, 0))
    assert all(cut.count(q.answer) == chat.stream.count(q.answer) for q in chat.qa)
    derived = Sample("user_behaviour", "x" * 150, [QA("How many?", "3")], {})  # an answer the stream never spells
    derived_stream = encode_text(tok, derived.stream)
    assert trim_tail(derived, derived_stream, tok, 64, 0) == derived_stream
    with pytest.raises(ValueError, match="tail"):
        trim_tail(sample, stream, tok, 64, 64)


def test_chunk_end_cut_puts_the_first_answer_at_the_end_of_a_closed_chunk() -> None:
    """The cut takes tokens off the stream's front so that the key starts ``from_end`` tokens before a closed
    chunk's end, keeping exactly ``closed`` chunks plus ``tail`` tokens and every mention of the key (a chunk
    earlier when the needle's second mention would fall off the end); it refuses a key too early to move
    there, a stream too short, and answers the stream never spells out. encode_sample lays such a cut out and
    counts the key's age in the cut stream."""
    from comet_agents.engine import encode_text
    from comet_agents.training.data import passkey
    from comet_agents.training.data.common import QA, Sample
    from comet_agents.training.examples import chunk_end_cut, cut_stream, encode_sample

    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()  # one token per character
    count = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    sample = passkey.generate(5, 400, count, depth=0.6)
    full = encode_text(tok, sample.stream)
    key = sample.meta["key"]
    ats = set()
    for from_end, tail in ((1, 10), (3, 60), (40, 10)):
        cut, start = chunk_end_cut(sample, full, tok, 64, 2, tail, from_end)
        assert len(cut) == 2 * 64 + tail and cut == full[start : start + len(cut)]
        text = tok.decode(cut)
        at = text.index(key)
        assert at < 128 and at % 64 == 64 - from_end, (at, from_end)
        assert text.count(key) == sample.stream.count(key) == 2
        ats.add(at // 64)
        ex = encode_sample(sample, tok, 64, tail=tail, chunk_end=(2, from_end))
        assert ex.num_chunks == 3 and ex.chunk_texts[:2] == [cut[:64], cut[64:128]]
        assert ex.key_age == 2 - at // 64
    assert ats == {0, 1}  # the last closed chunk when the second mention fits, else the one before
    early = passkey.generate(5, 400, count, depth=0.0)  # the key within the first 60 tokens: nothing to cut
    assert chunk_end_cut(early, encode_text(tok, early.stream), tok, 64, 2, 10, 3) is None
    assert encode_sample(early, tok, 64, tail=10, chunk_end=(2, 3)).chunk_texts == \
        encode_sample(early, tok, 64, tail=10).chunk_texts  # falls back to the tail cut alone
    assert len(full) < 9 * 64 and chunk_end_cut(sample, full, tok, 64, 9, 10, 3) is None  # longer than the stream
    derived = Sample("user_behaviour", "x" * 300, [QA("How many?", "3")], {})
    assert chunk_end_cut(derived, encode_text(tok, derived.stream), tok, 64, 2, 0, 3) is None
    assert cut_stream(derived, encode_text(tok, derived.stream), tok, 10, 200) is None
    with pytest.raises(ValueError, match="from_end"):
        chunk_end_cut(sample, full, tok, 64, 2, 10, 0)
    with pytest.raises(ValueError, match="chunk_end needs a tail"):
        encode_sample(sample, tok, 64, chunk_end=(2, 3))


def test_chunk_end_share_moves_keys_to_chunk_ends() -> None:
    """With ``chunk_end_share`` 1 most pass-key sequences have their key start in the last sixteenth of a
    closed chunk (4 tokens of 64) and keep their chunk count; with share 0 few do."""
    from comet_agents.training.trainer import SampleSource

    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()

    def offsets(share: float) -> list[int]:
        args = TrainArgs(output_dir="unused", families={"passkey_memory": 1.0}, curriculum=[(10**9, 3)],
                         sequences_per_micro_batch=8, smoke=True, chunk_end_share=share,
                         question_echo_share=0.0)  # a 30-character echo would overflow 64-token chunks
        source = SampleSource(args, tok, 64)
        out = []
        for step in range(3):
            for ex in source.micro_batch(step, 0):
                assert ex.num_chunks == 4
                out.append(_first_answer_offset(tok, ex))
        return out

    moved, kept = offsets(1.0), offsets(0.0)
    assert sum(o >= 60 for o in moved) >= 0.75 * len(moved), sorted(moved)
    assert sum(o >= 60 for o in kept) <= 0.25 * len(kept), sorted(kept)
    with pytest.raises(ValueError, match="chunk_end_share"):
        TrainArgs(output_dir="unused", chunk_end_share=-0.1)


def test_question_echo_ends_the_stream_with_the_users_question() -> None:
    """``echo`` appends the first question, rendered as the user's chat message, to the stream after its cuts:
    the closed chunks stay as they were, the echo is read but never supervised, and the question then follows
    in the chat template as usual. ``question_echo_share`` 1 echoes every draw, 0 none."""
    from comet_agents.engine import chat_question, encode_text
    from comet_agents.training.data import passkey
    from comet_agents.training.examples import encode_sample
    from comet_agents.training.trainer import SampleSource

    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()  # one token per character
    count = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    sample = passkey.generate(3, 300, count, depth=0.3)
    question = sample.qa[0].question
    echo = f"[user] {question}\n"
    plain = encode_sample(sample, tok, 64, tail=5)
    echoed = encode_sample(sample, tok, 64, tail=5, echo=True)
    assert echoed.chunk_texts[:-1] == plain.chunk_texts[:-1] and echoed.key_age == plain.key_age
    open_text = tok.decode(echoed.chunk_texts[-1])
    head = open_text.split(chat_question(tok, question))[0]
    assert head.endswith("\n" + echo) and head.count(echo) == 1
    assert tok.decode(plain.chunk_texts[-1]).split(chat_question(tok, question))[0] + "\n" + echo == head
    n_echo = len(encode_text(tok, "\n" + echo))
    start = len(tok.decode(plain.chunk_texts[-1]).split(chat_question(tok, question))[0])
    assert all(w == 0.0 for w in echoed.chunk_weights[-1][: start + n_echo])
    assert sum(echoed.chunk_weights[-1]) == sum(plain.chunk_weights[-1]) > 0

    def echoes(share: float) -> int:
        args = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(10**9, 2)],
                         sequences_per_micro_batch=8, smoke=True, chunk_end_share=0.0, question_echo_share=share)
        source = SampleSource(args, tok, 64)
        found = 0
        for ex in source.micro_batch(0, 0):
            assert ex.num_chunks == 3
            found += "\n[user] " in tok.decode(ex.chunk_texts[-1])
        return found

    assert echoes(1.0) == 8 and echoes(0.0) == 0
    with pytest.raises(ValueError, match="question_echo_share"):
        TrainArgs(output_dir="unused", question_echo_share=1.5)


def test_short_tail_share_leaves_few_stream_tokens_in_the_open_chunk() -> None:
    """With ``short_tail_share`` 1 every pass-key sequence keeps at most SHORT_TAIL stream tokens in its open
    chunk (a recall right after a chunk closed) and its chunk count; with share 0 the uniform draw rarely does."""
    from comet_agents.engine import chat_question
    from comet_agents.training.trainer import SHORT_TAIL, SampleSource

    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()  # one token per character
    template_start = chat_question(tok, "Q?").split("Q?")[0]

    def tails(share: float) -> list[int]:
        args = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(10**9, 2)],
                         sequences_per_micro_batch=8, smoke=True, chunk_end_share=0.0, question_echo_share=0.0,
                         short_tail_share=share)
        source = SampleSource(args, tok, 512)
        out = []
        for step in range(3):
            for ex in source.micro_batch(step, 0):
                assert ex.num_chunks == 3
                open_text = tok.decode(ex.chunk_texts[-1])
                assert template_start in open_text
                tail = open_text.split(template_start)[0]
                answer = tok.decode([lab for lab in ex.chunk_labels[-1] if lab != -100], skip_special_tokens=True)
                out.append((len(tail), answer in tail))
        return out

    short, uniform = tails(1.0), tails(0.0)
    # Longer only where a shorter cut would have dropped the key (the needle ends the stream).
    assert all(n <= SHORT_TAIL or key_in_tail for n, key_in_tail in short), sorted(short)
    assert sum(n <= SHORT_TAIL for n, _ in short) >= 0.75 * len(short)
    uniform = [n for n, _ in uniform]
    assert sum(t <= SHORT_TAIL for t in uniform) <= 0.25 * len(uniform), sorted(uniform)
    with pytest.raises(ValueError, match="short_tail_share"):
        TrainArgs(output_dir="unused", short_tail_share=2.0)


def _first_answer_offset(tok, ex) -> int:
    """Offset inside its chunk of the first occurrence of the example's first answer (the supervised tokens up
    to the end-of-turn token), for a one-token-per-character tokenizer."""
    ids = sum(ex.chunk_texts, [])
    labels = sum(ex.chunk_labels, [])
    supervised = [ids[t + 1] for t, lab in enumerate(labels[:-1]) if lab != -100]
    answer = supervised[: supervised.index(tok.eos_token_id)] if tok.eos_token_id in supervised else supervised
    at = next(i for i in range(len(ids)) if ids[i : i + len(answer)] == answer)
    return at % 64


def test_examples_record_how_many_chunks_back_the_key_sits() -> None:
    """``key_age`` of a pass-key example matches where the key's tokens really are in its chunk plan."""
    from comet_agents.layout import key_age
    from comet_agents.training.data import passkey
    from comet_agents.training.data.common import QA, Sample, generate_mixed
    from comet_agents.training.examples import encode_sample

    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    count = lambda s: len(tok(s)["input_ids"])  # noqa: E731
    ages = set()
    for seed in range(12):
        sample = passkey.generate(seed, 380, count, depth=seed / 11)
        ex = encode_sample(sample, tok, 64)
        key_ids = tok(sample.meta["key"])["input_ids"]
        stream = sum(ex.chunk_texts, [])[: len(tok(sample.stream)["input_ids"])]
        first = next(j for j in range(len(stream)) if stream[j : j + len(key_ids)] == key_ids)
        assert ex.key_age == key_age(first, len(stream), 64), seed
        ages.add(ex.key_age)
    assert len(ages) >= 4, ages
    for at, age in ((0, 2), (100, 1), (130, 0)):  # 135 characters: two closed chunks of 64, a tail of 7
        stream = ("x" * at + "K7Q2M" + "x" * 200)[:135]
        hand = Sample("passkey", stream, [QA("Key?", "K7Q2M")], {"needle_char_offset": at, "key": "K7Q2M"})
        assert encode_sample(hand, tok, 64).key_age == age
    other = encode_sample(generate_mixed(0, 300, {"conversation": 1.0}, count), tok, 64)
    assert other.key_age is None


def test_training_logs_losses_per_memory_tier(tmp_path) -> None:
    """Examples with a ``key_age`` also count under ``family@tier``, so a run shows keys older than the FIFO apart."""
    def aged(step: int, micro: int) -> list[TrainingExample]:
        batch = key_recall_batch(step, micro)
        # Tiny config: 3 entries a chunk and a FIFO of 5, so it reaches 1 chunk back.
        if step == 0:
            batch[0].key_age, batch[1].key_age = 2, 1
        else:  # without the FIFO a closed-chunk key counts apart; one in the open chunk stays "open"
            batch[0].key_age, batch[1].key_age = 2, 0
            batch[0].without_fifo = batch[1].without_fifo = True
        return batch

    lines: list[str] = []
    args = TrainArgs(output_dir=str(tmp_path), steps=2, lr=1e-3, warmup_steps=1, save_every=10, log_every=1,
                     smoke=True, num_workers=0)
    train(args, model=tiny_model("llama"), sample_fn=aged, log=lines.append)
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert [set(line["family_loss"]) for line in logged] == [{"key", "key@global", "key@fifo"},
                                                              {"key", "key@nofifo", "key@open"}]


def test_fifo_dropout_marks_a_reproducible_share_of_sequences() -> None:
    from comet_agents.training.trainer import drop_fifo

    batch = [ex for s in range(50) for ex in key_recall_batch(s, 0)]
    assert drop_fifo(batch, 0.0, 0, 3, 0) is batch
    marked = drop_fifo(batch, 0.3, 0, 3, 0)
    assert marked == drop_fifo(batch, 0.3, 0, 3, 0)  # same (seed, step, micro), same marks
    assert marked != drop_fifo(batch, 0.3, 0, 4, 0)
    assert 15 <= sum(ex.without_fifo for ex in marked) <= 45
    assert all(ex.without_fifo for ex in drop_fifo(batch, 1.0, 0, 3, 0))
    assert not any(ex.without_fifo for ex in batch)  # the originals are untouched
    with pytest.raises(ValueError, match="fifo_dropout must be in"):
        TrainArgs(output_dir="unused", fifo_dropout=1.5)


def test_a_sequence_without_fifo_reaches_its_answer_through_the_global_memory_alone() -> None:
    """Laid out without the FIFO, a sequence has no compression tokens and no temporary slots, its loss ignores
    the FIFO's weights, and it batches with ordinary sequences without changing their losses or its own."""
    from comet_agents.training.examples import collate

    model = tiny_model("llama")
    plain, dropped = key_recall_batch(0, 0)
    dropped.without_fifo = True
    batches, _ = collate([plain, dropped], model)
    assert not batches[1].temp_valid[1].any() and batches[1].temp_valid[0].any()
    assert not batches[0].compression_valid[1].any() and batches[0].compression_valid[0].any()

    def losses(examples):
        with torch.no_grad():
            chunks, weights = collate(examples, model)
            return model.forward_train(chunks, loss_weights=weights)["sample_loss"]

    together = losses([plain, dropped])
    assert torch.allclose(together, torch.cat([losses([plain]), losses([dropped])]), atol=1e-5)
    with torch.no_grad():
        for layer in model.memory:
            layer.temp_net.adapter.up.weight.add_(1.0)
    after = losses([plain, dropped])
    assert torch.allclose(after[1], together[1], atol=1e-6) and not torch.allclose(after[0], together[0], atol=1e-3)


def test_without_fifo_keeps_the_compression_tokens_that_write_the_global_memory() -> None:
    """global_source="compression": a sequence laid out without the FIFO keeps its compression tokens (they write
    the global memory) but has no temporary slots, so its loss ignores the FIFO's adapter and not the global one."""
    from comet_agents.training.examples import collate

    model = tiny_model("llama", global_source="compression")
    plain, dropped = key_recall_batch(0, 0)
    dropped.without_fifo = True
    batches, _ = collate([plain, dropped], model)
    assert not batches[1].temp_valid[1].any() and batches[1].temp_valid[0].any()
    assert batches[0].compression_valid[1].any() and batches[0].writes_global.all()
    assert batches[1].has_global.all()

    def losses():
        with torch.no_grad():
            chunks, weights = collate([plain, dropped], model)
            return model.forward_train(chunks, loss_weights=weights)["sample_loss"]

    before = losses()
    with torch.no_grad():
        for layer in model.memory:
            layer.temp_net.adapter.up.weight.add_(1.0)
    after_fifo = losses()
    assert torch.allclose(after_fifo[1], before[1], atol=1e-6) and not torch.allclose(after_fifo[0], before[0], atol=1e-3)
    with torch.no_grad():
        for layer in model.memory:
            layer.global_net.adapter.up.weight.add_(1.0)
    assert not torch.allclose(losses()[1], after_fifo[1], atol=1e-3)


def test_cli_takes_fifo_dropout(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from comet_agents import cli

    seen = {}
    monkeypatch.setattr("comet_agents.training.trainer.train", lambda args, log: seen.setdefault("args", args) and {})
    result = CliRunner().invoke(cli.app, ["train", "--output-dir", str(tmp_path), "--fifo-dropout", "0.25",
                                          "--end-weight", "3", "--smoke"])
    assert result.exit_code == 0, result.output
    assert seen["args"].fifo_dropout == 0.25 and seen["args"].end_weight == 3.0


def test_add_reader_lora_resumes_to_the_identical_next_step_loss_and_then_trains_it(tmp_path) -> None:
    """The added reader LoRA starts at zero: a run resumed from the edited checkpoint (with the reader LoRA in its
    config) takes the very next step with the loss an unedited resume takes, and then moves the new weights."""
    import json
    import shutil

    from safetensors.torch import load_file

    from comet_agents.training.trainer import add_reader_lora

    train(args_for(tmp_path / "a", 3), model=tiny_model("llama"), sample_fn=key_recall_batch, log=lambda s: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ckpt = tmp_path / "b" / "checkpoint"
    before = load_file(str(ckpt / "comet_adapter.safetensors"))
    names = add_reader_lora(ckpt, rank=2, alpha=4, seed=1)
    after = load_file(str(ckpt / "comet_adapter.safetensors"))
    assert set(after) == set(before) | set(names) and all(n.startswith("reader_lora.") for n in names)
    assert all(torch.equal(after[n], before[n]) for n in before)
    assert all(not after[n].any() for n in names if ".up." in n)
    saved = json.loads((ckpt / "comet_config.json").read_text())
    assert saved["comet"]["reader_lora_rank"] == 2 and saved["comet"]["reader_lora_alpha"] == 4
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["events"][-1]["event"] == "add_reader_lora" and state["step"] == 3
    with pytest.raises(ValueError, match="already has a reader LoRA"):
        add_reader_lora(ckpt, rank=2)

    plain = train(args_for(tmp_path / "a", 5), model=tiny_model("llama"), sample_fn=key_recall_batch,
                  log=lambda s: None)
    reader = train(args_for(tmp_path / "b", 5), model=tiny_model("llama", reader_lora_rank=2, reader_lora_alpha=4),
                   sample_fn=key_recall_batch, log=lambda s: None)
    a = [h["loss"] for h in plain["history"]]
    b = [h["loss"] for h in reader["history"]]
    assert b[:4] == a[:4]  # the three steps before the edit, and the first one after it, bit for bit
    trained = load_file(str(ckpt / "comet_adapter.safetensors"))
    assert any(trained[n].abs().max() > 0 for n in names if ".up." in n)


def test_anneal_brings_the_rate_to_zero_early_without_a_jump(tmp_path) -> None:
    from comet_agents.training.trainer import lr_factor

    plain = TrainArgs(output_dir="x", steps=100, warmup_steps=10)
    annealed = TrainArgs(output_dir="x", steps=100, warmup_steps=10, anneal=(40, 60))
    assert all(lr_factor(s, annealed) == lr_factor(s, plain) for s in range(41))
    assert lr_factor(40, annealed) > 0.5 and lr_factor(60, annealed) == 0.0
    factors = [lr_factor(s, annealed) for s in range(38, 61)]
    assert all(later < earlier for earlier, later in zip(factors, factors[1:]))
    assert max(abs(b - a) for a, b in zip(factors, factors[1:])) < 0.1
    assert annealed.last_step == 60 and plain.last_step == 100
    for bad in [(5, 60), (60, 40), (40, 101)]:
        with pytest.raises(ValueError, match="anneal"):
            TrainArgs(output_dir="x", steps=100, warmup_steps=10, anneal=bad)
    args = dataclasses.replace(args_for(tmp_path, 8), anneal=(2, 4))
    result = train(args, model=tiny_model("llama"), sample_fn=key_recall_batch, log=lambda s: None)
    assert result["step"] == 4 and len(result["history"]) == 4


def test_token_losses_follow_each_labelled_position_and_average_to_the_sample_loss() -> None:
    """The per-position diagnostics (tools/memory_info.py) are the training loss taken apart: for uniform
    weights their mean per sample is ``sample_loss``, and a greedy hit is where the logits' argmax is the label."""
    from comet_agents.training.examples import collate

    model = tiny_model("llama")
    examples = key_recall_batch(0, 0)
    chunks, _ = collate(examples, model)
    with torch.no_grad():
        out = model.forward_train(chunks, return_token_losses=True, return_logits=True)
    stats = out["token_losses"]
    assert len(stats) == len(chunks) and all(s is None for s in stats[:-1])
    rows, ce, hit = stats[-1]
    labels = chunks[-1].labels
    assert rows.tolist() == (labels != -100).nonzero()[:, 0].tolist()
    for b in range(len(examples)):
        torch.testing.assert_close(ce[rows == b].mean(), out["sample_loss"][b], atol=1e-5, rtol=1e-5)
    logits = out["logits"][-1][labels != -100]
    assert hit.tolist() == (logits.argmax(-1) == labels[labels != -100]).tolist()
    assert len(ce) == 5 * len(examples)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_fused_elementwise_kernels_train_like_the_eager_ones(tmp_path, kind: str) -> None:
    """``fuse`` routes every RMSNorm and gated MLP through compiled kernels (logged), and training gives the
    eager run's losses to rounding; the fused model's outputs equal the eager one's."""
    from comet_agents.training.fusion import fuse_elementwise

    lines: list[str] = []
    fused = train(dataclasses.replace(args_for(tmp_path / "f", 3), fuse=True), model=tiny_model(kind, lora_rank=4),
                  sample_fn=key_recall_batch, log=lines.append)
    plain = train(args_for(tmp_path / "p", 3), model=tiny_model(kind, lora_rank=4), sample_fn=key_recall_batch,
                  log=lambda s: None)
    said = [line for line in lines if line.startswith("fused: ")]
    assert said and "rms_norm x" in said[0] and "silu_mul x0" not in said[0], lines
    first, ref_first = fused["history"][0], plain["history"][0]
    assert math.isclose(first["loss"], ref_first["loss"], rel_tol=1e-5)
    assert math.isclose(first["grad_norm"], ref_first["grad_norm"], rel_tol=1e-4)  # the backward agrees too
    # Later steps are not compared: Adam's first updates are about lr * sign(g), so rounding in near-zero
    # gradient components moves them by a full step (1.7 % apart after two steps on this tiny model).
    assert fused["history"][-1]["loss"] < first["loss"]
    model, ref = tiny_model(kind), tiny_model(kind)
    what = fuse_elementwise(model, torch.device("cpu"), torch.float32)
    n_norms = sum(hasattr(m, "variance_epsilon") for m in model.inner.modules())  # the backbone's, not memory's
    n_mlps = sum(hasattr(m, "gate_proj") for m in model.inner.modules())
    assert what == [f"rms_norm x{n_norms}", f"silu_mul x{n_mlps}"] and n_norms > 0 and n_mlps > 0
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.inner(input_ids=ids).last_hidden_state,
                                   ref.inner(input_ids=ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_end_weight_weighs_only_the_token_that_closes_each_answer() -> None:
    """``end_weight`` moves the loss weight of the end-of-turn label after every answer, and of nothing else:
    the labels stay, every other supervised token keeps weight 1, and the default leaves the weights as before."""
    import pytest

    from comet_agents.training.data.common import QA, Sample
    from comet_agents.training.examples import encode_sample

    from tiny import tiny_chat_model

    tok = tiny_chat_model(chunk_size=64).tokenizer
    end_id = tok.get_vocab().get("<|im_end|>", tok.eos_token_id)  # the marker qa_pieces closes answers with
    sample = Sample(stream="The pass key is 4711. The door code is 8305. " * 4, family="passkey",
                    qa=[QA("What is the pass key?", "4711"), QA("What is the door code?", "8305")], meta={})
    plain = encode_sample(sample, tok, 64)
    heavy = encode_sample(sample, tok, 64, end_weight=4.0)
    labels = [lab for chunk in plain.chunk_labels for lab in chunk]
    assert labels == [lab for chunk in heavy.chunk_labels for lab in chunk]
    w_plain = [w for chunk in plain.chunk_weights for w in chunk]
    w_heavy = [w for chunk in heavy.chunk_weights for w in chunk]
    assert set(w_plain) == {0.0, 1.0}
    changed = [t for t, (a, b) in enumerate(zip(w_plain, w_heavy)) if a != b]
    assert len(changed) == 2 and all(labels[t] == end_id and w_heavy[t] == 4.0 for t in changed)
    # the end-of-turn labels inside the question turns are not supervised, so only the answers' ends changed
    assert sum(1 for t, lab in enumerate(labels) if lab == end_id and w_plain[t] == 1.0) == 2
    with pytest.raises(ValueError, match="end_weight"):
        TrainArgs(output_dir="unused", end_weight=-1.0, smoke=True)
    # the trainer's sequences carry it
    from comet_agents.training.trainer import SampleSource

    args = TrainArgs(output_dir="unused", families={"passkey": 1.0}, curriculum=[(10**9, 1)],
                     sequences_per_micro_batch=4, smoke=True, end_weight=2.5)
    batch = SampleSource(args, tok, 64).micro_batch(0, 0)
    assert batch and all(sorted({w for c in ex.chunk_weights for w in c}) == [0.0, 1.0, 2.5] for ex in batch)
