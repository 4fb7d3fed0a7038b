"""Adapters round-trip through save_pretrained / from_pretrained on the real SmolLM2 base (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from comet_agents import CometConfig, CometModel
from comet_agents.engine import MemoryEngine


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
