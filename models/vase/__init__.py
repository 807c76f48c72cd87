"""VASE (chwlsunny/VASE): speech-image(-text) embedding; scored by the shared `pairs` task."""
from . import trainer  # noqa: F401  (registers the trainer)
