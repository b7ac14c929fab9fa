"""appliance.retry: the backoff sequence and its cap, and Retry-After read as seconds or as an
HTTP date (future, past, garbage)."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from appliance.retry import backoff_delay, parse_retry_after, retry_delay

NOW = 1_800_000_000.0


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(n, 1.0, 10.0) for n in range(7)] == [1, 2, 4, 8, 10, 10, 10]
    assert [backoff_delay(n, 0.5, 60.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_after_very_many_failures_is_the_cap_not_an_overflow():
    assert backoff_delay(5000, 5.0, 300.0) == 300.0
    assert backoff_delay(-1, 5.0, 300.0) == 5.0


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), (" 120 ", 120.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0),
])
def test_retry_after_as_seconds(value: str, seconds: float):
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_as_an_http_date_in_the_future():
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), NOW) == 30.0
    # "-0000" parses without a time zone; HTTP dates are GMT all the same
    assert parse_retry_after(formatdate(NOW + 30).rsplit(" ", 1)[0] + " -0000", NOW) == 30.0


def test_retry_after_as_an_http_date_in_the_past_means_now():
    assert parse_retry_after(formatdate(NOW - 3600, usegmt=True), NOW) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "nan", "Mon, 99 Foo 2020 25:00:00 GMT"])
def test_retry_after_garbage_or_absent_is_none(value: str | None):
    assert parse_retry_after(value, NOW) is None


def test_retry_after_defaults_to_the_time_now():
    seconds = parse_retry_after(formatdate(None, usegmt=True))
    assert seconds is not None and seconds <= 1.0


def test_retry_delay_prefers_retry_after_within_the_cap():
    assert retry_delay(0, 1.0, 60.0, 7.0) == 7.0
    assert retry_delay(3, 1.0, 60.0, None) == 8.0
    assert retry_delay(0, 1.0, 60.0, 3600.0) == 60.0
    assert retry_delay(2, 1.0, 60.0, -5.0) == 0.0
