"""Decoding that a bad file cannot take down: in-process libraries run in long-lived decoder processes.

A decoder process is started once and serves clip after clip (no process start-up per clip). A file
that crashes the library (a signal) or hangs it (no result within the timeout) costs only that process:
the clip fails with a reason, the process is replaced, the worker and the run go on. The `ffmpeg`
backend already runs a process per call; it only gets the timeout.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import queue
import signal
import tempfile
import threading
import time
from typing import Any

from .common import MediaError, backend_module

log = logging.getLogger(__name__)

_DECODERS: dict[tuple[str, float | None, int], "Decoder"] = {}  # (module, timeout, processes) -> decoder
_LOCK = threading.Lock()
PYAV_MODULE = "pipeline.media.pyav"  # what pyav decoder processes import (tests point it at a faulty one)


def decoder(backend: str = "pyav", timeout: float | None = None, processes: int = 1) -> Any:
    """What the runner decodes with: `probe`, `decode_audio`, `decode_frames` of `backend`, each clip
    failing alone (a MediaError) when the decoder crashes or gives no result within `timeout` seconds;
    one per (backend, timeout, processes) in this process, kept for reuse."""
    if backend == "ffmpeg":
        return _Subprocesses(backend_module("ffmpeg"), timeout)
    backend_module(backend)  # an unknown name fails here, not in a decoder process
    key = (PYAV_MODULE, timeout, processes)
    with _LOCK:
        if key not in _DECODERS:
            _DECODERS[key] = Decoder(PYAV_MODULE, timeout, processes)
        return _DECODERS[key]


class _Subprocesses:
    """The ffmpeg programs: a process per call already; each call gets the timeout."""

    def __init__(self, module: Any, timeout: float | None) -> None:
        self.module, self.timeout = module, timeout

    def probe(self, path: Any) -> Any:
        return self.module.probe(path, timeout=self.timeout)

    def decode_audio(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.decode_audio(*args, timeout=self.timeout, **kwargs)

    def decode_frames(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.decode_frames(*args, timeout=self.timeout, **kwargs)


class _Lost(Exception):
    """The decoder process died or hung; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Dead(Exception):
    """The decoder process had died before it was given this file (a kill, the OOM killer): not the file's fault."""


class _Process:
    """One decoder process (`python -m pipeline.media.isolated`, so it never re-runs the caller's main
    module) and its socket."""

    def __init__(self, module: str) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: nothing it writes can block it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.media.isolated", str(theirs.fileno()), module, str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=self.stderr,
            start_new_session=True)  # Ctrl-C is the parent's to handle: it lets running clips finish
        theirs.close()
        self.conn = Connection(ours.detach())
        try:
            ready = self.conn.recv() if self.conn.poll(120) else None
        except (EOFError, OSError):
            ready = None
        if ready != "ready":
            self.stop()
            self.stderr.seek(0)
            err = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"a decoder process did not start: {err[-1] if err else 'no message'}")

    def call(self, fn: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        if self.proc.poll() is not None:
            raise _Dead()
        try:
            self.conn.send((fn, args, kwargs))
        except OSError:
            raise _Dead() from None  # it died before it was asked: nothing to blame on this file
        try:
            answered = self.conn.poll(timeout)
        except OSError:
            answered = True  # the process is gone: recv says how
        if not answered:
            raise _Lost(f"decoder hung: no result in {timeout:g} s; the file may be damaged "
                        "(raise execution.decode_timeout for very long media)")
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            try:
                code = self.proc.wait(5)
            except Exception:
                code = None
            how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"ended with exit code {code}")
            raise _Lost(f"decoder crashed: the decoding library was {how} on this file; "
                        "the file is likely damaged") from None
        if status == "media":
            raise MediaError(value)
        return value

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except Exception:
            pass
        self.conn.close()
        self.stderr.close()


class Decoder:
    """Up to `processes` decoder processes running `module`'s probe / decode_audio / decode_frames;
    each call takes an idle one (threads of one worker decode in parallel)."""

    def __init__(self, module: str, timeout: float | None, processes: int) -> None:
        self.module, self.timeout = module, timeout
        self._slots = threading.BoundedSemaphore(max(1, processes))
        self._idle: queue.LifoQueue[_Process] = queue.LifoQueue()
        self._all: list[_Process] = []
        atexit.register(self.close)

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        with self._slots:
            for attempt in range(2):  # an idle process found dead is replaced once; the file is not blamed
                try:
                    proc = self._idle.get_nowait()
                except queue.Empty:
                    proc = _Process(self.module)
                    self._all.append(proc)
                try:
                    value = proc.call(fn, args, kwargs, self.timeout)
                    break
                except _Dead:
                    self._all.remove(proc)
                    proc.stop()
                    log.info("a decoder process had died while idle; starting another")
                    if attempt:
                        raise MediaError("decoder crashed: two decoder processes in a row died before they were "
                                         "given this file (out of memory?)") from None
                    continue
                except _Lost as e:
                    self._all.remove(proc)
                    proc.stop()
                    log.warning("%s: %s", args[0] if args else fn, e.reason)
                    raise MediaError(e.reason) from None
                except BaseException:
                    self._idle.put(proc)
                    raise
            self._idle.put(proc)
            return value

    def probe(self, path: Any) -> Any:
        return self._call("probe", path)

    def decode_audio(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("decode_audio", *args, **kwargs)

    def decode_frames(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("decode_frames", *args, **kwargs)

    def close(self) -> None:
        """Stop every decoder process."""
        for proc in self._all:
            try:
                proc.conn.send(None)
                proc.proc.wait(1)
            except Exception:
                pass
            proc.stop()
        self._all = []


def _serve(fd: int, module: str, parent: int) -> None:
    """A decoder process: call `module`'s functions as asked, until told to stop or the parent is gone."""
    from multiprocessing.connection import Connection

    # the parent's end of the socket closing ends this loop; a parent that dies while a file hangs this
    # process is noticed by the watch (not PR_SET_PDEATHSIG: it fires when the parent's *thread* ends)
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    conn = Connection(fd)
    impl = importlib.import_module(module)
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args, kwargs = msg
        try:
            reply = ("ok", getattr(impl, fn)(*args, **kwargs))
        except MediaError as e:
            reply = ("media", e.reason)
        except Exception as e:  # a library error the backend did not name: the clip fails with it
            reply = ("media", f"decode error: {type(e).__name__}: {e}")
        conn.send(reply)


if __name__ == "__main__":
    import sys

    _serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
