"""comet-agents: constant-size CoMeT memory for LLM agents and user event streams."""

from .config import CometConfig
from .modeling import CometModel
from .state import MemoryState

__all__ = ["CometConfig", "CometModel", "MemoryState"]
__version__ = "0.1.0"
