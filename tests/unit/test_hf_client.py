"""The HF client wrapper without a server: token lookup order, redaction, error mapping and the
retry schedule (Retry-After honoured, permanent errors not retried)."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import errors

from appliance import hf
from appliance.redact import RedactingFilter, Redactor

TOKEN = "hf_UNIT_canary_token_4242"


def test_token_lookup_order(tmp_path: Path):
    file = tmp_path / "token"
    file.write_text(f"  {TOKEN}-file\n")
    ring = lambda: TOKEN + "-ring"  # noqa: E731
    assert hf.resolve_token("cli", "env", file, ring) == ("cli", "--token")
    assert hf.resolve_token(None, "env", file, ring) == ("env", "HF_TOKEN")
    assert hf.resolve_token(None, None, file, ring) == (TOKEN + "-file", "HF_TOKEN_PATH")
    assert hf.resolve_token(None, None, None, ring) == (TOKEN + "-ring", "keyring")
    assert hf.resolve_token(None, None, None, lambda: None) == (None, "none")
    with pytest.raises(hf.HubAuthError) as err:
        hf.resolve_token(None, None, tmp_path / "missing", ring)
    assert str(err.value) == (f"HF_TOKEN_PATH={tmp_path / 'missing'}: cannot read the token "
                              "file: No such file or directory")


def test_keyring_lookup(monkeypatch: pytest.MonkeyPatch):
    import keyring
    from keyring.errors import NoKeyringError

    asked: list[tuple[str, str]] = []

    def found(service: str, user: str) -> str:
        asked.append((service, user))
        return TOKEN

    monkeypatch.setattr(keyring, "get_password", found)
    assert hf.keyring_token() == TOKEN
    assert asked == [("huggingface", "codex_hf_write_token")]

    def no_backend(service: str, user: str) -> str:
        raise NoKeyringError("No recommended backend was available.")

    monkeypatch.setattr(keyring, "get_password", no_backend)
    assert hf.keyring_token() is None


def test_redaction_in_text_and_logs(caplog: pytest.LogCaptureFixture):
    redact = Redactor([TOKEN, None, "abc"])  # too short to redact safely: ignored
    assert redact(f"Bearer {TOKEN} and url?t=hf_UNIT_canary_token_4242 abc") == (
        "Bearer <redacted> and url?t=<redacted> abc")
    logger = logging.getLogger("test.hf.redact")
    logger.addFilter(RedactingFilter(redact))
    with caplog.at_level(logging.INFO, logger="test.hf.redact"):
        logger.info("token is %s", TOKEN)
    assert caplog.records[-1].getMessage() == "token is <redacted>"


def _http_error(status: int, headers: dict[str, str] | None = None) -> errors.HfHubHTTPError:
    request = httpx2.Request("POST", "http://127.0.0.1:9/api/models/a/b/commit/main")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return errors.HfHubHTTPError(f"{status} error with {TOKEN}", response=response)


def _client(sleeps: list[float], attempts: int = 4) -> hf.HubClient:
    return hf.HubClient("http://127.0.0.1:9", TOKEN, attempts=attempts, backoff_s=1.0,
                        sleep=sleeps.append)


def test_transient_errors_are_retried_with_backoff_and_retry_after():
    sleeps: list[float] = []
    client = _client(sleeps)
    outcomes: list[Exception | str] = [_http_error(503), _http_error(429, {"Retry-After": "7"}),
                                       httpx2.ConnectError("refused"), "done"]

    def call() -> str:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    assert client._call("commit", call) == "done"
    assert sleeps == [1.0, 7.0, 4.0]


def test_retry_after_as_an_http_date_is_honoured():
    sleeps: list[float] = []
    client = _client(sleeps)
    when = formatdate(time.time() + 10, usegmt=True)
    outcomes: list[Exception | str] = [_http_error(503, {"Retry-After": when}), "done"]

    def call() -> str:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    assert client._call("commit", call) == "done"
    assert len(sleeps) == 1 and 8.0 < sleeps[0] <= 10.0


def test_retries_end_with_a_named_error():
    sleeps: list[float] = []
    client = _client(sleeps, attempts=3)

    def call() -> None:
        raise _http_error(502)

    with pytest.raises(hf.HubError) as err:
        client._call("commit 2 file(s) to a/b", call)
    assert str(err.value) == ("commit 2 file(s) to a/b: HTTP 502 from http://127.0.0.1:9 (gave "
                              "up after 3 attempts)")
    assert sleeps == [1.0, 2.0]


@pytest.mark.parametrize(("exc", "kind", "message"), [
    (_http_error(401), hf.HubAuthError,
     "op: HTTP 401, the Hub refused the token: set HF_TOKEN (or HF_TOKEN_PATH), pass --token "
     "where the command has it, or store it with `keyring set huggingface "
     "codex_hf_write_token`"),
    (_http_error(400), hf.HubError, "op: HTTP 400: 400 error with <redacted>"),
    (FileNotFoundError(2, "No such file or directory"), hf.HubError,
     "op: [Errno 2] No such file or directory"),
])
def test_permanent_errors_are_not_retried(exc: Exception, kind: type, message: str):
    sleeps: list[float] = []
    client = _client(sleeps)

    def call() -> None:
        raise exc

    with pytest.raises(kind) as err:
        client._call("op", call)
    assert str(err.value) == message
    assert TOKEN not in str(err.value)
    assert sleeps == []


def test_upload_without_token_is_refused_before_any_request():
    client = hf.HubClient("http://127.0.0.1:9", None)
    with pytest.raises(hf.HubAuthError) as err:
        client.upload("a/b", "model", [], "msg")
    assert str(err.value).startswith("upload to a/b: no HF token found: set HF_TOKEN")
