"""Dataset adapters, one module per corpus, each registered by name in `pipeline.registry.DATASETS`."""
from . import (  # noqa: F401,E501  (registers the adapters)
    ave,
    coco_captions,
    cub,
    flickr8k_audio,
    folder,
    mix,
    places_audio,
    speech_coco,
    spoken_scenes,
    spoken_shapes,
    spokencoco,
    synthetic,
    tnn,
    vegas,
    visual_genome,
)
from .base import Clip, DatasetAdapter, DatasetError, Manifest, class_balanced_folds

__all__ = ["Clip", "DatasetAdapter", "DatasetError", "Manifest", "class_balanced_folds"]
