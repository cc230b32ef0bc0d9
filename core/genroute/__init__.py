"""genroute: send each generative-AI request to the cheapest provider that meets the quality asked,
within a budget, with one result store and one budget ledger.

    from genroute import Router, TextToImage
    with Router() as router:
        result = router.run(TextToImage(prompt="a lighthouse at dusk", tier="fast"))
"""

from .config import Settings, load_settings
from .errors import (
    ArtifactMissing,
    BatchInterrupted,
    BudgetExceeded,
    ConfigError,
    DeadlineExceeded,
    GenrouteError,
    InputRefused,
    InvalidRequest,
    NoRouteAvailable,
    NotABatch,
    OverBudget,
    ProviderError,
    UnexpectedError,
)
from .hookspecs import hookimpl
from .media import MediaInput
from .provider import Provider, RunContext, catalogue_offers
from .router import BatchItem, RoutePlan, Router, TextStream
from .types import (
    Artifact,
    ImageToImage,
    ImageToVideo,
    Inpaint,
    Offer,
    OutputFile,
    ProviderOutput,
    RemoveBackground,
    Request,
    RequestModel,
    Result,
    Segment,
    SpeechToText,
    TextGeneration,
    TextToImage,
    TextToSpeech,
    TextToVideo,
    Upscale,
    Usage,
    parse_request,
)

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactMissing",
    "BatchInterrupted",
    "BatchItem",
    "BudgetExceeded",
    "ConfigError",
    "DeadlineExceeded",
    "GenrouteError",
    "ImageToImage",
    "ImageToVideo",
    "Inpaint",
    "InputRefused",
    "InvalidRequest",
    "MediaInput",
    "NoRouteAvailable",
    "NotABatch",
    "Offer",
    "OutputFile",
    "OverBudget",
    "Provider",
    "ProviderError",
    "ProviderOutput",
    "RemoveBackground",
    "Request",
    "RequestModel",
    "Result",
    "RoutePlan",
    "Router",
    "RunContext",
    "Segment",
    "Settings",
    "SpeechToText",
    "TextGeneration",
    "TextStream",
    "TextToImage",
    "TextToSpeech",
    "TextToVideo",
    "UnexpectedError",
    "Upscale",
    "Usage",
    "catalogue_offers",
    "hookimpl",
    "load_settings",
    "parse_request",
]
