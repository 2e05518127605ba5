"""Resident memory of this process, and a sampler thread that records its peak (for per-stage peaks)."""

from __future__ import annotations

import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process now (/proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS(threading.Thread):
    """Samples `rss()` every `interval` s; `mark()` starts a stage, `peak_since_mark()` its peak minus its start."""

    def __init__(self, interval: float = 0.001):
        super().__init__(daemon=True)
        self.interval, self.running = interval, True
        self.base = self.peak = rss()
        self.start()

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def mark(self) -> None:
        self.base = self.peak = rss()

    def peak_since_mark(self) -> int:
        self.peak = max(self.peak, rss())
        return self.peak - self.base

    def stop(self) -> int:
        """End sampling; the peak bytes since the last mark."""
        self.running = False
        self.join()
        return self.peak_since_mark()
