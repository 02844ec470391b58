"""How long this process has been running: a stage's fixed cost, process start to its first training
step, is what ``repro bench`` reports as ``startup_s`` (and each training run logs as ``startup_seconds``).

Measured from the kernel's record of when the process started, so interpreter start-up and every
import count, not only what follows this module's import."""

from __future__ import annotations

import os
import time

_IMPORTED = time.monotonic()


def process_age_s() -> float:
    """Seconds since this process started (Linux: ``/proc``; elsewhere: since this module was imported)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            # Field 22 (starttime, clock ticks after boot); the command name (field 2) may hold spaces
            # or parentheses, so count from the last ')': the field after it is field 3.
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED
