"""The command line end to end on the real SmolLM2 base (offline GGUF fallback), CPU."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from comet_agents.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_passkey_runs_end_to_end_on_the_real_base() -> None:
    result = runner.invoke(app, ["passkey", "--tokens", "2000", "--depth", "0.3", "--key", "48213", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pass key:      48213" in out
    assert re.search(r"answer:\s+'.*'", out)
    m = re.search(r"absorb:.* (\d+) chunks, (\d+) tokens pending", out)
    assert m and int(m.group(1)) == 1 and int(m.group(2)) > 0  # ~2000 tokens: one chunk of 1024 + a tail
    assert re.search(r"state size:\s+\d+\.\d+ MiB", out)


@pytest.mark.slow
def test_info_reports_model_and_state_size() -> None:
    result = runner.invoke(app, ["info", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{"):])
    assert info["base"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["layers"] == 30 and info["hidden_size"] == 576
    cfg, d, r = info["config"], 576, info["config"]["adapter_rank"]
    temporary = d + 2 * r * d  # norm + low-rank adapter
    # the global net: norm, gate over [memory; update] and adapter; only the gate when the FIFO's evictions
    # write the global memory (the shipped adapter's global_source="evicted")
    global_net = 2 * d if cfg["global_source"] == "evicted" else d + 2 * d + 2 * r * d
    assert info["memory_parameters"] == (temporary + global_net) * 30
    assert info["state_bytes_per_session"] > 0


def test_bad_arguments_are_refused() -> None:
    result = runner.invoke(app, ["passkey", "--tokens", "0"])
    assert result.exit_code != 0 and "--tokens must be >= 1" in result.output
    result = runner.invoke(app, ["passkey", "--depth", "1.5"])
    assert result.exit_code != 0 and "--depth must be between 0 and 1" in result.output


def test_eval_dtype_is_checked_before_any_model_loads() -> None:
    """``--dtype`` names the weights' and states' dtype (auto: the device's default); an unknown name is refused
    with the choices, before a model is loaded."""
    import torch

    from comet_agents.cli import _dtype

    assert _dtype("auto") is None
    assert _dtype("float32") is torch.float32 and _dtype("bfloat16") is torch.bfloat16
    for command in (["eval", "passkey"], ["eval", "qa"], ["eval", "preserve"]):
        result = runner.invoke(app, [*command, "--dtype", "fp8", "--model", "/nonexistent", "--device", "cpu"])
        assert result.exit_code != 0
        assert "--dtype must be one of auto, float32, bfloat16, float16" in result.output, result.output
    result = runner.invoke(app, ["eval", "passkey", "--max-minutes", "5", "--model", "/nonexistent"])
    assert result.exit_code != 0 and "--max-minutes needs --resume-dir" in result.output, result.output
    for bad in ("x", "0", "7-5", "3-4-5", "19"):
        result = runner.invoke(app, ["eval", "passkey", "--key-digits", bad, "--model", "/nonexistent"])
        assert result.exit_code != 0 and "--key-digits must be N or A-B" in result.output, (bad, result.output)
