"""Progress on a terminal: per image, bytes downloaded and files applied.

Drawn on one status line of stderr, redrawn a few times a second; log
records clear it first, so lines never interleave. Drawn only when stderr is
a terminal and logs are plain text; the service also reads it, unstarted (so
never drawn), through `snapshot()` for its status page.

The line fits the terminal's width: a line that wraps could not be redrawn in
place. Long image names are shortened in the middle, keeping their start (the
registry) and their end (repository, tag and platform), and when even that
does not fit, fewer images are shown ("+2 more").
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, TextIO, Tuple


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


ELLIPSIS = "…"
MIN_LABEL = 24  # narrower than this, a name says too little: show fewer images instead
MAX_SHOWN = 3
DEFAULT_WIDTH = 100  # when the stream is no terminal (tests, a pipe)


def shorten_middle(text: str, width: int) -> str:
    """`text` in at most `width` characters: its start and its end kept, the
    middle replaced by "…". For an image name such as
    `registry.example.org/team/app:1.2 [linux/arm64]` the end (repository,
    tag, platform) tells images apart, so it gets most of the room: the cut
    falls before the last path component when that leaves a few characters
    of the start, e.g. `regi…/app:1.2 [linux/arm64]`."""
    if len(text) <= width:
        return text
    if width < 3:  # no room for start, ellipsis and end: the start is what names it
        return text[:width]
    room = width - len(ELLIPSIS)
    # The last "/" before the platform suffix: the platform holds a "/" of its own.
    name_end = text.find(" [")
    slash = text.rfind("/", 0, name_end if name_end > 0 else len(text))
    if slash > 0 and room - (len(text) - slash) >= 4:
        tail = len(text) - slash
    else:
        tail = room - max(1, room // 3)
    return text[:room - tail] + ELLIPSIS + text[len(text) - tail:]


def _fit_labels(names: List[str], room: int) -> List[str]:
    """Share `room` characters among the names: short ones take what they need,
    the rest is split evenly among the longer ones (each shortened in the middle)."""
    widths = [0] * len(names)
    pending = sorted(range(len(names)), key=lambda i: len(names[i]))
    while pending:
        share = room // len(pending)
        i = pending.pop(0)
        widths[i] = min(len(names[i]), max(share, 1))
        room -= widths[i]
    return [shorten_middle(name, w) for name, w in zip(names, widths)]


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

    def width(self) -> int:
        """The columns the line may take: the terminal's, less one (writing the
        last column makes some terminals wrap)."""
        try:
            return max(10, os.get_terminal_size(self.stream.fileno()).columns - 1)
        except (AttributeError, OSError, ValueError):  # not a terminal, or no fileno (StringIO)
            return DEFAULT_WIDTH

    def line(self, width: Optional[int] = None) -> str:
        """The progress line, at most `width` characters (default: the terminal's
        width): per image its name, then bytes downloaded or files applied."""
        with self._lock:
            items: List[Tuple[str, str]] = []
            for name, p in self._images.items():
                if p.phase == "download":
                    items.append((name, f" ↓ {_mb(p.downloaded)}/{_mb(p.to_download)}"))
                else:
                    items.append((name, f" ✎ {p.files} files, {_mb(p.written)}"))
        if not items:
            return ""
        width = self.width() if width is None else width
        for shown in range(min(MAX_SHOWN, len(items)), 0, -1):
            more = len(items) - shown
            suffix = f" | +{more} more" if more > 0 else ""
            fixed = sum(len(stats) for _, stats in items[:shown]) + len(" | ") * (shown - 1) + len(suffix)
            room = width - fixed
            names = [name for name, _ in items[:shown]]
            # Enough room for every name shown, whole or shortened to MIN_LABEL: draw these.
            if room >= sum(min(len(n), MIN_LABEL) for n in names) or shown == 1:
                break
        if room < MIN_LABEL and suffix:  # a narrow terminal: the name matters more than "+2 more"
            room, suffix = room + len(suffix), ""
        labels = _fit_labels(names, max(room, 8))
        text = " | ".join(label + stats for label, (_, stats) in zip(labels, items)) + suffix
        # Only on a terminal too narrow for one short name and its numbers: cut the
        # end, never the start (it names the image).
        return text[:width]

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _draw(self) -> None:
        while not self._stop.wait(self.interval):
            text = self.line()
            if text:
                self.stream.write("\r\x1b[K" + text)
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


class ProgressAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]  # [TextIO] fails at run time < 3.11
    """A stream handler that clears the progress line before each record."""

    def __init__(self, stream: TextIO, progress: TerminalProgress) -> None:
        super().__init__(stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.clear()
        super().emit(record)
