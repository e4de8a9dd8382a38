"""Logging set-up: one format, UTF-8, and repeated identical lines collapsed."""

from __future__ import annotations

import logging
import sys
import time


class CollapseRepeats(logging.Filter):
    """Let an identical message through once per `window` seconds, then say how many
    were held back. A device that fails every second must not flood the log."""

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        first, held = self._seen.get(key, (0.0, 0))
        if now - first < self.window:
            self._seen[key] = (first, held + 1)
            return False
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it)"
            record.args = ()
        self._seen[key] = (now, 0)
        if len(self._seen) > 10_000:
            self._seen.clear()
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(CollapseRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pymodbus logs every timeout itself at ERROR; the poller classifies and reports them.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(encoding="utf-8")
