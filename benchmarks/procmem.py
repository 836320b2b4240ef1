"""Process memory for the benchmarks: resident set size and its peak, from /proc (Linux).

Imported by scripts in this folder (started by path, so the folder is on ``sys.path``).
"""

from __future__ import annotations

import gc


def rss_kib(field: str) -> int:
    """A /proc/self/status size in KiB: ``"VmRSS"`` now, ``"VmHWM"`` the peak since the last reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Restart the peak (VmHWM) from the current RSS; returns that RSS in KiB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_kib("VmRSS")
