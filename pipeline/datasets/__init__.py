"""Dataset adapters, one module per corpus, each registered by name in `pipeline.registry.DATASETS`."""
from .base import Clip, DatasetAdapter, DatasetError, Manifest, class_balanced_folds
from . import ave, coco_captions, cub, flickr8k_audio, folder, mix, places_audio, speech_coco, spokencoco, spoken_scenes, spoken_shapes, synthetic, tnn, vegas, visual_genome  # noqa: F401,E501  (registers the adapters)

__all__ = ["Clip", "DatasetAdapter", "DatasetError", "Manifest", "class_balanced_folds"]
