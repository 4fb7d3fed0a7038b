"""Smoke training on a tiny random model: the loss falls, and a resumed run continues exactly."""

from __future__ import annotations

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
