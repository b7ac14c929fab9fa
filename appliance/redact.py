"""Secret redaction for logs and messages: one Redactor, a logging filter, service log setup.

Every program that holds a secret (token, key, password) passes its output through these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import IO
from urllib.parse import quote

REDACTED = "<redacted>"


class Redactor:
    """Replaces secret values (and their URL-quoted forms) in text with `mask`."""

    def __init__(self, secrets: Iterable[str | None] = (), mask: str = REDACTED,
                 min_length: int = 6) -> None:
        self.mask = mask
        # Very short values would redact ordinary words; real tokens are long.
        self.min_length = min_length
        self.secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= self.min_length:
            for form in {secret, quote(secret, safe="")}:
                if form not in self.secrets:
                    self.secrets.append(form)
            # Longest first, so a secret that contains another is hidden whole.
            self.secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, self.mask)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from every record passing a handler."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redact.secrets:
            record.msg = self.redact(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def setup_service_logging(program: str, redact: Redactor, stream: IO[str],
                          level: str = "INFO") -> None:
    """Root logging for a supervisord program: one redacted line per record on `stream`, from
    `level` (a logging level name) up."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {program} %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
