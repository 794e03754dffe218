"""Inbound Standard Webhooks verification (Replicate's signing): the published test vector,
rotation, and every refusal: wrong secret, edited body or id, missing headers, replayed
(old) and future timestamps, unknown versions only."""

from __future__ import annotations

import pytest

from services.training.webhook_verify import InvalidWebhook, verify
from services.training.webhooks import headers, new_secret

# The Standard Webhooks reference libraries' test vector.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def hdrs(sig: str = SIG, msg_id: str = MSG_ID, ts: int = TS) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_reference_vector() -> None:
    assert verify(SECRET, hdrs(), BODY, now=TS) == MSG_ID
    # Header names in any case; several signatures, one valid (a secret rotating).
    upper = {k.upper(): v for k, v in hdrs(f"v1,AAAA v2,xyz {SIG}").items()}
    assert verify(SECRET, upper, BODY, now=TS + 299) == MSG_ID


def test_round_trip_with_our_signer() -> None:
    old, new = new_secret(), new_secret()
    body = '{"id": "t1", "status": "succeeded"}'
    signed = headers([old, new], "msg_1", TS, body)
    assert verify(new, signed, body.encode(), now=TS) == "msg_1"
    assert verify(old, signed, body.encode(), now=TS) == "msg_1"
    with pytest.raises(InvalidWebhook):
        verify(new_secret(), signed, body.encode(), now=TS)


@pytest.mark.parametrize(
    ("headers_", "body", "now", "message"),
    [
        (hdrs(), BODY + b" ", TS, "no valid webhook-signature"),
        (hdrs(msg_id="msg_other"), BODY, TS, "no valid webhook-signature"),
        (hdrs(ts=TS + 1), BODY, TS, "no valid webhook-signature"),
        (hdrs("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE"), BODY, TS, "no valid"),
        (hdrs("v2," + SIG[3:]), BODY, TS, "no valid webhook-signature"),
        (hdrs(), BODY, TS + 301, "outside the tolerance"),  # replayed later
        (hdrs(), BODY, TS - 301, "outside the tolerance"),  # from the future
        (hdrs(ts=0) | {"webhook-timestamp": "soon"}, BODY, TS, "not Unix seconds"),
        ({"webhook-timestamp": str(TS), "webhook-signature": SIG}, BODY, TS, "webhook-id"),
        ({"webhook-id": MSG_ID, "webhook-signature": SIG}, BODY, TS, "webhook-timestamp"),
        ({"webhook-id": MSG_ID, "webhook-timestamp": str(TS)}, BODY, TS, "webhook-signature"),
        (hdrs(), b"\xff\xfe", TS, "not UTF-8"),
    ],
)
def test_refused(headers_: dict[str, str], body: bytes, now: int, message: str) -> None:
    with pytest.raises(InvalidWebhook) as err:
        verify(SECRET, headers_, body, now=now)
    assert message in str(err.value)
    assert SECRET not in str(err.value) and SIG[3:] not in str(err.value)


def test_wrong_secret_refused() -> None:
    with pytest.raises(InvalidWebhook):
        verify(new_secret(), hdrs(), BODY, now=TS)
    with pytest.raises(InvalidWebhook, match="malformed"):
        verify("whsec_a", hdrs(), BODY, now=TS)
