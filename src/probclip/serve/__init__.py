"""The HTTP search service: ``create_app`` (FastAPI) over ``probclip.search.SearchIndex`` objects, and its web page.

Modules: ``app`` (routes), ``schemas`` (request/response bodies), ``batching`` (grouped queries in a worker
thread), ``limits`` (bytes and pixels), ``middleware`` (API key, body bound, metrics), ``metrics`` (Prometheus text),
``uncertainty_scale`` (percentiles of u), ``cli`` (``probclip serve``), ``static/`` (the page).
"""

from .app import create_app
from .limits import ServiceLimits

__all__ = ["create_app", "ServiceLimits"]
