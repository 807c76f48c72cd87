"""Feature extractors, one module each, registered by name in `pipeline.registry.EXTRACTORS`."""
from . import (  # noqa: F401  (registers the extractors)
    audio,
    clap,
    clip,
    imported,
    inception_v3,
    logmel,
    resnet152,
    vgg16,
    vggish,
)
from .base import Extractor, OutputSpec

__all__ = ["Extractor", "OutputSpec"]
