"""Synthetic agent trajectories: thought / tool_call / observation steps ending in a final answer.

Tools: ``web_search``, ``read_file``, ``edit_file``, ``run_shell``, ``sql_query``, ``http_get``. Observations are
long and noisy (source files, configs, search results, shell output, SQL tables, HTTP responses). A few *planted*
steps carry the facts that the questions ask about: a ``SELECT COUNT(*)`` result, exactly one failing call, one or
two file edits, a config value, a version printed by a command, a version reported by an HTTP API. Filler steps
never edit files, never fail, never count a whole table and never run the planted commands, so every answer is
unique; answers are computed from the generated event list.
"""

from __future__ import annotations

import dataclasses
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

from comet_agents.events import ChatMessage, Event, FinalAnswer, Observation, Thought, ToolCall, render_many

from . import vocab
from .common import QA, Sample, TokenCounter, approx_tokens, check_target, grow_stream, make_rng

__all__ = ["FAMILY", "TOOLS", "generate", "iter_filler_events"]

FAMILY = "agent_trajectory"
TOOLS = ("web_search", "read_file", "edit_file", "run_shell", "sql_query", "http_get")


def _t(block: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in block.replace("\n", "|").split("|") if x.strip())


# ----------------------------------------------------------------------------------------------- vocabulary

_CODE_VERBS = tuple(
    "parse load fetch compute validate render build merge resolve normalize serialize retry schedule export sync "
    "apply collect convert decode encode filter format group index lookup migrate notify refresh register remove "
    "reset save split summarize update upload verify".split()
)
_CODE_NOUNS = tuple(
    "config user order invoice token session report cache payload schema date price address event batch record "
    "customer cart discount shipment refund webhook profile permission template query result metric snapshot "
    "receipt ledger currency timezone".split()
)
_PACKAGES = tuple("billing core api storage auth reports notifications sync ingest pricing search utils".split())
_DIRS = ("src", "app", "lib", "services", "backend")
_LIBS = _t(
    "requests|numpy|pandas|fastapi|pydantic|httpx|polars|sqlalchemy|django|flask|pytest|rich|typer|uvicorn|"
    "celery|attrs|click|aiohttp|scipy|matplotlib|boto3|alembic|jinja2|marshmallow|orjson|structlog|tenacity"
)
_DOMAINS = _t(
    "docs.python.org|stackoverflow.com|github.com|realpython.com|dev.to|medium.com|readthedocs.io|"
    "developer.mozilla.org|news.ycombinator.com|blog.pragmaticengineer.com|martinfowler.com|lwn.net|"
    "learn.microsoft.com|postgresql.org|redis.io|kubernetes.io|docs.docker.com"
)
_TOPICS = _t(
    "connection pooling|timezone handling|retry with exponential backoff|rate limiting|database migrations|"
    "async context managers|structured logging|JSON schema validation|pagination|idempotency keys|"
    "unicode normalization|decimal rounding|CSV parsing|caching strategies|feature flags|dependency injection|"
    "webhook signatures|OAuth token refresh|bulk inserts|query optimisation|memory leaks|graceful shutdown|"
    "blue-green deployments|circuit breakers|N+1 queries|transaction isolation levels|flaky tests"
)
_SEARCH_TITLES = _t(
    "{Topic} in {Lib} - Official Documentation|How do I handle {topic} with {Lib}? - Stack Overflow|"
    "{Topic}: a practical guide|Understanding {topic} (with examples)|Common mistakes with {topic}|"
    "{Lib} {ver} release notes|Why {topic} matters in production|Debugging {topic} in {Lib}|"
    "{Topic} best practices for 2025|A deep dive into {topic}|{Lib} issue #{n}: problems with {topic}|"
    "Benchmarking {topic} approaches"
)
_SNIPPET_SENTENCES = _t(
    "This guide explains how {topic} works and when to use it.|The default settings are fine for most projects.|"
    "In {Lib} {ver} the behaviour changed slightly.|You can configure this with an environment variable.|"
    "Several users reported the same problem after upgrading.|The accepted answer suggests pinning the version.|"
    "Remember to close the connection in a finally block.|Benchmarks show a {m}% improvement.|"
    "See the migration notes for breaking changes.|The fix was merged in pull request #{n}.|"
    "Most of the time the problem is a missing await.|Avoid global state when testing {topic}.|"
    "A minimal reproducible example is shown below.|The maintainers recommend upgrading to {ver}."
)
_TABLES: dict[str, tuple[str, ...]] = {
    "orders": ("id", "customer_id", "status", "total", "created_at"),
    "users": ("id", "email", "country", "signup_date", "plan"),
    "products": ("id", "name", "price", "stock", "category"),
    "invoices": ("id", "customer_id", "amount", "currency", "due_date"),
    "tickets": ("id", "priority", "status", "assignee", "opened_at"),
    "sessions": ("id", "user_id", "device", "started_at", "duration_s"),
    "payments": ("id", "order_id", "method", "amount", "status"),
    "shipments": ("id", "order_id", "carrier", "status", "shipped_at"),
    "reviews": ("id", "product_id", "stars", "user_id", "created_at"),
    "subscriptions": ("id", "user_id", "plan", "status", "renews_at"),
    "employees": ("id", "name", "team", "city", "hired_at"),
    "refunds": ("id", "payment_id", "amount", "reason", "created_at"),
    "events": ("id", "user_id", "kind", "source", "created_at"),
}
_GROUPABLE = ("status", "country", "plan", "carrier", "currency", "method", "device", "team", "city", "category",
              "priority", "stars", "kind", "source", "reason")
