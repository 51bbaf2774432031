"""Riding out transient storage failures: retries with exponential backoff and full jitter.

S3 and S3-compatible stores fail now and then in ways that say nothing about the
object asked for: a refused, reset or timed-out connection, a body cut short, an
HTTP 5xx, throttling (503 SlowDown). :func:`call_with_retries` repeats a request
through such failures (:func:`is_transient`), waiting before retry n (1, 2, ...) a
random time in [0, min(max_backoff_s, base_backoff_s * 2**(n - 1))] ("full jitter":
workers hit by the same outage spread their retries instead of returning together).
With the defaults and 8 attempts the waits add up to at most ~52 s, half of that on
average, on top of the SDK's own few quick retries inside each attempt
(:func:`openpose_ray.storage.s3_client`).

Answers about the data are raised at once, because asking again cannot change them:
403 (AccessDenied, an archived object), 404 (NoSuchKey), 412 (PreconditionFailed: the
object changed since it was listed), a local FileNotFoundError. The sources stage turns
those into error rows (:mod:`openpose_ray.sources.errors`).

Only idempotent requests may be wrapped: GETs, HEADs, listing pages, and PUTs of a whole
object with the same bytes.
"""

from __future__ import annotations

import functools
import http.client
import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from .storage import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

BASE_BACKOFF_S = 0.5
MAX_BACKOFF_S = 20.0

# Error codes that S3 (and botocore's "standard" retry mode) use for throttling and
# for failures of the service rather than of the request.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "InternalError", "ServiceUnavailable",
})
# 501 Not Implemented is a 5xx that a retry cannot fix.
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# pyarrow's S3 filesystem raises OSError("... AWS Error <TYPE>[ (HTTP status <n>)] during <Operation> operation: ...").
_ARROW_TRANSIENT = re.compile(
    r"AWS Error (?:NETWORK_CONNECTION|SERVICE_UNAVAILABLE|THROTTLING|SLOW_DOWN|REQUEST_TIMEOUT|INTERNAL_FAILURE"
    r"|UNKNOWN \(HTTP status (?:429|50[0234])\)) during "
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the connection or the service that a later retry may not meet.

    True for connection errors and timeouts (builtin, urllib3, botocore), a body shorter
    than its Content-Length, botocore ClientErrors with a throttling or service error code
    or HTTP status 429/500/502/503/504, and pyarrow OSErrors reporting the same. False for
    everything else, notably 403, 404 and 412 answers.
    """
    if isinstance(error, (ConnectionError, TimeoutError, http.client.IncompleteRead)):
        return True  # reset, refused, aborted, broken pipe, socket timeouts, a short body
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError: the service answered
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in _TRANSIENT_CODES or status in _TRANSIENT_STATUSES
    if isinstance(error, _network_error_types()):
        return True
    if isinstance(error, OSError):
        return bool(_ARROW_TRANSIENT.search(str(error)))
    return False


@functools.cache
def _network_error_types() -> tuple[type[BaseException], ...]:
    """botocore's and urllib3's connection, timeout and broken-stream errors (imported on first use)."""
    import botocore.exceptions as botocore_errors
    import urllib3.exceptions as urllib3_errors

    return (
        botocore_errors.ConnectionError,  # refused, connect timeout, proxy (not the builtin ConnectionError)
        botocore_errors.HTTPClientError,  # read timeout, connection closed, body stream broken
        botocore_errors.IncompleteReadError,  # body shorter than its Content-Length
        urllib3_errors.ProtocolError,
        urllib3_errors.TimeoutError,
    )


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int,
    base_backoff_s: float = BASE_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return ``fn()``, calling it again after a transient failure, at most ``attempts`` times in all.

    what: the request, for the log, e.g. "GET s3://bucket/key" (redacted before logging).
    Each retry is logged at WARNING with the error. A non-transient error is raised at
    once; the last transient one when the attempts are used up.
    sleep: how to wait (seconds); tests pass a recorder.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as error:
            if not is_transient(error):
                raise
            if attempt == attempts:
                log.warning("%s failed %d times, giving up: %s", redact(what), attempts, _describe(error))
                raise
            delay = random.uniform(0.0, min(max_backoff_s, base_backoff_s * 2.0 ** min(attempt - 1, 60)))
            log.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s", redact(what), attempt, attempts,
                        delay, _describe(error))
            sleep(delay)
    raise AssertionError("unreachable")


def _describe(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")
