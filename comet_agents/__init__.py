"""comet-agents: constant-size CoMeT memory for LLM agents and user event streams."""

from typing import TYPE_CHECKING, Any

from .config import CometConfig
from .engine import MemoryEngine
from .modeling import CometModel
from .state import MemoryState

if TYPE_CHECKING:
    from .memory import CoMeTMemory, ComeTMemory, absorb_batch

__all__ = ["CometConfig", "CometModel", "MemoryEngine", "MemoryState", "ComeTMemory", "CoMeTMemory", "absorb_batch"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ComeTMemory pulls in SQLAlchemy; import it on first use only.
    if name in ("ComeTMemory", "CoMeTMemory", "absorb_batch"):
        from . import memory

        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
