"""The RunPod client's one HTTP session: the API key only in the Authorization header, no
redirects followed (so the header never leaves the configured endpoints), retries by
appliance.retry, and the key scrubbed from everything it raises or logs. REST v2 and GraphQL both
call through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from appliance.retry import parse_retry_after, retry_delay
from appliance.runpod.errors import RunpodError, TransportError, classify

log = logging.getLogger("appliance.runpod")

USER_AGENT = "chessbot-pod-appliance/0.1 (+runpod client)"


class Session:
    """`transport` and `sleep` are the seams tests replace."""

    def __init__(self, key: str, *, transport: httpx.BaseTransport | None,
                 sleep: Callable[[float], None] = time.sleep, retries: int = 4,
                 backoff_s: float = 1.0, max_wait_s: float = 60.0,
                 timeout_s: float = 30.0) -> None:
        self._key = key
        self._sleep, self.retries = sleep, retries
        self.backoff_s, self.max_wait_s = backoff_s, max_wait_s
        self._http = httpx.Client(
            transport=transport, timeout=timeout_s, follow_redirects=False,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json",
                     "User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self._http.close()

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "<redacted>") if self._key else text

    def request(self, method: str, url: str, call: str, *, json_body: Any = None,
                params: dict[str, str] | None = None, retry_5xx: bool = True) -> httpx.Response:
        """One call with retries: 429 waits Retry-After (and fails at once when that is beyond
        max_wait_s), 5xx and connection errors back off. The last answer is returned as is."""
        attempt = 0
        while True:
            status: int | None = None
            retry_after: float | None = None
            try:
                response = self._http.request(method, url, json=json_body, params=params or None)
            except httpx.HTTPError as exc:
                if attempt >= self.retries or not retry_5xx:
                    raise TransportError(call, self.scrub(f"{type(exc).__name__}: {exc}")) \
                        from None
            else:
                status = response.status_code
                if status == 429 and attempt < self.retries:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    if retry_after is not None and retry_after > self.max_wait_s:
                        raise self.error(call, response)
                elif not (status >= 500 and retry_5xx and attempt < self.retries):
                    return response
            wait = retry_delay(attempt, self.backoff_s, self.max_wait_s, retry_after)
            if status is not None:
                log.warning("%s: HTTP %d, retry %d/%d in %.1f s", call, status, attempt + 1,
                            self.retries, wait)
            self._sleep(wait)
            attempt += 1

    def error(self, call: str, response: httpx.Response) -> RunpodError:
        """The typed error for a failed answer, its message scrubbed of the key."""
        return classify(call, response.status_code, self._message(response))

    def _message(self, response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return self.scrub(response.text.strip()[:300]) or response.reason_phrase
        parts: list[str] = []
        if isinstance(body, dict):
            if isinstance(body.get("errors"), list) and body["errors"]:
                first = body["errors"][0]
                parts.append(str(first.get("message") if isinstance(first, dict) else first))
            for key in ("detail", "message", "error", "title"):
                if body.get(key) and not parts:
                    parts.append(str(body[key]))
        return self.scrub("; ".join(parts)[:300] or response.reason_phrase)
