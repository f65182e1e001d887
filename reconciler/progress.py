"""Progress on a terminal: per image, bytes downloaded and files applied.

Drawn on one status line of stderr, redrawn a few times a second; log
records clear it first, so lines never interleave. Drawn only when stderr is
a terminal and logs are plain text; the service also reads it, unstarted (so
never drawn), through `snapshot()` for its status page.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, TextIO


@dataclass
class _ImageProgress:
    downloaded: int = 0
    to_download: int = 0
    files: int = 0
    written: int = 0
    phase: str = "download"


@dataclass(frozen=True)
class ProgressSnapshot:
    """One image's progress at one moment, copied out under the lock."""

    image: str
    phase: str  # "download" or "apply"
    downloaded: int
    to_download: int
    files: int
    written: int


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class TerminalProgress:
    """Collects progress from the fetch and apply stages and draws it."""

    def __init__(self, stream: TextIO = sys.stderr, interval: float = 0.25) -> None:
        self.stream = stream
        self.interval = interval
        self._images: Dict[str, _ImageProgress] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._shown = False

    # -- callbacks (any thread) ------------------------------------------

    def expect(self, image: str, nbytes: int) -> None:
        with self._lock:
            self._images.setdefault(image, _ImageProgress()).to_download += nbytes

    def downloaded(self, image: str, nbytes: int) -> None:
        with self._lock:
            self._images.setdefault(image, _ImageProgress()).downloaded += nbytes

    def applied(self, image: str, files: int, nbytes: int) -> None:
        with self._lock:
            p = self._images.setdefault(image, _ImageProgress())
            p.phase, p.files, p.written = "apply", p.files + files, p.written + nbytes

    def finished(self, image: str) -> None:
        with self._lock:
            self._images.pop(image, None)

    def reset(self) -> None:
        """Forget every image (the service does at each cycle's start and end: an
        image whose download failed is never `finished`)."""
        with self._lock:
            self._images.clear()

    def snapshot(self) -> List[ProgressSnapshot]:
        """The images in progress now, in the order they started."""
        with self._lock:
            return [ProgressSnapshot(name, p.phase, p.downloaded, p.to_download, p.files, p.written)
                    for name, p in self._images.items()]

    # -- drawing ---------------------------------------------------------

    def line(self) -> str:
        with self._lock:
            parts = []
            for name, p in list(self._images.items())[:3]:
                short = name.rsplit("/", 1)[-1]
                if p.phase == "download":
                    parts.append(f"{short} ↓ {_mb(p.downloaded)}/{_mb(p.to_download)}")
                else:
                    parts.append(f"{short} ✎ {p.files} files, {_mb(p.written)}")
            more = len(self._images) - 3
        return " | ".join(parts) + (f" | +{more} more" if more > 0 else "")

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _draw(self) -> None:
        while not self._stop.wait(self.interval):
            text = self.line()
            if text:
                self.stream.write("\r\x1b[K" + text[:200])
                self.stream.flush()
                self._shown = True
            else:
                self.clear()

    def start(self) -> "TerminalProgress":
        self._thread = threading.Thread(target=self._draw, name="progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.clear()


class ProgressAwareHandler(logging.StreamHandler):
    """A stream handler that clears the progress line before each record."""

    def __init__(self, stream: TextIO, progress: TerminalProgress) -> None:
        super().__init__(stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.clear()
        super().emit(record)
