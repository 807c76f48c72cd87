"""Zero-shot: a pretrained joint space (CLIP image-text, CLAP audio-text) scored as it is, nothing learned; the row
users compare trained methods against."""
from . import trainer  # noqa: F401  (registers the trainers)
