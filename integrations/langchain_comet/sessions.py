"""ComeTSessions: the ComeTMemory of each (tenant, thread) an agent runs in.

LangChain addresses conversations by ``thread_id`` (``config={"configurable": {"thread_id": ...}}``) and users
by the runtime context (``agent.invoke(..., context=Ctx(tenant=...))``). A thread is a CoMeT session: the
memory handed to the integration is the *template*; other sessions are opened in its store, with its model and
options (and its class, so a ComeTMemory subclass applies to every thread). Without a thread id the template
itself is used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from comet_agents.memory import ComeTMemory

__all__ = ["ComeTSessions", "TenantKey"]

TenantKey = str | Callable[[Any], str | None] | None
"""Where the tenant is in the runtime context: an attribute / key name, or a function of the context."""


class ComeTSessions:
    """Opens and caches the ComeTMemory of each (tenant, session); the least recently used beyond
    ``max_open`` are closed (their state is snapshotted; reopening replays nothing).

    Args:
        memory: the template (``None``: ``ComeTMemory()``, the default model and store, made on first use).
        tenant_key: where the runtime context holds the tenant (default: its ``tenant`` attribute or key);
            ``None`` always uses the template's tenant.
        max_open: how many sessions stay open.
    """

    def __init__(self, memory: ComeTMemory | None = None, *, tenant_key: TenantKey = "tenant",
                 max_open: int = 64) -> None:
        if memory is not None and not isinstance(memory, ComeTMemory):
            raise TypeError(f"memory must be a ComeTMemory, got {type(memory).__name__}")
        if max_open < 1:
            raise ValueError("max_open must be >= 1")
        self._template = memory
        self.tenant_key = tenant_key
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, str], ComeTMemory] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def coerce(cls, memory: "ComeTMemory | ComeTSessions | None", **kwargs: Any) -> "ComeTSessions":
        return memory if isinstance(memory, ComeTSessions) else cls(memory, **kwargs)

    @property
    def template(self) -> ComeTMemory:
        with self._lock:
            if self._template is None:
                self._template = ComeTMemory()
            return self._template

    def get(self, session_id: str | None = None, tenant: str | None = None) -> ComeTMemory:
        """The memory of ``session_id`` (``None``: the template's) in ``tenant`` (``None``: the template's)."""
        base = self.template
        key = (tenant or base.tenant, session_id or base.session_id)
        if key == (base.tenant, base.session_id):
            return base
        with self._lock:
            mem = self._open.get(key)
            if mem is not None and not mem.closed:
                self._open.move_to_end(key)
                return mem
            mem = type(base)(
                key[1], tenant=key[0], store=base.store, model=base.engine, snapshot_every=base.snapshot_every,
                keep_snapshots=base.keep_snapshots, snapshot_on_close=base.snapshot_on_close,
                max_retries=base.max_retries, max_new_tokens=base.max_new_tokens,
            )
            self._open[key] = mem
            while len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                old.close()
            return mem

    def tenant_of(self, context: Any) -> str | None:
        """The tenant named by a runtime context (see ``tenant_key``), or None."""
        if context is None or self.tenant_key is None:
            return None
        if callable(self.tenant_key):
            value = self.tenant_key(context)
        elif isinstance(context, Mapping):
            value = context.get(self.tenant_key)
        else:
            value = getattr(context, self.tenant_key, None)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"the tenant in the runtime context must be a string, got {type(value).__name__}")
        return value or None

    def for_runtime(self, runtime: Any) -> ComeTMemory:
        """The memory of a LangGraph ``Runtime`` (or ``ToolRuntime``): its thread id and context's tenant."""
        info = getattr(runtime, "execution_info", None)
        thread = getattr(info, "thread_id", None)
        if thread is None:
            config = getattr(runtime, "config", None) or _current_config()
            thread = _thread_of(config)
        return self.get(_session_name(thread), self.tenant_of(getattr(runtime, "context", None)))

    def for_config(self, config: Mapping[str, Any] | None) -> ComeTMemory:
        """The memory of a RunnableConfig (its ``thread_id``; the tenant from the graph's runtime if any)."""
        context = None
        try:
            from langgraph.runtime import get_runtime

            context = get_runtime().context
        except Exception:  # not inside a graph node
            pass
        return self.get(_session_name(_thread_of(config)), self.tenant_of(context))

    def close(self) -> None:
        """Close every session opened here (not the template)."""
        with self._lock:
            while self._open:
                _, mem = self._open.popitem()
                mem.close()

    def __repr__(self) -> str:
        return f"ComeTSessions(template={self._template!r}, open={len(self._open)})"


def _current_config() -> Mapping[str, Any] | None:
    try:
        from langgraph.config import get_config

        return get_config()
    except Exception:
        return None


def _thread_of(config: Mapping[str, Any] | None) -> Any:
    return ((config or {}).get("configurable") or {}).get("thread_id")


def _session_name(thread: Any) -> str | None:
    if thread is None:
        return None
    if not isinstance(thread, (str, int)) or isinstance(thread, bool):
        raise TypeError(f"thread_id must be a string, got {type(thread).__name__}")
    name = str(thread)
    if not name.strip():
        raise ValueError("thread_id is empty")
    return name
