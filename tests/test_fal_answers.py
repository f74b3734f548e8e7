"""Unit tests for worker.fal.answers: every shape of fal answer becomes the right error."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from imagegen.worker.errors import (
    AccountLocked,
    FalError,
    PermanentFalError,
    PolicyRefusal,
    TransientFalError,
)
from imagegen.worker.fal.answers import classify_answer, classify_completed_error, retry_after_s

REFUSAL_MSG = "The content could not be processed because it contained flagged material."


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def seed_refusal(category: str) -> bytes:
    return body(
        {
            "detail": {
                "error": "content_policy_violation",
                "category": category,
                "message": f"refused: {category}",
            }
        }
    )


FAL_422_ENTRY = {
    "loc": ["body", "prompt"],
    "msg": REFUSAL_MSG,
    "type": "content_policy_violation",
    "url": "https://docs.fal.ai/errors#content_policy_violation",
    "ctx": {},
}


# --- content-policy refusals -------------------------------------------------------------


def test_seed_400_refusal_keeps_category_and_message_and_is_hard() -> None:
    err = classify_answer(400, {}, seed_refusal("celebrity_likeness"))
    assert type(err) is PolicyRefusal
    assert err.category == "celebrity_likeness"
    assert err.message == "refused: celebrity_likeness"
    assert str(err) == "refused: celebrity_likeness"
    assert err.soft is False
    assert err.http_status == 400
    assert err.error_type == "content_policy_violation"
    assert err.retryable is False


def test_seed_trademark_ip_refusal_is_soft() -> None:
    err = classify_answer(400, {}, seed_refusal("trademark_ip"))
    assert isinstance(err, PolicyRefusal)
    assert err.category == "trademark_ip"
    assert err.soft is True


def test_unknown_refusal_category_is_kept_verbatim() -> None:
    err = classify_answer(400, {}, seed_refusal("Some_New-Category v2"))
    assert isinstance(err, PolicyRefusal)
    assert err.category == "Some_New-Category v2"
    assert err.soft is False


def test_fal_422_detail_list_refusal_stores_whole_first_entry() -> None:
    second = {"loc": ["body"], "msg": "other", "type": "other"}
    err = classify_answer(422, {}, body({"detail": [FAL_422_ENTRY, second]}))
    assert type(err) is PolicyRefusal
    assert err.category == "unspecified"
    assert err.message == REFUSAL_MSG
    assert err.detail == FAL_422_ENTRY
    assert err.soft is False
    assert err.http_status == 422
    assert err.error_type == "content_policy_violation"


def test_fal_422_refusal_category_from_ctx() -> None:
    entry = {**FAL_422_ENTRY, "ctx": {"category": "trademark_ip"}}
    err = classify_answer(422, {}, body({"detail": [entry]}))
    assert isinstance(err, PolicyRefusal)
    assert err.category == "trademark_ip"
    assert err.soft is True


def test_error_type_header_wins_over_status_500() -> None:
    headers = {"X-Fal-Error-Type": "content_policy_violation"}
    err = classify_answer(500, headers, body({"detail": "flagged by checker"}))
    assert type(err) is PolicyRefusal
    assert err.category == "unspecified"
    assert err.message == "flagged by checker"
    assert err.http_status == 500


def test_error_type_header_refusal_without_body_gets_default_message() -> None:
    err = classify_answer(500, {"x-fal-error-type": "content_policy_violation"}, b"")
    assert isinstance(err, PolicyRefusal)
    assert err.message  # a message a person can read, not empty
    assert err.category == "unspecified"


# --- the X-Fal-Retryable header -----------------------------------------------------------


def test_retryable_false_header_makes_503_permanent() -> None:
    err = classify_answer(
        503,
        {"X-Fal-Retryable": "false"},
        body({"detail": "Runner disconnected", "error_type": "runner_disconnected"}),
    )
    assert type(err) is PermanentFalError
    assert err.retryable is False
    assert err.http_status == 503


def test_retryable_true_header_makes_422_transient() -> None:
    entry = {"loc": ["body"], "msg": "no media generated", "type": "no_media_generated"}
    err = classify_answer(422, {"X-Fal-Retryable": "true"}, body({"detail": [entry]}))
    assert type(err) is TransientFalError
    assert err.retryable is True
    assert err.error_type == "no_media_generated"


def test_without_retryable_header_same_422_is_permanent() -> None:
    entry = {"loc": ["body"], "msg": "no media generated", "type": "no_media_generated"}
    err = classify_answer(422, {}, body({"detail": [entry]}))
    assert type(err) is PermanentFalError
    assert err.detail == entry
    assert "no media generated" in err.message


# --- rate limits and Retry-After ------------------------------------------------------------


def test_429_with_retry_after_seconds() -> None:
    err = classify_answer(429, {"Retry-After": "7"}, body({"detail": "Too many requests"}))
    assert type(err) is TransientFalError
    assert err.retry_after_s == 7
    assert err.http_status == 429
    assert err.resubmit is False


def test_429_without_retry_after_has_none() -> None:
    err = classify_answer(429, {}, body({"detail": "Too many requests"}))
    assert isinstance(err, TransientFalError)
    assert err.retry_after_s is None


def test_retry_after_header_name_is_case_insensitive() -> None:
    err = classify_answer(429, {"retry-after": "3"}, b"")
    assert isinstance(err, TransientFalError)
    assert err.retry_after_s == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-5", 0.0),
        ("soon", None),
    ],
)
def test_retry_after_s_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_s(value) == expected


def test_retry_after_s_http_date_uses_now() -> None:
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 30.0


def test_retry_after_s_rfc850_date() -> None:
    now = datetime(1994, 11, 6, 8, 49, 0, tzinfo=UTC)
    assert retry_after_s("Sunday, 06-Nov-94 08:49:37 GMT", now=now) == 37.0


def test_retry_after_s_date_in_the_past_is_zero() -> None:
    now = datetime(2015, 10, 21, 8, 0, 0, tzinfo=UTC)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


def test_retry_after_s_asctime_date() -> None:
    now = datetime(1994, 11, 6, 8, 49, 0, tzinfo=UTC)
    assert retry_after_s("Sun Nov  6 08:49:37 1994", now=now) == 37.0


def test_429_with_naive_date_retry_after_is_still_transient() -> None:
    err = classify_answer(429, {"Retry-After": "Sun Nov  6 08:49:37 1994"}, b"")
    assert isinstance(err, TransientFalError)


def test_retry_after_s_nan_is_rejected() -> None:
    assert retry_after_s("nan") is None


# --- auth and account lock ------------------------------------------------------------------


def test_403_user_locked_is_account_locked() -> None:
    raw = body({"detail": "User is locked. Reason: Exhausted balance. Top up to continue."})
    err = classify_answer(403, {}, raw)
    assert type(err) is AccountLocked
    assert isinstance(err, PermanentFalError)
    assert "Exhausted balance" in err.message
    assert err.http_status == 403


def test_403_other_is_permanent_not_locked() -> None:
    err = classify_answer(403, {}, body({"detail": "Forbidden"}))
    assert type(err) is PermanentFalError
    assert "FAL_KEY" in err.message


def test_401_is_permanent_and_mentions_fal_key() -> None:
    err = classify_answer(401, {}, body({"detail": "No user found for Key ID and Secret"}))
    assert type(err) is PermanentFalError
    assert "FAL_KEY" in err.message
    assert err.http_status == 401


# --- bodies that are not what we expect ---------------------------------------------------

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def test_nginx_html_502_is_transient_without_the_html() -> None:
    err = classify_answer(502, {"Content-Type": "text/html"}, NGINX_502)
    assert type(err) is TransientFalError
    assert "HTML error page" in err.message
    assert "<" not in err.message
    assert "nginx" not in err.message
    assert "Bad Gateway" not in err.message
    assert err.detail is None


def test_500_json_internal_error_is_transient() -> None:
    raw = body({"detail": "Internal error", "error_type": "internal_error"})
    err = classify_answer(500, {}, raw)
    assert type(err) is TransientFalError
    assert err.error_type == "internal_error"
    assert err.http_status == 500
    assert "Internal error" in err.message


def test_400_plain_validation_is_permanent() -> None:
    err = classify_answer(400, {}, body({"detail": "num_images must be at most 4"}))
    assert type(err) is PermanentFalError
    assert "num_images must be at most 4" in err.message
    assert err.detail == "num_images must be at most 4"


def test_422_pydantic_validation_is_permanent_and_stores_first_entry() -> None:
    entry = {
        "loc": ["body", "num_images"],
        "msg": "Input should be less than or equal to 4",
        "type": "less_than_equal",
        "ctx": {"le": 4},
    }
    err = classify_answer(422, {}, body({"detail": [entry]}))
    assert type(err) is PermanentFalError
    assert err.error_type == "less_than_equal"
    assert err.detail == entry
    assert "less than or equal to 4" in err.message


def test_long_detail_is_truncated_in_message() -> None:
    err = classify_answer(400, {}, body({"detail": "x" * 5000}))
    assert isinstance(err, PermanentFalError)
    assert len(err.message) < 500


@pytest.mark.parametrize(
    ("status", "raw", "kind", "phrase"),
    [
        (400, b"\xff\xfe\x00garbage{{", PermanentFalError, "not JSON"),
        (400, b"not json at all", PermanentFalError, "not JSON"),
        (503, b"upstream connect error", TransientFalError, "not JSON"),
        (404, b"", PermanentFalError, "empty body"),
        (504, b"", TransientFalError, "empty body"),
    ],
)
def test_non_json_bodies(status: int, raw: bytes, kind: type[FalError], phrase: str) -> None:
    err = classify_answer(status, {}, raw)
    assert type(err) is kind
    assert phrase in err.message
    assert str(status) in err.message
    assert err.http_status == status


@pytest.mark.parametrize(
    ("status", "headers", "raw", "kind"),
    [
        (408, {}, b"", TransientFalError),
        (409, {}, b"", TransientFalError),
        (425, {}, b"", TransientFalError),
        (429, {}, b"", TransientFalError),
        (500, {}, body({"detail": "boom"}), TransientFalError),
        (
            503,
            {},
            body({"detail": "x", "error_type": "runner_scheduling_failure"}),
            TransientFalError,
        ),
        (
            504,
            {},
            body({"detail": "Request timed out", "error_type": "request_timeout"}),
            TransientFalError,
        ),
        (400, {}, body({"detail": "bad", "error_type": "bad_request"}), PermanentFalError),
        (404, {}, body({"detail": "Request not found"}), PermanentFalError),
        (499, {}, body({"detail": "x", "error_type": "client_cancelled"}), PermanentFalError),
        # a retryable error type makes a 4xx transient when no header says otherwise
        (400, {}, body({"detail": "x", "error_type": "generation_timeout"}), TransientFalError),
        (503, {"x-fal-retryable": "FALSE"}, b"", PermanentFalError),
        (400, {"x-fal-retryable": " True "}, b"", TransientFalError),
    ],
)
def test_status_table(
    status: int, headers: dict[str, str], raw: bytes, kind: type[FalError]
) -> None:
    err = classify_answer(status, headers, raw)
    assert type(err) is kind
    assert err.http_status == status
    assert err.retryable is (kind is TransientFalError)


# --- COMPLETED with an error ------------------------------------------------------------------


def test_completed_runner_disconnected_is_transient_resubmit() -> None:
    err = classify_completed_error("runner_disconnected", "Runner disconnected")
    assert type(err) is TransientFalError
    assert err.resubmit is True
    assert err.retry_after_s is None
    assert err.error_type == "runner_disconnected"
    assert "Runner disconnected" in err.message
    assert err.detail == {"error": "Runner disconnected", "error_type": "runner_disconnected"}


def test_completed_content_policy_is_refusal() -> None:
    err = classify_completed_error("content_policy_violation", "flagged by checker")
    assert type(err) is PolicyRefusal
    assert err.message == "flagged by checker"
    assert err.category == "unspecified"
    assert err.soft is False


def test_completed_content_policy_without_message_gets_default() -> None:
    err = classify_completed_error("content_policy_violation", None)
    assert isinstance(err, PolicyRefusal)
    assert err.message


def test_completed_unknown_type_is_permanent() -> None:
    err = classify_completed_error("brand_new_error", "something odd")
    assert type(err) is PermanentFalError
    assert err.error_type == "brand_new_error"
    assert "something odd" in err.message


def test_completed_error_without_type_is_permanent_and_uses_error_text() -> None:
    err = classify_completed_error(None, "mystery failure")
    assert type(err) is PermanentFalError
    assert "mystery failure" in err.message
