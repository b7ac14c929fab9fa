"""The one retry timing: exponential backoff with a cap, and a server's Retry-After (seconds or an
HTTP date). The HF and RunPod clients, the sync watcher and the watchdog all wait by these rules;
which failures to retry, and how often, stays with each caller.
"""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC

# 2.0 ** 1024 overflows a float; a longer exponent only ever means "the cap".
_MAX_EXPONENT = 1000


def backoff_delay(retry: int, base_s: float, cap_s: float) -> float:
    """The wait before retry number `retry` (0 for the first): base_s * 2**retry, at most cap_s."""
    return min(base_s * 2.0 ** min(max(retry, 0), _MAX_EXPONENT), cap_s)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds from `now` (default: the time now): delta-seconds or an HTTP date,
    never below 0 (a date in the past means "now"). None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(retry: int, base_s: float, cap_s: float, retry_after: float | None = None) -> float:
    """The wait before retry number `retry`: the server's Retry-After when it sent one, else the
    backoff; never below 0 nor above cap_s."""
    wait = backoff_delay(retry, base_s, cap_s) if retry_after is None else retry_after
    return min(max(wait, 0.0), cap_s)
