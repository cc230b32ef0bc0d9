"""genroute's built-in mock provider: offline, deterministic, every task."""

from .provider import MockOptions, MockProvider

__all__ = ["MockOptions", "MockProvider"]
