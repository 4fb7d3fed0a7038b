"""Adapters round-trip through save_pretrained / from_pretrained on the real SmolLM2 base (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from comet_agents import CometConfig, CometModel
from comet_agents.engine import MemoryEngine
from comet_agents.modeling import ADAPTER_FILE, WEIGHTS_DIR


@pytest.mark.slow
def test_adapter_directory_round_trip(tmp_path) -> None:
    model = CometModel.from_pretrained("default", device="cpu")
    with torch.no_grad():  # make the adapter differ from a fresh initialisation
        for p in model.memory.parameters():
            p.add_(0.01)
    model.invalidate_fingerprint()
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "comet_config.json").read_text())["meta"]
    assert meta["base_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["base_fingerprint"] == model.base_fingerprint

    again = CometModel.from_pretrained(str(tmp_path), device="cpu")
    assert again.adapter_fingerprint == model.adapter_fingerprint
    assert again.base_fingerprint == model.base_fingerprint
    assert again.config == model.config
    ids = list(range(1000, 2100))  # one full chunk into memory, the rest pending
    a, b = MemoryEngine(model), MemoryEngine(again)
    s1, s2 = a.absorb(a.new_state(), ids), b.absorb(b.new_state(), ids)
    assert int(s1.chunks) == 1 and torch.equal(s1.global_state, s2.global_state)
    assert a.generate(s1, [1, 2, 3], max_new_tokens=4) == b.generate(s2, [1, 2, 3], max_new_tokens=4)

    with pytest.raises(ValueError, match="another CometConfig"):
        CometModel.from_pretrained(str(tmp_path), config=CometConfig(chunk_size=512), device="cpu")


SHIPPED = (WEIGHTS_DIR / ADAPTER_FILE).exists()


@pytest.mark.skipif(not SHIPPED, reason="no trained default adapter is shipped yet (issue 3)")
def test_shipped_adapter_is_small_and_matches_its_base() -> None:
    """Issue 3: the adapter in the package stays under 24 MB and names the base it was trained on (the loader
    checks the fingerprint against the base it builds)."""
    assert (WEIGHTS_DIR / ADAPTER_FILE).stat().st_size < 24 * 1024 * 1024
    meta = json.loads((WEIGHTS_DIR / "comet_config.json").read_text())["meta"]
    assert meta["base_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["base_fingerprint"]


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="no trained default adapter is shipped yet (issue 3)")
@pytest.mark.parametrize("key", ["71432", "K7-Q2M9"])
def test_shipped_adapter_recalls_a_pass_key_from_memory(tmp_path, key: str) -> None:
    """Issue 3's CI acceptance: ComeTMemory() over a ~1.5k-token haystack with the key at its start answers
    the key, which by then lies in a closed chunk (memory), not in the open chunk."""
    from comet_agents import ComeTMemory
    from comet_agents.training.data.passkey import make_passkey_haystack

    mem = ComeTMemory("passkey", store=f"sqlite:///{tmp_path / 'store.db'}", device="cpu")
    haystack = make_passkey_haystack(1500, 0.0, key, filler="classic", count_tokens=mem.count_tokens, seed=0)
    mem.absorb(haystack)
    assert mem.stats.chunks >= 1 and key not in mem.engine.tokenizer.decode(mem.state.pending[0])
    assert key in mem.recall("What is the pass key?")
