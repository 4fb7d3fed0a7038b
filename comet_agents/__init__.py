"""comet-agents: constant-size CoMeT memory for LLM agents and user event streams."""

from typing import TYPE_CHECKING, Any

from .config import CometConfig
from .modeling import CometModel
from .state import MemoryState

if TYPE_CHECKING:
    from .memory import CoMeTMemory, ComeTMemory

__all__ = ["CometConfig", "CometModel", "MemoryState", "ComeTMemory", "CoMeTMemory"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ComeTMemory pulls in SQLAlchemy; import it on first use only.
    if name in ("ComeTMemory", "CoMeTMemory"):
        from . import memory

        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
