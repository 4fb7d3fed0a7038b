"""The ``comet-agents`` command: pass-key demo, model info, training, evaluation and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="CoMeT memory for LLM agents: constant-size memory over a local transformer.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
eval_app = typer.Typer(help="Evaluate a CoMeT adapter.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (speed and memory).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'default', an adapter directory, or a base model.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
DtypeOpt = Annotated[str, typer.Option(
    help="auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16: weights and memory states.")]
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _dtype(name: str):
    """The torch dtype named on the command line; None for auto (the model's default for its device)."""
    import torch

    if name not in DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return None if name == "auto" else getattr(torch, name)


def _load(model: str, device: str | None, config_json: str | None = None, dtype: str = "auto"):
    from .config import CometConfig
    from .engine import MemoryEngine
    from .modeling import CometModel

    torch_dtype = _dtype(dtype)
    cfg = CometConfig.from_dict(json.loads(config_json)) if config_json else None
    return MemoryEngine(CometModel.from_pretrained(model, config=cfg, device=device, dtype=torch_dtype).eval())


def _ints(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            mult, part = 1024, part[:-1]
        elif part.endswith("m"):
            mult, part = 1024 * 1024, part[:-1]
        out.append(int(float(part) * mult))
    return out


@app.command()
def info(model: ModelOpt = "default", device: DeviceOpt = None) -> None:
    """Show the model, its CoMeT config and the size of one session's memory state."""
    engine = _load(model, device)
    typer.echo(json.dumps(engine.model.describe(), indent=2, default=str))


@app.command()
def passkey(
    tokens: Annotated[int, typer.Option(help="Haystack length in tokens.")] = 2000,
    depth: Annotated[float, typer.Option(help="Relative needle depth, 0 (start) to 1 (end).")] = 0.5,
    key: Annotated[Optional[str], typer.Option(help="The pass key (default: random 5-digit number).")] = None,
    filler: Annotated[str, typer.Option(help="Filler style.")] = "classic",
    model: ModelOpt = "default",
    device: DeviceOpt = None,
) -> None:
    """Hide a pass key in a long haystack, absorb it into memory, and ask for it."""
    if tokens < 1:
        raise typer.BadParameter("--tokens must be >= 1")
    if not 0.0 <= depth <= 1.0:
        raise typer.BadParameter("--depth must be between 0 and 1")
    from tqdm import tqdm

    from .evaluation import QUESTION, passkey_case, passkey_found

    t_load = time.perf_counter()
    engine = _load(model, device)
    t_load = time.perf_counter() - t_load
    key = key or str(random.Random().randrange(10000, 99999))
    ids = passkey_case(engine, tokens, depth, key, filler=filler)
    state = engine.new_state()
    t0 = time.perf_counter()
    with tqdm(total=len(ids), unit="tok", desc="absorbing", dynamic_ncols=True) as bar:
        engine.absorb(state, ids, progress=bar.update)
        bar.update(len(ids) - bar.n)
    t_absorb = time.perf_counter() - t0
    t0 = time.perf_counter()
    answer = engine.recall(state, QUESTION, max_new_tokens=16)
    t_answer = time.perf_counter() - t0
    typer.echo(f"pass key:      {key} (depth {depth:.0%} of {len(ids):,} tokens)")
    typer.echo(f"answer:        {answer!r}  -> {'CORRECT' if passkey_found(key, answer) else 'wrong'}")
    typer.echo(f"model load:    {t_load:.1f} s")
    typer.echo(f"absorb:        {t_absorb:.1f} s ({len(ids) / max(t_absorb, 1e-9):,.0f} tokens/s, "
               f"{int(state.chunks)} chunks, {len(state.pending[0])} tokens pending)")
    typer.echo(f"answer time:   {t_answer:.2f} s")
    typer.echo(f"state size:    {state.nbytes() / 2**20:.2f} MiB (constant, whatever the stream length)")
    typer.echo(f"device:        {engine.model.device} {str(engine.model.dtype).replace('torch.', '')}")


def _curriculum(text: str) -> list[tuple[int, ...]]:
    """'200:2,1000000000:2-8' -> [(200, 2), (1000000000, 2, 8)], with an error naming a malformed stage."""
    stages: list[tuple[int, ...]] = []
    for part in text.split(","):
        try:
            until, chunks = part.split(":")
            stages.append((int(until), *(int(c) for c in chunks.split("-", 1))))
        except ValueError:
            raise typer.BadParameter(f"curriculum stage {part!r} is not until_step:chunks or "
                                     "until_step:fewest-most") from None
    return stages


def _anneal(text: str | None) -> tuple[int, int] | None:
    """'3400:3800' -> (3400, 3800), with an error naming a malformed value."""
    if text is None:
        return None
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise typer.BadParameter(f"--anneal {text!r} is not FROM:TO (two step numbers)") from None
    return start, end


@app.command()
def train(
    output_dir: Annotated[str, typer.Option(help="Run directory (checkpoint/ and final adapter go here).")],
    base: Annotated[Optional[str], typer.Option(help="Base model (default: SmolLM2-135M-Instruct).")] = None,
    steps: int = 1000,
    lr: float = 2e-4,
    gate_lr_mult: Annotated[float, typer.Option(
        help="Learning rate of the global-memory gates, relative to --lr (they saturate at the memory rate).")] = 1.0,
    fifo_dropout: Annotated[float, typer.Option(
        help="Share of training sequences laid out without the FIFO, so that their answers must come through the "
             "global memory.")] = 0.0,
    chunk_end_share: Annotated[float, typer.Option(
        help="Share of training sequences cut so that their first answer starts in the last sixteenth of a "
             "closed chunk, where few compression tokens see it.")] = 0.35,
    question_echo_share: Annotated[float, typer.Option(
        help="Share of training sequences whose stream ends with the question as the user's message, as when a "
             "middleware absorbs the request before asking memory.")] = 0.15,
    short_tail_share: Annotated[float, typer.Option(
        help="Share of training sequences that leave at most 31 stream tokens in the open chunk, as right after "
             "a chunk closed.")] = 0.2,
    warmup_steps: int = 20,
    anneal: Annotated[Optional[str], typer.Option(
        help="FROM:TO: from step FROM the learning rate falls along a half cosine from its scheduled value to zero "
             "at step TO, where the run ends (TO <= --steps).")] = None,
    grad_accum: int = 1,
    tokens_per_micro_batch: int = 32768,
    sequences_per_micro_batch: Annotated[int, typer.Option(
        help="Sequences per micro-batch at every curriculum stage; overrides --tokens-per-micro-batch when > 0.")] = 0,
    curriculum: Annotated[str, typer.Option(
        help="until_step:closed_chunks stages, e.g. '200:2,500:4,1000000000:8'; a range 'until:2-8' draws each "
             "step's count uniformly.")] = "200:2,500:4,1000000000:8",
    families: Annotated[str, typer.Option(help="family:weight pairs.")] = "passkey:1",
    lm_weight: float = 0.0,
    end_weight: Annotated[float, typer.Option(
        help="Loss weight of the end-of-turn token after each answer (other answer tokens weigh 1): where the "
             "model decides a key is complete.")] = 1.0,
    seed: int = 0,
    save_every: int = 100,
    log_every: int = 10,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop (and checkpoint) after this long.")] = None,
    num_workers: int = 4,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward.")] = True,
    checkpoint_from_chunks: Annotated[int, typer.Option(
        help="Recompute activations only for sequences of at least this many chunks (short ones are faster "
             "without, and fit).")] = 0,
    config_json: Annotated[Optional[str], typer.Option(help="CometConfig fields as JSON.")] = None,
    profile_steps: Annotated[int, typer.Option(
        help="Profile this many optimizer steps (from the third on) and log the top operators and how busy the "
             "GPU was.")] = 0,
    fuse: Annotated[bool, typer.Option(
        help="Fuse the backbone's RMSNorms and MLP activations with torch.compile (fewer kernels a step).")] = False,
    smoke: Annotated[bool, typer.Option(help="Allow a tiny CPU run (tests).")] = False,
) -> None:
    """Train a CoMeT adapter on synthetic long-stream data (GPU; resumes from OUTPUT_DIR/checkpoint)."""
    from .training.trainer import TrainArgs
    from .training.trainer import train as run_train

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = TrainArgs(
        output_dir=output_dir, base=base, steps=steps, lr=lr, gate_lr_mult=gate_lr_mult, fifo_dropout=fifo_dropout,
        chunk_end_share=chunk_end_share, question_echo_share=question_echo_share,
        short_tail_share=short_tail_share,
        warmup_steps=warmup_steps, anneal=_anneal(anneal),
        grad_accum=grad_accum,
        tokens_per_micro_batch=tokens_per_micro_batch, sequences_per_micro_batch=sequences_per_micro_batch,
        curriculum=_curriculum(curriculum),
        families={a: float(b) for a, b in (p.split(":") for p in families.split(","))},
        lm_weight=lm_weight, end_weight=end_weight, seed=seed, save_every=save_every, log_every=log_every,
        max_minutes=max_minutes,
        num_workers=num_workers, gradient_checkpointing=gradient_checkpointing,
        checkpoint_from_chunks=checkpoint_from_chunks, profile_steps=profile_steps, fuse=fuse, smoke=smoke,
        comet=json.loads(config_json) if config_json else {},
    )
    result = run_train(args, log=typer.echo)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "history"}, default=str))


