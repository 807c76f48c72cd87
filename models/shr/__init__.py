"""See, Hear, and Read (jingliao132/CrossModalRetrieval): image, sound and text students aligned by a teacher."""
from . import task, trainer  # noqa: F401  (registers the trainer and its task)
