"""Feature extractors, one module each, registered by name in `pipeline.registry.EXTRACTORS`."""
from . import audio, clap, clip, imported, inception_v3, logmel, resnet152, vgg16, vggish  # noqa: F401  (registers the extractors)
from .base import Extractor, OutputSpec

__all__ = ["Extractor", "OutputSpec"]