_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded", "open", "closed", "active")
_CARRIERS = ("DHL", "UPS", "FedEx", "PostNL", "GLS", "USPS", "Royal Mail")
_PLANS = ("free", "starter", "pro", "team", "enterprise")
_COUNTRIES = ("PT", "ES", "FR", "DE", "NL", "US", "GB", "BR", "IN", "JP", "KE", "CA", "IT", "PL")
_CONFIG_KEYS = _t(
    "port|max_connections|timeout_seconds|worker_count|cache_ttl|log_level|batch_size|retry_limit|pool_size|"
    "max_upload_mb|session_timeout_minutes|rate_limit_per_minute|replica_count|queue_name|region|bind_address"
)
_SHELL_FILLER = _t(
    "ls -la {dir}|git log --oneline -n 15|pip install -r requirements.txt|grep -rn \"{symbol}\" {dir}/|"
    "pytest -q {test}|tail -n 30 /var/log/{service}.log|df -h|docker ps|wc -l {path}|git status|"
    "du -sh {dir}/*|env | grep -i {word}|make lint"
)
_VERSION_COMMANDS = (
    ("python --version", "the Python version", lambda r: f"Python 3.{r.randint(8, 13)}.{r.randint(0, 12)}"),
    ("node --version", "the Node.js version", lambda r: f"v{r.randint(16, 22)}.{r.randint(0, 20)}.{r.randint(0, 9)}"),
    ("git rev-parse --short HEAD", "the current commit", lambda r: _hex(r, 7)),
    ("psql --version", "the PostgreSQL version", lambda r: f"psql (PostgreSQL) {r.randint(12, 17)}.{r.randint(0, 9)}"),
    ("uname -r", "the kernel release", lambda r: f"{r.randint(5, 6)}.{r.randint(1, 19)}.{r.randint(0, 99)}-generic"),
    ("docker --version", "the Docker version",
     lambda r: f"Docker version {r.randint(20, 27)}.{r.randint(0, 9)}.{r.randint(0, 9)}, build {_hex(r, 7)}"),
)

_GENERIC_THOUGHTS = _t(
    "The output is long; only a few lines matter.|That was not what I expected. Let me look elsewhere.|"
    "So far so good. Next I should check the related code.|I should double-check this before answering.|"
    "This looks unrelated to the task, but worth keeping in mind.|Let me narrow this down.|"
    "I have a hypothesis; let me verify it.|The logs are noisy. I will focus on the errors.|"
    "That confirms the first part. Now the second part.|I need more context before changing anything.|"
    "Nothing suspicious here. Moving on.|Let me gather a bit more information first."
)
_TOOL_THOUGHTS: dict[str, tuple[str, ...]] = {
    "web_search": _t("Let me search for {q}.|I'll look up {q} online.|Maybe the docs say something about {q}.|"
                     "A quick search for {q} might help."),
    "read_file": _t("I need to see what {path} contains.|Let me open {path}.|{path} probably holds the relevant code.|"
                    "Let me read {path} to understand the structure."),
    "run_shell": _t("Let me run `{cmd}`.|I'll check with `{cmd}`.|Running `{cmd}` should tell me more."),
    "sql_query": _t("I'll query the {table} table.|Let me look at some rows in {table}.|"
                    "The {table} table should help here."),
    "http_get": _t("Let me fetch {url}.|I'll call the API at {url}.|Checking {url} directly."),
    "edit_file": _t("I'll fix {path} now.|Time to edit {path}.|The bug is in {path}; let me change it."),
}


# ----------------------------------------------------------------------------------------------- helpers


def _ident(rng: random.Random) -> str:
    return f"{rng.choice(_CODE_VERBS)}_{rng.choice(_CODE_NOUNS)}"


def _src_path(rng: random.Random) -> str:
    suffix = rng.choice(("", "s", "_utils", "_service"))
    return f"{rng.choice(_DIRS)}/{rng.choice(_PACKAGES)}/{rng.choice(_CODE_NOUNS)}{suffix}.py"


def _test_path(rng: random.Random) -> str:
    return f"tests/test_{rng.choice(_CODE_NOUNS)}{rng.choice(('', 's', '_api'))}.py"


def _config_path(rng: random.Random) -> str:
    return rng.choice(
        (
            f"config/{rng.choice(vocab.SERVICES)}.toml",
            f"deploy/{rng.choice(vocab.SERVICES)}/values.yaml",
            f"etc/{rng.choice(vocab.SERVICES)}.ini",
        )
    )


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y"):
        return noun[:-1] + "ies"
    return noun + "s"


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _version(rng: random.Random) -> str:
    return f"{rng.randint(0, 5)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}"


def _clip(lines: list[str], budget: int) -> str:
    """Join lines, stopping before ``budget`` characters (keeps at least one line)."""
    out: list[str] = []
    used = 0
    for line in lines:
        if out and used + len(line) + 1 > budget:
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)


def _config_value(rng: random.Random, key: str) -> str:
    if key == "port":
        return str(rng.choice((8080, 8443, 5432, 6379, 9000, 3000, 8000, 9092)) + rng.choice((0, 0, 1, 2, 10)))
    if key == "log_level":
        return rng.choice(("debug", "info", "warning", "error"))
    if key == "queue_name":
        return f"{rng.choice(_CODE_NOUNS)}-{rng.choice(('jobs', 'events', 'tasks'))}"
    if key == "region":
        return rng.choice(("eu-west-1", "us-east-2", "ap-southeast-1", "eu-central-1", "sa-east-1"))
    if key == "bind_address":
        return rng.choice(("0.0.0.0", "127.0.0.1", "10.0.3.17", "192.168.1.40"))
    return str(rng.choice((2, 4, 8, 16, 25, 30, 32, 50, 60, 64, 100, 120, 128, 250, 300, 500, 512, 1000, 3600)))


# ----------------------------------------------------------------------------------------------- observations


