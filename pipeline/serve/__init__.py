"""`pipeline serve`: a local web app over the runs in the cache (search, explain, browse)."""
from .app import MAX_UPLOAD, create_app
from .index import VectorIndex
from .state import ServeError, Server

__all__ = ["MAX_UPLOAD", "Server", "ServeError", "VectorIndex", "create_app"]
