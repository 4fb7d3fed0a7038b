"""The comet-agents Gradio demo (``comet-agents demo``): chat, event streams, pass key and sessions.

:mod:`comet_demo.backend` holds the logic (no UI, no Gradio import); :mod:`comet_demo.app` the Gradio app.
"""

from .backend import DemoBackend, DemoError

__all__ = ["DemoBackend", "DemoError"]
