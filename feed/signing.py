"""HMAC signing of the opaque tokens the service hands out (cursors, event tokens).

A token is ``base64url(payload) "." base64url(hmac_sha256(key, purpose | payload)[:16])``; the
purpose keeps a cursor from passing as an event token and the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

DEV_SIGNING_KEY = "genrec-dev-signing-key"


class SignatureError(ValueError):
    """The token is malformed or its signature does not match."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as e:
        raise SignatureError("not base64url") from e
    if _b64(raw) != text:  # one encoding per byte string: no silent variants of a token
        raise SignatureError("not canonical base64url")
    return raw


class Signer:
    def __init__(self, key: str, purpose: str) -> None:
        if not key:
            raise ValueError("the signing key is empty")
        self._key = key.encode()
        self._purpose = purpose.encode() + b"|"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, self._purpose + payload, hashlib.sha256).digest()[:16]

    def sign(self, payload: bytes) -> str:
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str) -> bytes:
        body, dot, mac = token.partition(".")
        if not dot or not body or not mac or not token.isascii():
            raise SignatureError("malformed token")
        payload = _unb64(body)
        if not hmac.compare_digest(_unb64(mac), self._mac(payload)):
            raise SignatureError("bad signature")
        return payload


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
