"""The opaque feed cursor: signed, expiring, bound to one user and one feed session.

A cursor holds the session id, the page it asks for, its expiry and the ids of every item the
session has served before that page (at most ``max_session_items``), so the next page can
exclude them without a Redis read. The pages themselves are kept in Redis under the session
(see ``event_store``), so asking again with the same cursor replays the stored page byte for
byte. Payload: compact JSON, zlib-compressed, then signed (``signing.Signer``).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

from genrec.feed.signing import SignatureError, Signer, compact_json

MAX_CURSOR_CHARS = 8_192
VERSION = 1


class CursorError(ValueError):
    """Tampered, expired, foreign or malformed: the caller gets a 400."""


@dataclass(frozen=True)
class Cursor:
    user_id: str
    session_id: str
    page: int
    expires_at: int
    seen: tuple[int, ...]
    last_product: int | None = None  # session position of the last product served
    last_ad: int | None = None  # session position of the last ad served (density across pages)

    @property
    def offset(self) -> int:
        """The session position of this page's first item."""
        return len(self.seen)


class CursorCodec:
    def __init__(self, key: str, ttl_s: int, max_items: int) -> None:
        self._signer = Signer(key, "cursor")
        self.ttl_s = ttl_s
        self.max_items = max_items

    def first(self, user_id: str, session_id: str, now: float) -> Cursor:
        return Cursor(user_id, session_id, 0, int(now) + self.ttl_s, ())

    def following(self, c: Cursor, served: list[int], last_product: int | None, last_ad: int | None = None) -> Cursor | None:
        """The cursor of the page after ``c`` once ``served`` was shown; None when the session is full."""
        seen = c.seen + tuple(int(i) for i in served)
        if len(seen) >= self.max_items or not served:
            return None
        return Cursor(c.user_id, c.session_id, c.page + 1, c.expires_at, seen, last_product, last_ad)

    def encode(self, c: Cursor) -> str:
        payload = compact_json(
            {
                "v": VERSION,
                "u": c.user_id,
                "s": c.session_id,
                "p": c.page,
                "e": c.expires_at,
                "seen": list(c.seen),
                "lp": c.last_product,
                "la": c.last_ad,
            }
        )
        return self._signer.sign(zlib.compress(payload, 6))

    def decode(self, token: str, user_id: str, now: float) -> Cursor:
        if len(token) > MAX_CURSOR_CHARS:
            raise CursorError("cursor is too long")
        try:
            raw = self._signer.verify(token)
            d = json.loads(zlib.decompress(raw, bufsize=MAX_CURSOR_CHARS * 4))
            if d.get("v") != VERSION:
                raise CursorError("cursor version is not supported")
            c = Cursor(
                str(d["u"]),
                str(d["s"]),
                int(d["p"]),
                int(d["e"]),
                tuple(int(i) for i in d["seen"]),
                None if d.get("lp") is None else int(d["lp"]),
                None if d.get("la") is None else int(d["la"]),
            )
        except CursorError:
            raise
        except (SignatureError, zlib.error, ValueError, KeyError, TypeError) as e:
            raise CursorError(f"cursor is not one this service issued ({e})") from e
        if c.user_id != user_id:
            raise CursorError("cursor belongs to another user")
        if now >= c.expires_at:
            raise CursorError("cursor has expired; start a new feed session without a cursor")
        return c
