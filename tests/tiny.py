"""Tiny random Llama / Qwen3 backbones for unit tests (fast on 2 CPU cores)."""

from __future__ import annotations

import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from comet_agents import CometConfig, CometModel

VOCAB = 96


def tokens(n: int, seed: int = 0) -> list[int]:
    """``n`` random text ids of the tiny vocabulary (2 .. VOCAB-1), reproducible from ``seed``."""
    rng = random.Random(seed)
    return [rng.randrange(2, VOCAB) for _ in range(n)]


def recall_logits(engine, state, prompt: list[int]) -> torch.Tensor:
    """Next-token logits of the open chunk (pending tail + ``prompt``) over ``state``, as ``recall`` sees them."""
    batch, _, _ = engine.open_chunk(state, prompt)
    logits, _ = engine.model.prefill_open_chunk(state, batch)
    return logits


def absorb_in_random_pieces(engine, toks: list[int], seed: int, max_piece: int = 30):
    """A fresh state that absorbed ``toks`` in random pieces of 0..``max_piece`` tokens."""
    state = engine.new_state()
    rng, i = random.Random(seed), 0
    while i < len(toks):
        n = rng.randint(0, max_piece)
        engine.absorb(state, toks[i : i + n])
        i += n
    return state


def assert_training_matches_streaming(engine, toks: list[int], prompt: list[int], atol: float = 1e-5) -> None:
    """Layer-major ``forward_train`` over the training chunk plan (``sequence_layouts`` with every layout flag of
    the engine's config) computes what chunk-major streaming computes: the open chunk's last logits equal the
    recall logits of the streamed state, and the state after the closed chunks equals the streamed state."""
    from comet_agents.layout import pad_layouts, sequence_layouts, split_into_chunks

    model, cfg = engine.model, engine.config
    streamed = engine.absorb(engine.new_state(), toks)
    ref_logits = recall_logits(engine, streamed, prompt)
    chunk_texts = split_into_chunks(toks, cfg.chunk_size)
    layouts = sequence_layouts(chunk_texts[:-1] + [chunk_texts[-1] + prompt], num_global=cfg.m,
                               fifo_budget=cfg.fifo, stride=cfg.stride, ids=model.special, last_open=True,
                               open_stride=cfg.open_stride, global_from_compression=cfg.global_from_compression,
                               global_from_fifo=cfg.global_from_fifo, overlap=cfg.chunk_overlap)
    batches = [pad_layouts([lay], model.special.pad) for lay in layouts]
    with torch.no_grad():
        out = model.forward_train(batches, return_logits=True)
        closed = model.forward_train(batches[:-1])
    last = layouts[-1].text_index[-1]
    torch.testing.assert_close(out["logits"][-1][:, last], ref_logits, atol=atol, rtol=1e-4)
    torch.testing.assert_close(closed["global_state"], streamed.global_state, atol=atol, rtol=1e-4)
    torch.testing.assert_close(closed["fifo"], streamed.fifo, atol=atol, rtol=1e-4)
    assert torch.equal(closed["fifo_len"], streamed.fifo_len)


def tiny_base(kind: str = "llama", attn: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=1, pad_token_id=1, tie_word_embeddings=True, initializer_range=0.2,
    )
    if kind == "llama":
        cfg = LlamaConfig(**common)
        model = LlamaForCausalLM(cfg)
    elif kind == "qwen3":
        cfg = Qwen3Config(head_dim=8, use_sliding_window=False, **common)
        model = Qwen3ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.config._attn_implementation = attn
    return model.float().eval()


def tiny_config(**overrides) -> CometConfig:
    base = dict(chunk_size=12, num_global_slots=3, compression_stride=4, fifo_budget=5, adapter_rank=2, lora_rank=0)
    base.update(overrides)
    return CometConfig(**base)


def _perturbed(model: CometModel, seed: int) -> CometModel:
    """Memory nets start near identity; perturb them (deterministically) so tests see real gates and adapters."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.memory.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        if model.memory_lora is not None:
            for p in model.memory_lora.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        if model.reader_lora is not None:
            for p in model.reader_lora.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        model.special_embeddings.add_(torch.randn(model.special_embeddings.shape, generator=g))
    model.invalidate_fingerprint()
    return model.eval()


def tiny_model(kind: str = "llama", attn: str = "sdpa", seed: int = 0, **overrides) -> CometModel:
    model = CometModel(tiny_base(kind, attn, seed), tiny_config(**overrides), base_fingerprint=f"tiny-{kind}-{seed}")
    return _perturbed(model, seed)


# Characters of the tiny tokenizer: printable ASCII and "\n", minus a few rare ones, so that ids stay below VOCAB.
TINY_CHARS = list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" "!\"#$%&'()*+,-./:;<=>?@[\\]_{} \n")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def tiny_tokenizer():
    """A character-level fast tokenizer: <unk>=0, <eos>=1 (the tiny bases' eos), one id per character (< VOCAB).

    Unknown characters map to <unk>; it has a chat template, so ``engine.chat_question`` and ``recall`` work.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    for c in TINY_CHARS:
        vocab[c] = len(vocab)
    assert len(vocab) <= VOCAB - 1, len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def tiny_chat_model(kind: str = "llama", seed: int = 0, **overrides) -> CometModel:
    """Like :func:`tiny_model` but with :func:`tiny_tokenizer` attached (text in, text out). Deterministic in
    ``seed`` and ``overrides``, so another process builds the very same model."""
    model = CometModel(tiny_base(kind, "sdpa", seed), tiny_config(**overrides), tokenizer=tiny_tokenizer(),
                       base_fingerprint=f"tiny-{kind}-{seed}")
    return _perturbed(model, seed)
