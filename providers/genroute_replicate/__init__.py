"""genroute_replicate: genroute's Replicate provider, shaped like any third-party plugin.

Install it (it is part of the genroute distribution) and set ``REPLICATE_API_TOKEN``; its catalogue,
prices and options live in ``plugins.toml`` under ``[providers.replicate]``.
"""

from .options import ReplicateOptions
from .plugin import ReplicatePlugin
from .provider import ReplicateProvider

__all__ = ["ReplicateOptions", "ReplicatePlugin", "ReplicateProvider"]
