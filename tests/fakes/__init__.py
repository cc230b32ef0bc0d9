"""Local fakes of genroute's remote services for tests (see README.md in this directory)."""

from .replicate_server import (
    ApiError,
    Delivery,
    FakeModel,
    FakePrediction,
    FakeReplicate,
    Fault,
    Faults,
    RequestRecord,
    default_catalogue,
    sign_webhook,
)

__all__ = [
    "ApiError",
    "Delivery",
    "FakeModel",
    "FakePrediction",
    "FakeReplicate",
    "Fault",
    "Faults",
    "RequestRecord",
    "default_catalogue",
    "sign_webhook",
]