@eval_app.command("passkey")
def eval_passkey(
    lengths: Annotated[str, typer.Option(help="Comma-separated lengths; k and m suffixes allowed.")] = "1k,4k,16k",
    depths: Annotated[int, typer.Option(help="Number of depths from 0% to 100%.")] = 11,
    trials: int = 1,
    seed: int = 0,
    filler: str = "classic",
    model: ModelOpt = "default",
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    out: Annotated[Optional[str], typer.Option(help="Write rows (JSON), table (.md) and heat-map (.png) here.")] = None,
    resume_dir: Annotated[Optional[Path], typer.Option(
        help="Save progress here at --max-minutes and resume from it: for haystacks longer than one run.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        help="With --resume-dir: stop absorbing after this long, save, and exit with code 3.")] = None,
    key_digits: Annotated[str, typer.Option(
        help="Key lengths in digits: N, or A-B for numbers of A to B digits drawn uniformly.")] = "5-7",
) -> None:
    """Pass-key retrieval grid: lengths x depths."""
    from .evaluation import GridInterrupted, grid_heatmap, grid_markdown, passkey_grid

    if max_minutes is not None and (resume_dir is None or max_minutes <= 0):
        raise typer.BadParameter("--max-minutes needs --resume-dir and must be > 0")
    digits = _digit_range(key_digits)
    engine = _load(model, device, dtype=dtype)
    depth_list = [i / (depths - 1) for i in range(depths)] if depths > 1 else [0.5]
    t0 = time.perf_counter()
    deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else None
    try:
        rows = passkey_grid(engine, _ints(lengths), depth_list, trials=trials, seed=seed, filler=filler,
                            log=typer.echo, resume_dir=resume_dir, deadline=deadline, key_digits=digits)
    except GridInterrupted as stop:
        typer.echo(f"{stop}; run the same command again to continue")
        raise typer.Exit(3) from None
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    table = grid_markdown(rows)
    typer.echo(table)
    typer.echo(f"{len(rows)} cases in {time.perf_counter() - t0:.0f} s on {engine.model.device} "
               f"({str(engine.model.dtype).removeprefix('torch.')})")
    if out:
        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        (p / "passkey_rows.json").write_text(json.dumps(rows, indent=1))
        (p / "passkey_table.md").write_text(table + "\n")
        try:
            grid_heatmap(rows, p / "passkey_heatmap.png")
        except ImportError:
            typer.echo("matplotlib is not installed: no heat-map written (pip install 'comet-agents[eval]')")


def _digit_range(text: str) -> tuple[int, int]:
    """``--key-digits``: "N" or "A-B" as (fewest, most), or a BadParameter naming the problem."""
    from .evaluation import check_key_digits

    parts = text.split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
        return check_key_digits((lo, hi))
    except ValueError as error:
        raise typer.BadParameter(f"--key-digits must be N or A-B with 1 <= A <= B <= 18, got {text!r}") from error


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise typer.BadParameter(f"unknown {what} {bad} (known: {', '.join(known)})")
    return names


@eval_app.command("qa")
def eval_qa(
    families: Annotated[str, typer.Option(help="Comma-separated task families.")] =
        "user_behaviour,agent_trajectory,conversation",
    lengths: Annotated[str, typer.Option(help="Comma-separated stream lengths; k (1024) and m suffixes allowed.")] =
        "4k,16k,64k",
    items: Annotated[int, typer.Option(help="Items (stream + one question) per family and length.")] = 50,
    seed: Annotated[int, typer.Option(help="Held-out set seed (generator seeds >= 2**48: never trained on).")] = 0,
    systems: Annotated[str, typer.Option(help="Comma-separated subset of comet,truncation,full.")] =
        "comet,truncation,full",
    max_new_tokens: Annotated[int, typer.Option(help="Greedy answer length limit.")] = 24,
    qa_per_stream: Annotated[Optional[int], typer.Option(help="Use only the first K questions of each stream "
                                                              "(default: all of them).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Truncation budget in stream tokens "
                                                       "(default: m + fifo + chunk_size of the config).")] = None,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    out: Annotated[Optional[str], typer.Option(help="Write qa_rows.json and qa_table.md here.")] = None,
    verbose: Annotated[bool, typer.Option(help="Print every answer.")] = False,
) -> None:
    """Held-out event QA: CoMeT against truncation and full-attention baselines on the same items."""
    from .evaluation import SYSTEMS, native_window, qa_markdown, run_qa, truncation_budget
    from .training.data.common import FAMILIES

    fam_list = _names(families, tuple(FAMILIES), "families")
    sys_list = _names(systems, SYSTEMS, "systems")
    length_list = _ints(lengths)
    if items < 1 or any(n < 1 for n in length_list) or max_new_tokens < 1:
        raise typer.BadParameter("--items, --lengths and --max-new-tokens must be >= 1")
    t_load = time.perf_counter()
    engine = _load(model, device, dtype=dtype)
    t_load = time.perf_counter() - t_load
    used_budget = budget if budget is not None else truncation_budget(engine.config)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = run_qa(engine, fam_list, length_list, items, seed=seed, systems=sys_list, max_new_tokens=max_new_tokens,
                  qa_per_stream=qa_per_stream, budget=used_budget, log=typer.echo if verbose else None,
                  timings=timings)
    wall = time.perf_counter() - t0
    table = qa_markdown(rows, budget=used_budget, window=native_window(engine))
    typer.echo(table)
    typer.echo(f"{len(rows)} items in {wall:.0f} s on {engine.model.device} (model load {t_load:.0f} s; "
               + ", ".join(f"{s} {timings.get(s, 0.0):.0f} s" for s in sys_list) + ")")
    if out:
        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        meta = {"model": model, "adapter_fingerprint": engine.model.adapter_fingerprint,
                "device": str(engine.model.device), "dtype": str(engine.model.dtype).removeprefix("torch."),
                "families": fam_list, "lengths": length_list, "items": items,
                "seed": seed, "systems": sys_list,
                "max_new_tokens": max_new_tokens, "qa_per_stream": qa_per_stream, "truncation_budget": used_budget,
                "native_window": native_window(engine), "seconds": {"wall": wall, **timings}}
        (p / "qa_rows.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (p / "qa_table.md").write_text(table + "\n")


@eval_app.command("heatmap")
def eval_heatmap(
    rows: Annotated[Path, typer.Argument(help="passkey_rows.json written by `comet-agents eval passkey --out`.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    title: str = "pass key retrieval",
) -> None:
    """Draw the heat-map PNG of a saved pass-key grid (for grids run where matplotlib is not installed)."""
    from .evaluation import grid_heatmap

    try:
        data = json.loads(rows.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise typer.BadParameter(f"cannot read grid rows from {rows}: {error}") from error
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise typer.BadParameter(f"{rows} does not hold a list of grid rows")
    try:
        grid_heatmap(data, out, title=title)
    except ImportError as error:
        raise typer.BadParameter("matplotlib is not installed: pip install 'comet-agents[eval]'") from error
    except ValueError as error:
        raise typer.BadParameter(f"{rows}: {error}") from error
    typer.echo(f"wrote {out}")


@eval_app.command("preserve")
def eval_preserve(
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N of the 50 instructions.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy answer length limit.")] = 40,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    out: Annotated[Optional[str], typer.Option(help="Write preserve_rows.json and preserve_table.md here.")] = None,
    verbose: Annotated[bool, typer.Option(help="Print every pair of answers.")] = False,
) -> None:
    """Short-chat preservation: CoMeT (empty memory) against the plain base model on short instructions."""
    from .evaluation import SHORT_INSTRUCTIONS, base_preservation, preservation_markdown

    if limit is not None and limit < 1:
        raise typer.BadParameter("--limit must be >= 1")
    engine = _load(model, device, dtype=dtype)
    t0 = time.perf_counter()
    result = base_preservation(engine, SHORT_INSTRUCTIONS[:limit], max_new_tokens=max_new_tokens,
                               log=typer.echo if verbose else None)
    table = preservation_markdown(result)
    typer.echo(table)
    typer.echo(f"{result['n']} instructions in {time.perf_counter() - t0:.0f} s on {engine.model.device}")
    if out:
        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        (p / "preserve_rows.json").write_text(json.dumps(
            {"meta": {"model": model, "adapter_fingerprint": engine.model.adapter_fingerprint}, **result}, indent=1))
        (p / "preserve_table.md").write_text(table + "\n")


@bench_app.command("absorb")
def bench_absorb_cmd(
    tokens: Annotated[str, typer.Option(help="Comma-separated stream lengths; k and m suffixes allowed.")] = "8k,64k",
    model: ModelOpt = "default",
    device: DeviceOpt = None,
    out: Annotated[Optional[str], typer.Option(help="Write the results as JSON here.")] = None,
    explicit_mask: Annotated[bool, typer.Option(
        help="Give SDPA the padded causal mask tensor instead of its implicit causal attention (the only path "
             "before 2026-12-04): same results, for comparing speed.")] = False,
) -> None:
    """Absorb speed (text tokens/s) and peak memory against stream length."""
    from .benchmarks import as_dicts, bench_absorb, results_table

    engine = _load(model, device)
    engine.model.implicit_causal = not explicit_mask
    bench_absorb(engine, engine.config.chunk_size * 2)  # warm-up
    results = [bench_absorb(engine, n) for n in _ints(tokens)]
    typer.echo(results_table(results))
    if out:
        Path(out).write_text(json.dumps({"model": engine.model.describe(), "results": as_dicts(results)},
                                        indent=1, default=str))


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 serves the whole network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 7860,
    share: Annotated[bool, typer.Option(help="Also open a public Gradio share link (needs internet).")] = False,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
    store: Annotated[Optional[str], typer.Option(
        "--store", help="SQLAlchemy URL of the store (default: $COMET_AGENTS_STORE, else the user data "
                        "directory's SQLite file).")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant of the demo's sessions.")] = "demo",
    show_all_sessions: Annotated[bool, typer.Option(
        help="List every session of the tenant in every browser (default: each browser sees its own).")] = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MB.")] = 10.0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice).")] = None,
) -> None:
    """Serve the Gradio web demo (chat, event streams, pass key, sessions) at http://HOST:PORT."""
    try:
        from comet_demo.app import launch
        from comet_demo.backend import DemoBackend
    except ImportError as exc:
        typer.echo(f"error: the demo needs the 'demo' extra (pip install 'comet-agents[demo]'): {exc}", err=True)
        raise typer.Exit(1) from None
    if max_upload_mb <= 0:
        raise typer.BadParameter("--max-upload-mb must be > 0")
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    backend = DemoBackend(model, device=device, store=store, tenant=tenant, show_all_sessions=show_all_sessions,
                          max_upload_mb=max_upload_mb)
    typer.echo(f"comet-agents demo: serving on http://{host}:{port} (model {model!r} loading in the background)")
    launch(backend, host=host, port=port or None, share=share)


# ---- durable sessions: absorb, ask, sessions ------------------------------------------------------------------

sessions_app = typer.Typer(help="Durable memory sessions: list, history, events, fork, restore, forget, delete.",
                           no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")

SessionOpt = Annotated[str, typer.Option("--session", "-s", help="Session id.")]
TenantOpt = Annotated[str, typer.Option(help="Tenant the session belongs to.")]
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", help="SQLAlchemy URL of the store (default: $COMET_AGENTS_STORE, else a SQLite file in the user "
                    "data directory).")]


def _fail(exc: BaseException) -> "typer.Exit":
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _memory(session: str, tenant: str, store: str | None, model: str, device: str | None, *, create: bool = True):
    from .memory import ComeTMemory

    return ComeTMemory(session, tenant=tenant, store=store, model=model, device=device, create=create)


@contextlib.contextmanager
def _existing_session(session: str, tenant: str, store: str | None, model: str, device: str | None):
    """An existing session's ComeTMemory, closed afterwards; user errors become a clean CLI error."""
    try:
        mem = _memory(session, tenant, store, model, device, create=False)
        try:
            yield mem
        finally:
            mem.close()
    except _user_errors() as exc:
        raise _fail(exc) from None


def _store(store: str | None):
    from .store import open_store

    return open_store(store)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .events import EventError
    from .state import CorruptStateError, StateMismatchError
    from .store import StoreError

    return (EventError, StoreError, StateMismatchError, CorruptStateError, LookupError, ValueError)


def _text_events(text: str) -> list[str]:
    """Plain text as TextEvents: one per paragraph, long paragraphs cut to fit MAX_EVENT_CHARS."""
    import re

    from .events import MAX_EVENT_CHARS

    limit = MAX_EVENT_CHARS // 2
    out = []
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            out += [para[i: i + limit] for i in range(0, len(para), limit)]
    return out


def parse_input(data: bytes, name: str = "", fmt: str = "auto") -> list:
    """What ``absorb`` stores, validated: JSON Lines events or text (one TextEvent per paragraph).

    ``fmt`` is ``auto`` (a ``.jsonl`` / ``.ndjson`` name or a leading ``{`` means events), ``text`` or ``jsonl``.
    Raises :class:`~comet_agents.events.EventError` naming what is wrong (the line, for JSON Lines); the demo
    validates uploads with this same function.
    """
    from .events import EventError, parse_jsonl

    if fmt not in ("auto", "text", "jsonl"):
        raise ValueError("the format must be auto, text or jsonl")
    if fmt == "auto":
        fmt = "jsonl" if name.endswith((".jsonl", ".ndjson")) or data.lstrip()[:1] == b"{" else "text"
    if fmt == "jsonl":
        events = parse_jsonl(data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"input is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset "
                             f"{exc.start}") from None
        events = _text_events(text)
    if not events:
        raise EventError("the input holds no events")
    return events


@app.command("absorb")
def absorb_cmd(
    file: Annotated[str, typer.Argument(help="Text or JSON Lines events; '-' reads stdin.")] = "-",
    session: SessionOpt = "default",
    fmt: Annotated[str, typer.Option("--format", help="auto (.jsonl/.ndjson or a leading '{' = events), text, "
                                                      "or jsonl.")] = "auto",
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
) -> None:
    """Absorb a text file or JSON Lines events into a session (validated first: bad input stores nothing)."""
    import sys

    if fmt not in ("auto", "text", "jsonl"):
        raise typer.BadParameter("--format must be auto, text or jsonl")
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise _fail(exc) from None
    try:
        events = parse_input(data, file, fmt)
        mem = _memory(session, tenant, store, model, device)
        with mem:
            ids = mem.absorb(events)
            mem.snapshot()
            stats = mem.stats
    except _user_errors() as exc:
        raise _fail(exc) from None
    typer.echo(f"absorbed {len(ids)} event(s) into session {session!r} (ids {ids[0]}..{ids[-1]}); version "
               f"{stats.version}, {stats.events} events, {stats.tokens_absorbed + stats.tokens_pending:,} tokens, "
               f"state {stats.state_bytes / 2**20:.2f} MiB")


@app.command("ask")
def ask_cmd(
    question: Annotated[str, typer.Argument(help="The question.")],
    session: SessionOpt = "default",
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit.")] = 64,
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
) -> None:
    """Answer a question from a session's memory."""
    with _existing_session(session, tenant, store, model, device) as mem:
        answer = mem.recall(question, max_new_tokens=max_new_tokens)
    typer.echo(answer)


@sessions_app.command("list")
def sessions_list(tenant: TenantOpt = "default", store: StoreOpt = None) -> None:
    """Sessions of a tenant."""
    try:
        rows = _store(store).list_sessions(tenant)
    except _user_errors() as exc:
        raise _fail(exc) from None
    if not rows:
        typer.echo(f"no sessions for tenant {tenant!r}")
        return
    typer.echo(f"{'session':<24} {'version':>7} {'events':>7}  {'updated (UTC)':<19}  forked from")
    for r in rows:
        typer.echo(f"{r.session_id:<24} {r.head_version if r.head_version is not None else '-':>7} {r.last_seq:>7}  "
                   f"{r.updated_at:%Y-%m-%d %H:%M:%S}  {r.forked_from or ''}")


@sessions_app.command("history")
def sessions_history(session: SessionOpt, tenant: TenantOpt = "default", store: StoreOpt = None) -> None:
    """Versions of a session (* marks the head)."""
    try:
        st = _store(store)
        head = st.session(tenant, session).head_version
        rows = st.snapshots(tenant, session)
    except _user_errors() as exc:
        raise _fail(exc) from None
    typer.echo(f"  {'version':>7} {'parent':>6} {'branch':>6} {'last id':>7} {'events':>7} {'chunks':>7} "
               f"{'bytes':>10}  {'reason':<8} {'created (UTC)':<19}  state")
    for r in rows:
        state = "deleted by forget" if r.purged else ("pruned (replayable)" if not r.has_blob else r.sha256[:12])
        typer.echo(f"{'*' if r.version == head else ' '} {r.version:>7} {r.parent_version or '-':>6} {r.branch:>6} "
                   f"{r.last_seq:>7} {r.events:>7} {r.chunks:>7} {r.size:>10}  {r.reason:<8} "
                   f"{r.created_at:%Y-%m-%d %H:%M:%S}  {state}")


@sessions_app.command("events")
def sessions_events(
    session: SessionOpt,
    all_branches: Annotated[bool, typer.Option(help="Also events off the current branch, and tombstones.")] = False,
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
) -> None:
    """Events of a session (ids are what `sessions forget` takes)."""
    try:
        st = _store(store)
        if all_branches:
            rows = st.all_events(tenant, session)
        else:
            rows = list(st.lineage_events(tenant, session, st.chain(tenant, session)))
    except _user_errors() as exc:
        raise _fail(exc) from None
    for e in rows:
        text = "(forgotten)" if e.deleted else e.text.rstrip("\n").replace("\n", "\\n")
        typer.echo(f"{e.id:>7} {e.kind:<12} {text[:100]}")


@sessions_app.command("fork")
def sessions_fork(
    new_session: Annotated[str, typer.Argument(help="Id of the new session.")],
    session: SessionOpt,
    version: Annotated[Optional[int], typer.Option(help="Fork this version (default: the current state).")] = None,
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
) -> None:
    """Copy a session (or one of its versions) into a new session."""
    with _existing_session(session, tenant, store, model, device) as mem:
        child = mem.fork(new_session, version)
        events = child.stats.events
        child.close()
    typer.echo(f"forked {session!r} into {new_session!r} ({events} events)")


@sessions_app.command("restore")
def sessions_restore(
    version: Annotated[int, typer.Argument(help="Version to make current.")],
    session: SessionOpt,
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
) -> None:
    """Make a version current (later events stay in the log; later versions stay restorable)."""
    with _existing_session(session, tenant, store, model, device) as mem:
        mem.restore(version)
    typer.echo(f"session {session!r} restored to version {version}")


@sessions_app.command("forget")
def sessions_forget(
    event_ids: Annotated[list[int], typer.Argument(help="Ids of the events to forget (see `sessions events`).")],
    session: SessionOpt,
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
    model: ModelOpt = "default",
    device: DeviceOpt = None,
) -> None:
    """Erase events and every stored state derived from them; the memory is rebuilt without them."""
    with _existing_session(session, tenant, store, model, device) as mem:
        result = mem.forget(event_ids)
    purged = ", ".join(map(str, result.purged_versions)) or "none"
    typer.echo(f"forgot {len(result.forgotten)} event(s) of {session!r}; versions deleted: {purged}")


@sessions_app.command("delete")
def sessions_delete(
    session: SessionOpt,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    tenant: TenantOpt = "default",
    store: StoreOpt = None,
) -> None:
    """Delete a session with all its events and versions."""
    if not yes and not typer.confirm(f"Delete session {session!r} of tenant {tenant!r} and all its data?"):
        raise typer.Exit(1)
    try:
        _store(store).delete_session(tenant, session)
    except _user_errors() as exc:
        raise _fail(exc) from None
    typer.echo(f"deleted session {session!r}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