def _python_source(rng: random.Random, budget: int) -> str:
    lines = [f'"""{rng.choice(_CODE_VERBS).capitalize()} helpers for {rng.choice(_CODE_NOUNS)} handling."""', ""]
    imports = ["import json", "import logging", "import os", "import re", "from datetime import datetime",
               "from decimal import Decimal", "from typing import Any", "import time"]
    lines += sorted(rng.sample(imports, 3))
    lines += ["", "logger = logging.getLogger(__name__)", ""]
    while sum(len(x) + 1 for x in lines) < budget:
        fn, a, b = _ident(rng), rng.choice(_CODE_NOUNS), rng.choice(_CODE_NOUNS)
        lines += [
            "",
            f"def {fn}({a}, {b}=None):",
            f'    """{fn.replace("_", " ").capitalize()} for the given {a}."""',
        ]
        for _ in range(rng.randint(3, 9)):
            c = rng.choice(_CODE_NOUNS)
            lines.append(
                rng.choice(
                    (
                        f"    if {b} is None:\n        {b} = {{}}",
                        f"    {c} = {a}.get({c!r}, {rng.randint(0, 100)})",
                        f"    for {c} in {a}:\n        {b}[{c}.id] = {_ident(rng)}({c})",
                        f'    logger.debug("{_ident(rng)}: %s", {c})',
                        f"    {c} = {_ident(rng)}({a}, strict={rng.choice(('True', 'False'))})",
                        f"    if not {c}:\n        raise ValueError(\"missing {c}\")",
                        f"    {b}[{c!r}] = round({a}.{c} * {rng.randint(2, 99)} / 100, 2)",
                        f"    # TODO: {rng.choice(_CODE_VERBS)} {c} once the API supports it",
                    )
                )
            )
        lines.append(f"    return {rng.choice((a, b, 'None', 'True'))}")
    return _clip("\n".join(lines).split("\n"), budget)


def _config_file(rng: random.Random, path: str, budget: int, planted: tuple[str, str] | None = None) -> str:
    keys = list(_CONFIG_KEYS)
    rng.shuffle(keys)
    pairs = [(k, _config_value(rng, k)) for k in keys[: rng.randint(5, len(keys))]]
    if planted is not None:
        pairs = [(k, v) for k, v in pairs if k != planted[0]]
        pairs.insert(rng.randrange(len(pairs) + 1), planted)
    yaml = path.endswith(".yaml")
    lines = [f"# {path} - managed by {rng.choice(('ansible', 'terraform', 'helm', 'hand'))}"]
    if not yaml:
        lines.append(f"[{rng.choice(('server', 'service', 'main', 'app'))}]")
    for k, v in pairs:
        if (k, v) == planted:  # the planted pair must survive clipping
            budget = max(budget, sum(len(x) + 1 for x in lines) + len(k) + len(v) + 8)
        quoted = v if v.replace(".", "").isdigit() else f'"{v}"'
        lines.append(f"{k}: {v}" if yaml else f"{k} = {quoted}")
    for section in ("logging", "metrics", "database", "features"):
        if sum(len(x) + 1 for x in lines) > budget:
            break
        lines.append("")
        lines.append(f"{section}:" if yaml else f"[{section}]")
        for _ in range(rng.randint(2, 6)):
            k = f"{rng.choice(_CODE_NOUNS)}_{rng.choice(('enabled', 'path', 'level', 'interval', 'limit'))}"
            v = rng.choice(("true", "false", str(rng.randint(1, 999)), f'"/var/lib/{rng.choice(_CODE_NOUNS)}"'))
            lines.append(f"  {k}: {v}" if yaml else f"{k} = {v}")
    return _clip(lines, budget)


def _markdown(rng: random.Random, budget: int) -> str:
    lines = [f"# {rng.choice(_CODE_NOUNS).capitalize()} {rng.choice(('service', 'module', 'pipeline', 'API'))}", ""]
    while sum(len(x) + 1 for x in lines) < budget:
        lines.append(f"## {rng.choice(_TOPICS).capitalize()}")
        lines.append(" ".join(_prose_sentence(rng) for _ in range(rng.randint(2, 5))))
        lines.append("")
    return _clip(lines, budget)


def _prose_sentence(rng: random.Random) -> str:
    return rng.choice(_SNIPPET_SENTENCES).format(
        topic=rng.choice(_TOPICS), Lib=rng.choice(_LIBS), ver=_version(rng), m=rng.randint(5, 80),
        n=rng.randint(100, 9999),
    )


def _search_results(rng: random.Random, query: str, budget: int) -> str:
    lines: list[str] = []
    for i in range(1, 11):
        topic, lib = rng.choice(_TOPICS), rng.choice(_LIBS)
        title = rng.choice(_SEARCH_TITLES).format(
            Topic=topic.capitalize(), topic=topic, Lib=lib, ver=_version(rng), n=rng.randint(100, 9999)
        )
        slug = "-".join(title.lower().replace("?", "").replace(":", "").split()[:6])
        lines.append(f"{i}. {title}")
        lines.append(f"   https://{rng.choice(_DOMAINS)}/{slug}")
        lines.append("   " + " ".join(_prose_sentence(rng) for _ in range(rng.randint(1, 3))))
    return _clip(lines, budget)


