"""Fused element-wise kernels for training: the backbone's RMSNorms and gated MLP activations through
``torch.compile``.

A GPU training step of the 135M default model spends more on memory-bound element-wise work than on matrix
products: on the H200 (profile of 2026-12-04, docs/training.md) ``mul`` and ``copy_`` alone took a third of the
kernel time (``mm`` a fifth), much of it the RMSNorm's float32 round trip (cast, square, mean, rsqrt, scale, cast
back, weight: seven kernels that each read and write the whole activation, twice each layer and chunk, and again
in the recompute and the backward) and the MLP's ``silu(gate) * up``. Compiled, each becomes one kernel forward and one backward. The
arithmetic is the backbone's own (float32 statistics, as transformers' Llama/Qwen3 RMSNorm), so results agree to
rounding; tests compare both on tiny models.

Only the element-wise parts are compiled, never a whole decoder layer: the layers carry forward hooks (the
memory and reader LoRA) and per-thread state that a compiled graph would have to trace around, and the small
pure functions here compile in seconds, once for every layer (shapes are dynamic).
"""

from __future__ import annotations

import logging
import types
from typing import Any, Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return nn.functional.silu(gate) * up


def _is_rms_norm(module: nn.Module) -> bool:
    """A transformers RMSNorm of the Llama/Qwen kind (``weight``, ``variance_epsilon``, no offset)."""
    return (type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
            and isinstance(getattr(module, "weight", None), nn.Parameter))


def _is_gated_silu_mlp(module: nn.Module) -> bool:
    """A ``down(act(gate(x)) * up(x))`` MLP whose activation is SiLU (``nn.SiLU``, or transformers'
    ``SiLUActivation``, which is ``F.silu``)."""
    names = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if not (type(module).__name__.endswith("MLP") and all(hasattr(module, n) for n in names)):
        return False
    return isinstance(module.act_fn, nn.SiLU) or type(module.act_fn).__name__ == "SiLUActivation"


def _check(compiled: Callable[..., torch.Tensor], eager: Callable[..., torch.Tensor], *args: Any) -> None:
    """Run ``compiled`` forward and backward on small inputs and compare with ``eager``: a compiler that does not
    work on this machine must fail here, at start-up, not in the first training step's backward."""
    leaves = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    ref_leaves = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    out, ref = compiled(*leaves), eager(*ref_leaves)
    out.float().square().sum().backward()
    ref.float().square().sum().backward()
    low = any(isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16) for a in args)
    tol = {"rtol": 2e-2, "atol": 2e-2} if low else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out, ref, **tol)
    for a, b in zip(leaves, ref_leaves):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a.grad, b.grad, **tol)


def fuse_elementwise(model: nn.Module, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Route every RMSNorm and gated-SiLU MLP inside ``model`` through compiled element-wise kernels.

    Returns what was fused ("rms_norm x61", "silu_mul x30"); an empty list when ``torch.compile`` does not work
    here (logged, and the model is left as it was). ``device`` and ``dtype`` are those of the activations, for
    the start-up check.
    """
    norms = [m for m in model.modules() if _is_rms_norm(m)]
    mlps = [m for m in model.modules() if _is_gated_silu_mlp(m)]
    if not norms and not mlps:
        return []
    # One function serves inputs of several kinds (hidden states and Qwen3's per-head q/k norms, with and without
    # grad, the recompute, batches of one): each is a compiled variant of the same code, and the default limit
    # of 8 variants would leave the rest eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    rms = torch.compile(_rms_norm, dynamic=True)
    silu_mul = torch.compile(_silu_mul, dynamic=True)
    gen = torch.Generator().manual_seed(0)
    try:
        if norms:
            d = norms[0].weight.shape[0]
            x = torch.randn(2, 3, d, generator=gen).to(device=device, dtype=dtype)
            w = norms[0].weight.detach().to(device)
            _check(rms, _rms_norm, x, w, float(norms[0].variance_epsilon))
        if mlps:
            g = torch.randn(2, 3, 8, generator=gen).to(device=device, dtype=dtype)
            _check(silu_mul, _silu_mul, g, torch.randn(2, 3, 8, generator=gen).to(device=device, dtype=dtype))
    except Exception as error:  # noqa: BLE001 - any compiler failure means: train without fusion
        logger.warning("torch.compile does not work here (%r); training without fused kernels", error)
        return []

    def norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms(hidden_states, self.weight, self.variance_epsilon)

    def mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))

    for m in norms:
        m.forward = types.MethodType(norm_forward, m)
    for m in mlps:
        m.forward = types.MethodType(mlp_forward, m)
    return [f"rms_norm x{len(norms)}", f"silu_mul x{len(mlps)}"]
