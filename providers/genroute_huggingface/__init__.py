"""genroute's Hugging Face provider: hf-inference's free tier through the real ``huggingface_hub`` client."""

from .options import FREE_SCOPE, NAME, HuggingFaceOptions
from .provider import HuggingFaceProvider
from .tasks import SERVED_TASKS

__all__ = ["FREE_SCOPE", "NAME", "SERVED_TASKS", "HuggingFaceOptions", "HuggingFaceProvider"]