def _sql_table(rng: random.Random, columns: tuple[str, ...], n_rows: int) -> list[str]:
    rows = [[_cell(rng, c) for c in columns] for _ in range(n_rows)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    head = " | ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "-+-".join("-" * w for w in widths)
    body = [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return [head, sep, *body, f"({n_rows} row{'s' if n_rows != 1 else ''})"]


def _cell(rng: random.Random, column: str) -> str:
    if column == "id" or column.endswith("_id"):
        return str(rng.randint(1, 99999))
    if column in ("total", "amount", "price"):
        return f"{rng.randint(1, 2000)}.{rng.randint(0, 99):02d}"
    if column.endswith(("_at", "_date")):
        return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if column == "email":
        return f"{rng.choice(vocab.FIRST_NAMES).lower()}.{rng.choice(vocab.SURNAMES).lower()}@example.com"
    if column == "status":
        return rng.choice(_STATUSES)
    if column == "country":
        return rng.choice(_COUNTRIES)
    if column == "plan":
        return rng.choice(_PLANS)
    if column == "carrier":
        return rng.choice(_CARRIERS)
    if column == "method":
        return rng.choice(("card", "paypal", "sepa", "ideal", "apple_pay"))
    if column == "device":
        return rng.choice(("ios", "android", "web", "desktop"))
    if column == "source":
        return rng.choice(("web", "app", "api", "import"))
    if column == "team":
        return rng.choice(("platform", "payments", "growth", "data", "support", "mobile"))
    if column in ("name", "assignee"):
        return f"{rng.choice(vocab.FIRST_NAMES)} {rng.choice(vocab.SURNAMES)}"
    if column in ("stars", "priority"):
        return str(rng.randint(1, 5))
    if column in ("stock", "duration_s", "n"):
        return str(rng.randint(0, 5000))
    if column == "currency":
        return rng.choice(("EUR", "USD", "GBP", "JPY", "BRL"))
    if column == "city":
        return rng.choice(vocab.CITIES)
    return rng.choice(_CODE_NOUNS)


def _sql_filler(rng: random.Random, budget: int) -> tuple[str, str]:
    table = rng.choice(sorted(_TABLES))
    cols = _TABLES[table]
    groupable = [c for c in cols if c in _GROUPABLE]
    if groupable and rng.random() < 0.35:
        col = rng.choice(groupable)
        query = f"SELECT {col}, COUNT(*) AS n FROM {table} GROUP BY {col} ORDER BY n DESC LIMIT 10;"
        rows = _sql_table(rng, (col, "n"), rng.randint(2, 10))
    else:
        picked = tuple(c for c in cols if rng.random() < 0.8) or cols[:2]
        n = rng.randint(3, 40)
        query = f"SELECT {', '.join(picked)} FROM {table} ORDER BY {picked[0]} DESC LIMIT {n};"
        rows = _sql_table(rng, picked, n)
    return query, _clip(rows, budget)


def _log_lines(rng: random.Random, service: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        msg = rng.choice(vocab.LOG_MESSAGES).format(
            word=rng.choice(_CODE_NOUNS), n=rng.randint(1, 99999), m=rng.randint(1, 64), ms=rng.randint(1, 4000),
            hex=_hex(rng, 8),
        )
        level = rng.choices(("INFO", "DEBUG", "WARN"), weights=(6, 3, 1), k=1)[0]
        out.append(f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                   f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z {level:<5} {service} {msg}")
    return out


def _shell_filler(rng: random.Random, budget: int) -> tuple[str, str]:
    d = rng.choice(_DIRS)
    cmd = rng.choice(_SHELL_FILLER).format(
        dir=d, symbol=_ident(rng), test=_test_path(rng), service=rng.choice(vocab.SERVICES), path=_src_path(rng),
        word=rng.choice(_CODE_NOUNS),
    )
    lines: list[str]
    if cmd.startswith("ls"):
        lines = [f"total {rng.randint(8, 400)}"] + [
            f"{rng.choice(('-rw-r--r--', 'drwxr-xr-x', '-rwxr-xr-x'))}  1 dev dev {rng.randint(96, 90000):>6} "
            f"{rng.choice(vocab.MONTHS)[:3]} {rng.randint(1, 28):>2} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} "
            f"{rng.choice(_CODE_NOUNS)}{rng.choice(('.py', '.md', '', '.toml', '.json', '_test.py'))}"
            for _ in range(40)
        ]
    elif cmd.startswith("git log"):
        lines = [f"{_hex(rng, 7)} {rng.choice(('fix', 'feat', 'chore', 'refactor', 'docs', 'test'))}: "
                 f"{rng.choice(_CODE_VERBS)} {rng.choice(_CODE_NOUNS)} "
                 f"{rng.choice(('handling', 'logic', 'tests', 'docs', 'types'))}"
                 for _ in range(15)]
    elif cmd.startswith("pip"):
        lines = []
        for lib in rng.sample(_LIBS, 12):
            ver = _version(rng)
            lines += [f"Collecting {lib}=={ver}",
                      f"  Downloading {lib}-{ver}-py3-none-any.whl ({rng.randint(10, 900)} kB)"]
        lines.append("Successfully installed " + " ".join(f"{lib}-{_version(rng)}" for lib in rng.sample(_LIBS, 8)))
    elif cmd.startswith("grep"):
        lines = [f"{_src_path(rng)}:{rng.randint(1, 400)}:    {_ident(rng)}({rng.choice(_CODE_NOUNS)})"
                 for _ in range(30)]
    elif cmd.startswith("pytest"):
        n = rng.randint(5, 80)
        lines = [
            "============================= test session starts ==============================",
            f"platform linux -- Python 3.11.{rng.randint(0, 9)}, pytest-8.{rng.randint(0, 3)}.{rng.randint(0, 3)}",
            f"collected {n} items",
            "",
            f"{cmd.split()[-1]} " + "." * min(n, 60) + " [100%]",
            "",
            f"{'=' * 30} {n} passed in {rng.randint(1, 30)}.{rng.randint(10, 99)}s {'=' * 31}",
        ]
    elif cmd.startswith("tail"):
        lines = _log_lines(rng, cmd.split("/")[-1].removesuffix(".log"), 30)
    elif cmd.startswith("df"):
        lines = ["Filesystem      Size  Used Avail Use% Mounted on"] + [
            f"/dev/{dev:<11} {rng.randint(20, 900)}G  {rng.randint(1, 500)}G  {rng.randint(1, 400)}G  "
            f"{rng.randint(1, 99)}% {mnt}"
            for dev, mnt in (("nvme0n1p2", "/"), ("nvme0n1p1", "/boot"), ("sdb1", "/data"), ("sdc1", "/backup"))
        ]
    elif cmd.startswith("docker"):
        lines = ["CONTAINER ID   IMAGE                      STATUS          PORTS"] + [
            f"{_hex(rng, 12)}   {rng.choice(vocab.SERVICES)}:{_version(rng):<10}   Up {rng.randint(1, 59)} minutes   "
            f"0.0.0.0:{rng.randint(3000, 9999)}->{rng.randint(80, 9000)}/tcp"
            for _ in range(rng.randint(2, 10))
        ]
    elif cmd.startswith("wc"):
        lines = [f"{rng.randint(10, 3000):>6} {cmd.split()[-1]}"]
    elif cmd.startswith("git status"):
        lines = ["On branch main", "Your branch is up to date with 'origin/main'.", "", "Untracked files:"] + [
            f"\t{_src_path(rng)}" for _ in range(rng.randint(1, 5))
        ]
    elif cmd.startswith("du"):
        lines = [f"{rng.randint(4, 900)}K\t{d}/{rng.choice(_CODE_NOUNS)}" for _ in range(rng.randint(3, 15))]
    elif cmd.startswith("env"):
        lines = [f"{rng.choice(_CODE_NOUNS).upper()}_{rng.choice(('URL', 'HOST', 'MODE', 'LEVEL'))}="
                 f"{rng.choice(_CODE_NOUNS)}" for _ in range(rng.randint(1, 6))]
    else:  # make lint
        lines = [f"ruff check {d}", "All checks passed!", f"mypy {d}",
                 f"Success: no issues found in {rng.randint(10, 90)} source files"]
    return cmd, _clip(lines, budget)


def _http_response(rng: random.Random, budget: int, status: str = "200 OK", body: dict | None = None) -> str:
    if body is None:
        body = {rng.choice(_CODE_NOUNS): _cell(rng, rng.choice(("id", "status", "email", "amount", "created_at")))
                for _ in range(rng.randint(3, 8))}
        body["items"] = [{"id": rng.randint(1, 9999), "name": rng.choice(_CODE_NOUNS), "score": round(rng.random(), 3)}
                         for _ in range(rng.randint(0, 12))]
    head = [
        f"HTTP/1.1 {status}",
        "content-type: application/json",
        f"date: {rng.choice(('Mon', 'Tue', 'Wed', 'Thu', 'Fri'))}, {rng.randint(1, 28)} "
        f"{rng.choice(vocab.MONTHS)[:3]} 2025 "
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} GMT",
        f"x-request-id: {_hex(rng, 16)}",
        "",
    ]
    return _clip(head + json.dumps(body, indent=2).split("\n"), budget)


def _url(rng: random.Random) -> str:
    return rng.choice(
        (
            f"https://api.{rng.choice(_CODE_NOUNS)}.example.com/v{rng.randint(1, 3)}/"
            f"{_plural(rng.choice(_CODE_NOUNS))}/{rng.randint(1, 9999)}",
            f"https://internal.example.net/{rng.choice(vocab.SERVICES)}/"
            f"{rng.choice(('status', 'stats', 'config', 'health'))}",
            f"https://{rng.choice(_DOMAINS)}/api/{rng.choice(_CODE_NOUNS)}?page={rng.randint(1, 9)}",
        )
    )


# ----------------------------------------------------------------------------------------------- steps


@dataclass
class _Agent:
    """Builds steps with optional call ids; filler steps are sized to a token budget."""

    rng: random.Random
    use_ids: bool
    id_style: int = 0
    n_calls: int = 0
    avoid_paths: list[str] = field(default_factory=list)
    avoid_urls: list[str] = field(default_factory=list)

    def call_id(self) -> str | None:
        if not self.use_ids:
            return None
        self.n_calls += 1
        if self.id_style == 0:
            return f"call_{self.n_calls}"
        return f"call_{''.join(self.rng.choice(string.ascii_letters + string.digits) for _ in range(8))}"

    def step(self, tool: str, arguments: dict, content: str, *, error: bool = False,
             thought: str | None = None) -> list[Event]:
        """Events of one step; call ids are given later, in stream order, by :meth:`with_ids`."""
        out: list[Event] = []
        if thought is not None:
            out.append(Thought(thought))
        out.append(ToolCall(tool, arguments))
        out.append(Observation(tool, content, error=error))
        return out

    def with_ids(self, events: list[Event]) -> list[Event]:
        if not self.use_ids:
            return events
        out: list[Event] = []
        cid: str | None = None
        for e in events:
            if isinstance(e, ToolCall):
                cid = self.call_id()
                e = dataclasses.replace(e, call_id=cid)
            elif isinstance(e, Observation):
                e = dataclasses.replace(e, call_id=cid)
            out.append(e)
        return out

    def _thought(self, tool: str, **fmt: str) -> str | None:
        r = self.rng.random()
        if r < 0.15:
            return None
        if r < 0.3:
            return self.rng.choice(_GENERIC_THOUGHTS)
        return self.rng.choice(_TOOL_THOUGHTS[tool]).format(**fmt)

    def filler(self, budget_chars: int) -> list[Event]:
        rng = self.rng
        tools = ("web_search", "read_file", "run_shell", "sql_query", "http_get")
        tool = rng.choices(tools, weights=(3, 4, 3, 2, 2), k=1)[0]
        budget = max(60, budget_chars)
        if tool == "web_search":
            q = f"{rng.choice(_LIBS)} {rng.choice(_TOPICS)}"
            return self.step(tool, {"query": q}, _search_results(rng, q, budget), thought=self._thought(tool, q=q))
        if tool == "read_file":
            kind = rng.random()
            if kind < 0.55:
                path = _src_path(rng)
                content = _python_source(rng, budget)
            elif kind < 0.8:
                path = _config_path(rng)
                content = _config_file(rng, path, budget)
            else:
                path = f"docs/{rng.choice(_CODE_NOUNS)}{rng.choice(('', '_guide', '_notes'))}.md"
                content = _markdown(rng, budget)
            if path in self.avoid_paths:
                path = f"vendor/{path}"
            return self.step(tool, {"path": path}, content, thought=self._thought(tool, path=path))
        if tool == "run_shell":
            cmd, out = _shell_filler(rng, budget)
            return self.step(tool, {"command": cmd}, out, thought=self._thought(tool, cmd=cmd))
        if tool == "sql_query":
            query, out = _sql_filler(rng, budget)
            table = query.split(" FROM ")[1].split()[0]
            return self.step(tool, {"query": query}, out, thought=self._thought(tool, table=table))
        url = _url(rng)
        while url in self.avoid_urls:
            url = _url(rng)
        return self.step(tool, {"url": url}, _http_response(rng, budget), thought=self._thought(tool, url=url))


# ----------------------------------------------------------------------------------------------- planted facts


@dataclass
class _Fact:
    kind: str
    events: list[Event]
    data: dict[str, str]
    emitted: bool = False


def _plant_sql_count(agent: _Agent) -> _Fact:
    rng = agent.rng
    table = rng.choice(sorted(_TABLES))
    count = str(rng.randint(12, 250000))
    query = rng.choice((f"SELECT COUNT(*) FROM {table};", f"SELECT COUNT(*) AS count FROM {table};",
                        f"select count(*) from {table};"))
    content = f" count\n{'-' * max(7, len(count) + 2)}\n {count}\n(1 row)"
    events = agent.step("sql_query", {"query": query}, content,
                        thought=rng.choice((f"Let me count the {table}.", f"How many {table} are there? Let me check.",
                                            f"I'll count the rows of {table}.")))
    return _Fact("sql_count", events, {"table": table, "count": count})


def _plant_error(agent: _Agent) -> _Fact:
    rng = agent.rng
    variant = rng.choice(("run_shell", "read_file", "http_get", "sql_query", "web_search"))
    if variant == "run_shell":
        test = _test_path(rng)
        fn = _ident(rng)
        code = str(rng.choice((1, 1, 2, 4, 127)))
        cmd = rng.choice((f"pytest -q {test}", f"python -m {rng.choice(_PACKAGES)}.{fn}", f"make test TEST={test}"))
        content = (f"Traceback (most recent call last):\n"
                   f"  File \"{_src_path(rng)}\", line {rng.randint(10, 400)}, in {fn}\n"
                   f"    {rng.choice(_CODE_NOUNS)} = {rng.choice(_CODE_NOUNS)}[{rng.choice(_CODE_NOUNS)!r}]\n"
                   f"KeyError: {rng.choice(_CODE_NOUNS)!r}\nexit code: {code}")
        events = agent.step("run_shell", {"command": cmd}, content, error=True, thought=f"Let me run `{cmd}`.")
        return _Fact("error", events, {"tool": "run_shell", "command": cmd, "exit_code": code})
    if variant == "read_file":
        path = _src_path(rng).replace(".py", f"_{rng.choice(('old', 'v2', 'legacy', 'backup'))}.py")
        content = f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'"
        events = agent.step("read_file", {"path": path}, content, error=True, thought=f"Maybe the code is in {path}.")
        return _Fact("error", events, {"tool": "read_file", "path": path})
    if variant == "http_get":
        url = _url(rng)
        code = rng.choice(("404 Not Found", "500 Internal Server Error", "503 Service Unavailable", "403 Forbidden",
                           "502 Bad Gateway"))
        content = f"HTTP/1.1 {code}\ncontent-type: text/html\n\n<html><body><h1>{code}</h1></body></html>"
        events = agent.step("http_get", {"url": url}, content, error=True, thought=f"Let me fetch {url}.")
        return _Fact("error", events, {"tool": "http_get", "url": url, "status": code.split()[0]})
    if variant == "sql_query":
        table = f"{rng.choice(_CODE_NOUNS)}_{rng.choice(('archive', 'log', 'v2', 'history', 'staging'))}"
        content = (f'ERROR:  relation "{table}" does not exist\n'
                   f"LINE 1: SELECT * FROM {table} LIMIT 5;\n                      ^")
        events = agent.step("sql_query", {"query": f"SELECT * FROM {table} LIMIT 5;"}, content, error=True,
                            thought=f"There might be a {table} table.")
        return _Fact("error", events, {"tool": "sql_query", "table": table})
    q = f"{rng.choice(_LIBS)} {rng.choice(_TOPICS)}"
    content = f"Error 429: rate limit exceeded, retry after {rng.randint(5, 120)} seconds"
    events = agent.step("web_search", {"query": q}, content, error=True, thought=f"Let me search for {q}.")
    return _Fact("error", events, {"tool": "web_search", "query": q})


def _plant_edit(agent: _Agent, path: str) -> _Fact:
    rng = agent.rng
    fn = _ident(rng)
    a, b = rng.choice(_CODE_NOUNS), rng.choice(_CODE_NOUNS)
    old, new = rng.choice(
        (
            (f"if {a} > {b}:", f"if {a} >= {b}:"),
            (f"return {a}[0]", f"return {a}[-1]"),
            (f"{a} = {b}.get('{a}')", f"{a} = {b}.get('{a}', 0)"),
            (f"timeout={rng.randint(1, 9)}", f"timeout={rng.randint(10, 60)}"),
            (f"for {a} in {b}s:", f"for {a} in sorted({b}s):"),
            (f"datetime.now()", f"datetime.now(timezone.utc)"),
        )
    )
    content = f"Applied 1 edit to {path} ({rng.randint(1, 6)} lines changed)."
    events = agent.step("edit_file", {"path": path, "old": old, "new": new}, content,
                        thought=rng.choice((f"The bug is in {fn}; I'll fix {path}.", f"I'll edit {path} now.",
                                            f"Changing {path} should fix it.")))
    return _Fact("edit", events, {"path": path, "function": fn})


def _plant_config(agent: _Agent, budget: int) -> _Fact:
    rng = agent.rng
    path = _config_path(rng)
    key = rng.choice(_CONFIG_KEYS)
    value = _config_value(rng, key)
    content = _config_file(rng, path, budget, planted=(key, value))
    events = agent.step("read_file", {"path": path}, content, thought=f"The setting should be in {path}.")
    return _Fact("config", events, {"path": path, "key": key, "value": value})


def _plant_version(agent: _Agent) -> _Fact:
    rng = agent.rng
    cmd, what, make = rng.choice(_VERSION_COMMANDS)
    out = make(rng)
    events = agent.step("run_shell", {"command": cmd}, out, thought=f"Let me check {what}.")
    return _Fact("version", events, {"command": cmd, "output": out, "what": what})


def _plant_api_version(agent: _Agent) -> _Fact:
    rng = agent.rng
    lib = rng.choice(_LIBS)
    url = f"https://pypi.org/pypi/{lib}/json"
    version = _version(rng)
    body = {"info": {"name": lib, "version": version, "summary": f"{rng.choice(_TOPICS).capitalize()} for Python",
                     "requires_python": f">=3.{rng.randint(7, 10)}"},
            "urls": [{"filename": f"{lib}-{version}-py3-none-any.whl", "size": rng.randint(10_000, 900_000)}]}
    events = agent.step("http_get", {"url": url}, _http_response(rng, 2000, body=body),
                        thought=f"PyPI should know the latest {lib} release.")
    agent.avoid_urls.append(url)
    return _Fact("api_version", events, {"lib": lib, "url": url, "version": version})


# ----------------------------------------------------------------------------------------------- tasks & QAs

_TASKS: dict[str, tuple[str, ...]] = {
    "sql_count": _t("How many {table} are in the database?|Can you count the {table} in our production DB?|"
                    "I need the total number of {table}. Please check the database."),
    "edit": _t("The test suite is failing; please find the bug and fix it.|Users report wrong results from {function}. "
               "Please fix it.|{function} crashes on some inputs; can you fix it?"),
    "config": _t("What is {key} set to in our config?|Check the service configuration and tell me the value of {key}.|"
                 "Find the {key} setting for me."),
    "api_version": _t("What's the latest version of {lib}?|Find out which {lib} version is current on PyPI.|"
                      "Which {lib} release should we upgrade to?"),
    "version": _t("Which version does the build machine report for `{command}`?|Check {what} on the build machine.|"
                  "I need to know {what} on the server."),
}
_FINALS: dict[str, tuple[str, ...]] = {
    "sql_count": _t("There are {count} {table}.|The database has {count} {table}.|{count} {table} in total."),
    "edit": _t("Fixed {function} in {path}.|The bug was in {path}; it is fixed now.|Patched {path}; tests pass."),
    "config": _t("{key} is {value}.|{key} is set to {value} in {path}.|The value of {key} is {value}."),
    "api_version": _t("The latest {lib} release is {version}.|{lib} {version} is the current version."),
    "version": _t("It reports {output}.|`{command}` prints {output}."),
}
_SYSTEM = _t(
    "You are a careful software agent. Use the tools to gather facts before answering.|"
    "You are an autonomous assistant with access to: web_search, read_file, edit_file, run_shell, sql_query, http_get.|"
    "You are a data and ops assistant. Think step by step and call tools when needed."
)

_QA_FORMS: dict[str, tuple[str, ...]] = {
    "sql_count": _t("What did the sql_query tool return for the count of {table}?|How many {table} did the count "
                    "query return?|What was the row count of the {table} table?"),
    "error_tool": _t("Which tool call returned an error?|Which tool failed?|Which step failed? Name the tool."),
    "error_command": _t("Which command failed?|What shell command returned an error?"),
    "error_exit_code": _t("What exit code did the failing command return?|With which exit code did `{command}` fail?"),
    "error_path": _t("Which file could not be read?|Which path did read_file fail on?"),
    "error_url": _t("Which URL returned an error?|Which http_get request failed?"),
    "error_status": _t("What HTTP status code did the failed request return?|What status code did {url} return?"),
    "error_table": _t("Which table did not exist?|Which table was missing from the database?"),
    "edit_only": _t("Which file was edited?|Which file did the agent modify?|What file did the agent change?"),
    "edit_first": _t("Which file was edited first?|Which file did the agent modify first?"),
    "edit_last": _t("Which file was edited last?|Which file did the agent modify most recently?"),
    "config": _t("What is {key} set to in {path}?|What value does {key} have in {path}?"),
    "version": _t("What did `{command}` print?|What was the output of `{command}`?"),
    "api_version": _t("According to {url}, what is the latest version of {lib}?|"
                      "What version of {lib} did PyPI report?"),
    "final": _t("What was the final answer?|What did the agent answer in the end?|What was the agent's final answer?"),
    "tool_count": _t("How many times did the agent call {tool}?|How many {tool} calls were made?"),
    "first_tool": _t("Which tool did the agent use first?|What was the first tool called?"),
    "first_search": _t("What was the first web search query?|What did the agent search for first?"),
}


def _questions(events: list[Event], facts: list[_Fact], rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, question, answer) candidates computed from the trajectory."""
    calls = [e for e in events if isinstance(e, ToolCall)]
    finals = [e for e in events if isinstance(e, FinalAnswer)]
    out: list[tuple[str, str, str]] = []

    def q(kind: str, **fmt: str) -> str:
        return rng.choice(_QA_FORMS[kind]).format(**fmt)

    # Pair each observation with its call (they are adjacent: call, observation).
    pairs = [(events[i - 1], e) for i, e in enumerate(events) if isinstance(e, Observation)]
    errors = [(c, o) for c, o in pairs if o.error]
    if len(errors) == 1:
        call, ob = errors[0]
        assert isinstance(call, ToolCall)
        out.append(("error_tool", q("error_tool"), call.tool))
        if call.tool == "run_shell":
            cmd = str(call.arguments["command"])
            out.append(("error_command", q("error_command"), cmd))
            out.append(("error_exit_code", q("error_exit_code", command=cmd), ob.content.rsplit("exit code: ", 1)[1]))
        elif call.tool == "read_file":
            out.append(("error_path", q("error_path"), str(call.arguments["path"])))
        elif call.tool == "http_get":
            url = str(call.arguments["url"])
            out.append(("error_url", q("error_url"), url))
            out.append(("error_status", q("error_status", url=url), ob.content.split()[1]))
        elif call.tool == "sql_query":
            out.append(("error_table", q("error_table"), ob.content.split('"')[1]))
    edits = [str(c.arguments["path"]) for c in calls if c.tool == "edit_file"]
    if edits:
        if len(set(edits)) == 1:
            out.append(("edit_only", q("edit_only"), edits[0]))
        else:
            out.append(("edit_first", q("edit_first"), edits[0]))
            out.append(("edit_last", q("edit_last"), edits[-1]))
    for fact in facts:
        if not fact.emitted:
            continue
        d = fact.data
        if fact.kind == "sql_count":
            out.append(("sql_count", q("sql_count", table=d["table"]), d["count"]))
        elif fact.kind == "config":
            out.append(("config", q("config", key=d["key"], path=d["path"]), d["value"]))
        elif fact.kind == "version":
            out.append(("version", q("version", command=d["command"]), d["output"]))
        elif fact.kind == "api_version":
            out.append(("api_version", q("api_version", url=d["url"], lib=d["lib"]), d["version"]))
    if finals:
        out.append(("final", q("final"), finals[-1].text))
    if calls:
        tool = rng.choice(sorted({c.tool for c in calls}))
        out.append(("tool_count", q("tool_count", tool=tool), str(sum(c.tool == tool for c in calls))))
        out.append(("first_tool", q("first_tool"), calls[0].tool))
    searches = [c for c in calls if c.tool == "web_search"]
    if searches:
        out.append(("first_search", q("first_search"), str(searches[0].arguments["query"])))
    return out


# ----------------------------------------------------------------------------------------------- generation


def iter_filler_events(rng: random.Random, max_obs_chars: int = 400) -> Iterator[Event]:
    """An endless stream of successful agent steps (no edits, no errors), e.g. as passkey filler."""
    agent = _Agent(rng, use_ids=rng.random() < 0.3)
    while True:
        yield from agent.with_ids(agent.filler(rng.randint(80, max(80, max_obs_chars))))


def generate(seed: int, target_tokens: int, count_tokens: TokenCounter = approx_tokens) -> Sample:
    """An agent trajectory of about ``target_tokens`` tokens with 4-7 QAs about it."""
    check_target(target_tokens)
    rng = make_rng(seed, FAMILY)
    agent = _Agent(random.Random(rng.getrandbits(64)), use_ids=rng.random() < 0.5, id_style=rng.randint(0, 1))
    qa_rng = random.Random(rng.getrandbits(64))
    small = target_tokens < 1500
    obs_cap_chars = max(160, min(3000, target_tokens * 4 // 10))

    facts: list[_Fact] = []
    if rng.random() < 0.7:
        facts.append(_plant_sql_count(agent))
    if rng.random() < 0.85:
        facts.append(_plant_error(agent))
        for e in facts[-1].events:
            if isinstance(e, ToolCall) and e.tool == "read_file":
                agent.avoid_paths.append(str(e.arguments["path"]))
    if rng.random() < 0.8:
        edit_path = _src_path(agent.rng)
        facts.append(_plant_edit(agent, edit_path))
        if rng.random() < 0.35 and not small:
            other = _src_path(agent.rng)
            facts.append(_plant_edit(agent, other if rng.random() < 0.7 else edit_path))
    if rng.random() < 0.5:
        facts.append(_plant_config(agent, min(obs_cap_chars, 900)))
        agent.avoid_paths.append(facts[-1].data["path"])
    if rng.random() < 0.45:
        facts.append(_plant_version(agent))
    if rng.random() < 0.45:
        facts.append(_plant_api_version(agent))
    if not any(f.kind in _FINALS for f in facts):
        facts.append(_plant_sql_count(agent))
    # Keep the error before the edits (the agent fixes what failed), otherwise shuffle.
    rng.shuffle(facts)
    if rng.random() < 0.7:
        facts.sort(key=lambda f: {"error": 0, "edit": 2}.get(f.kind, 1))
    scenario_fact = rng.choice([f for f in facts if f.kind in _FINALS])
    fmt = dict(scenario_fact.data)
    task = rng.choice(_TASKS[scenario_fact.kind]).format(**fmt)
    final = rng.choice(_FINALS[scenario_fact.kind]).format(**fmt)
    final = final[0].upper() + final[1:]

    head: list[Event] = []
    if rng.random() < 0.5:
        head.append(ChatMessage("system", rng.choice(_SYSTEM)))
    head.append(ChatMessage("user", task))
    tail: list[Event] = []
    if rng.random() < 0.6:
        tail.append(Thought(rng.choice(("I have everything I need.", "That answers the question.",
                                        "Done; let me summarise."))))
    tail.append(FinalAnswer(final))

    # Planted steps are due at increasing fractions of the stream; the rest is filler.
    due = sorted(rng.uniform(0.05, 0.85) for _ in facts)
    pending = list(zip(due, facts))
    planted_tokens = [count_tokens(render_many(f.events)) for f in facts]
    body: list[Event] = []

    def next_piece(remaining: int) -> list[Event]:
        used = target_tokens - remaining
        left = sum(planted_tokens[len(facts) - len(pending):])
        if pending and (used >= pending[0][0] * target_tokens or remaining <= left + 40):
            _, fact = pending.pop(0)
            fact.emitted = True
            piece = agent.with_ids(fact.events)
        else:
            room = max(0, remaining - left - 40) * 4
            piece = agent.with_ids(agent.filler(min(obs_cap_chars, rng.randint(80, obs_cap_chars), max(60, room))))
        body.extend(piece)
        return piece

    stream = grow_stream(next_piece, target_tokens, count_tokens, head=head, tail=tail)
    events = head + body + tail
    cands = _questions(events, facts, qa_rng)
    must = [c for c in cands if c[0] in ("final", "sql_count", "error_tool", "edit_only", "edit_last")]
    rest = [c for c in cands if c not in must]
    chosen = qa_rng.sample(must, min(len(must), 3)) + qa_rng.sample(rest, min(len(rest), qa_rng.randint(2, 4)))
    meta = {
        "seed": seed,
        "target_tokens": target_tokens,
        "tokens": count_tokens(stream),
        "events": len(events),
        "tool_calls": sum(isinstance(e, ToolCall) for e in events),
        "facts": [{"kind": f.kind, **f.data} for f in facts],
        "qa_kinds": [c[0] for c in chosen],
    }
    return Sample(FAMILY, stream, [QA(c[1], c[2]) for c in chosen], meta)
