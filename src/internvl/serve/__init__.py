"""`internvl serve`: an OpenAI-compatible HTTP server with continuous batching and a web chat page.

Importing this package does not import FastAPI; `app.py` and `server.py` do (the `serve` extra).
"""

from .config import DEFAULT_MODEL, ServeConfig

__all__ = ["DEFAULT_MODEL", "ServeConfig"]
