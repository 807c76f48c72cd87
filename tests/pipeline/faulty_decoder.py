"""A pyav backend that crashes or hangs on some files, for the decoder-isolation tests (run in decoder processes)."""
from __future__ import annotations

import os
import signal
import time
from typing import Any

from pipeline.media import pyav


def _fault(path: Any) -> None:
    name = os.path.basename(str(path))
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        time.sleep(3600)


def probe(path: Any, *args: Any, **kwargs: Any) -> Any:
    _fault(path)
    return pyav.probe(path, *args, **kwargs)


def decode_audio(path: Any, *args: Any, **kwargs: Any) -> Any:
    _fault(path)
    return pyav.decode_audio(path, *args, **kwargs)


def decode_frames(path: Any, *args: Any, **kwargs: Any) -> Any:
    _fault(path)
    return pyav.decode_frames(path, *args, **kwargs)
