"""X-Twilio-Signature: known-good vectors from Twilio's documentation, cross-checked with a
plain hmac/hashlib computation that does not use seqd's code."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from seqd.lifecycle import twilio_signature

# Twilio's request-validation example (docs and api-snippets): token, URL, POST params.
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"


def doc_params(number: str) -> dict[str, str]:
    return {
        "CallSid": "CA1234567890ABCDE",
        "Caller": number,
        "Digits": "1234",
        "From": number,
        "To": "+18005551212",
    }


# (caller number, the signature Twilio's example shows for it)
VECTORS = [
    ("+14158675309", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ("+14158675310", "GvWf1cFY/Q7PnoempGyD5oXAezc="),
]


def independent(token: str, url: str, params: dict[str, str]) -> str:
    data = url
    for name in sorted(params):
        data += name + params[name]
    mac = hmac.new(token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


@pytest.mark.parametrize(("number", "expected"), VECTORS)
def test_documented_vectors(number: str, expected: str) -> None:
    params = doc_params(number)
    assert independent(DOC_TOKEN, DOC_URL, params) == expected
    assert twilio_signature.compute(DOC_TOKEN, DOC_URL, params.items()) == expected
    assert twilio_signature.valid(DOC_TOKEN, DOC_URL, params.items(), expected)


@pytest.mark.parametrize(
    "change",
    ["token", "url", "param", "extra_param", "signature", "missing", "empty_token"],
)
def test_anything_changed_fails(change: str) -> None:
    number, signature = VECTORS[0]
    token, url, params = DOC_TOKEN, DOC_URL, doc_params(number)
    sig: str | None = signature
    if change == "token":
        token = "12346"
    elif change == "url":
        url = DOC_URL.replace("foo=1", "foo=2")
    elif change == "param":
        params["Digits"] = "1235"
    elif change == "extra_param":
        params["Body"] = "STOP"
    elif change == "signature":
        sig = signature[:-2] + "A="
    elif change == "missing":
        sig = None
    elif change == "empty_token":
        token = ""
    assert not twilio_signature.valid(token, url, params.items(), sig)


def test_default_port_written_or_not() -> None:
    params = {"From": "+14155550100", "Body": "hi"}
    with_port = independent("t", "https://seqd.example.com:443/v1/inbound/twilio/sms", params)
    without = independent("t", "https://seqd.example.com/v1/inbound/twilio/sms", params)
    url = "https://seqd.example.com/v1/inbound/twilio/sms"
    assert twilio_signature.valid("t", url, params.items(), with_port)
    assert twilio_signature.valid("t", url, params.items(), without)
    other = independent("t", "https://seqd.example.com:8443/v1/inbound/twilio/sms", params)
    assert not twilio_signature.valid("t", url, params.items(), other)
