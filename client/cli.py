"""``genrec-client``: ask the running services from a shell.

    genrec-client recommend --items 12,7,42 [--user-id u42] [--top-k 5] [--url localhost:8001] [--protocol grpc|http]
    genrec-client feed --user u1 [--count 10] [--pages 2] [--url http://localhost:3000]
    genrec-client event --user u1 --type click --item 17 --token TOKEN
    genrec-client item 17 [--similar 5]

URLs default to $GENREC_TRITON_GRPC_URL / $GENREC_TRITON_HTTP_URL / $GENREC_FEED_URL, else the
local stack's ports. ``--json`` prints the typed answer as JSON. Exit status: 0 answered, 2 the
server refused the request (do not retry), 1 the service could not be reached (after retries).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from genrec.client.errors import ClientError
from genrec.client.retry import RetryPolicy


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()] if text else []


def _policy(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(attempts=args.attempts, deadline_s=args.deadline)


def _recommend(args: argparse.Namespace) -> dict[str, Any]:
    from genrec.client.recommend_client import RecommendClient

    items = _ints(args.items)
    n = len(items)
    now = float(int(time.time()))  # whole seconds: recommend refuses fractional timestamps
    timestamps = _floats(args.timestamps) or [now - 60.0 * (n - i) for i in range(n)]
    default_url = os.environ.get("GENREC_TRITON_GRPC_URL" if args.protocol == "grpc" else "GENREC_TRITON_HTTP_URL")
    url = args.url or default_url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    with RecommendClient(url, args.protocol, timeout_s=args.timeout, retry=_policy(args)) as c:
        r = c.recommend(
            items,
            _ints(args.actions) or [0] * n,
            timestamps,
            _ints(args.devices) or [0] * n,
            user_id=args.user_id,
            segment=args.segment,
            excluded=_ints(args.exclude) or None,
            beam_width=args.beam_width,
            top_k=args.top_k,
        )
    return {
        "items": r.items.tolist(),
        "scores": [round(float(s), 6) for s in r.scores],
        "model_version": r.model_version,
        "request_id": r.request_id,
    }


def _feed_url(args: argparse.Namespace) -> str:
    return args.url or os.environ.get("GENREC_FEED_URL") or "http://localhost:3000"


def _feed(args: argparse.Namespace) -> dict[str, Any]:
    from genrec.client.feed_client import FeedClient

    pages = []
    with FeedClient(_feed_url(args), timeout_s=args.timeout, retry=_policy(args)) as c:
        cursor = None
        for _ in range(args.pages):
            page = c.feed(args.user, args.count, cursor, device=args.device)
            pages.append(page.model_dump(mode="json"))
            cursor = page.next_cursor
            if cursor is None:
                break
    return {"pages": pages}


def _event(args: argparse.Namespace) -> dict[str, Any]:
    from genrec.client.feed_client import Event, FeedClient

    ev = Event(type=args.type, item_id=args.item, event_token=args.token, timestamp=time.time(), dwell_ms=args.dwell_ms)
    with FeedClient(_feed_url(args), timeout_s=args.timeout, retry=_policy(args)) as c:
        return c.events(args.user, [ev], args.idempotency_key).model_dump(mode="json")


def _item(args: argparse.Namespace) -> dict[str, Any]:
    from genrec.client.feed_client import FeedClient

    with FeedClient(_feed_url(args), timeout_s=args.timeout, retry=_policy(args)) as c:
        out: dict[str, Any] = {"item": c.item(args.item_id).model_dump(mode="json")}
        if args.similar:
            out["similar"] = c.similar(args.item_id, args.similar, args.user).model_dump(mode="json")
    return out


def _print_human(cmd: str, out: dict[str, Any]) -> None:
    if cmd == "recommend":
        print(f"{'rank':>4}  {'item':>8}  score    (model version {out['model_version']}, request {out['request_id']})")
        for i, (item, score) in enumerate(zip(out["items"], out["scores"]), 1):
            print(f"{i:>4}  {item:>8}  {score:.4f}")
    elif cmd == "feed":
        for p in out["pages"]:
            flags = ", ".join(k for k in ("fallback", "cold_start", "replayed") if p.get(k)) or "personal"
            print(f"page {p['page']} ({len(p['items'])} items, {flags}; request {p['request_id']})")
            for it in p["items"]:
                print(f"  {it['position']:>3}  {it['type']:<8} {it['id']:>8}  {it['score']:.4f}  {it.get('reason') or ''}")
            print(f"  next_cursor: {'yes' if p['next_cursor'] else 'none'}")
    else:
        print(json.dumps(out, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="genrec-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="service address (default: see above)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt (default %(default)s)")
    common.add_argument("--attempts", type=int, default=4, help="attempts on transient failures (default %(default)s; 1 = no retry)")
    common.add_argument("--deadline", type=float, default=30.0, help="seconds across all attempts (default %(default)s)")
    common.add_argument("--json", action="store_true", help="print the typed answer as JSON")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("recommend", parents=[common], help="ask Triton's recommend model")
    r.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    r.add_argument("--items", default="", help="history item ids, oldest first, comma-separated (empty: cold start)")
    r.add_argument("--actions", default="", help="0 view, 1 click, 2 like, 3 purchase (default: all views)")
    r.add_argument("--timestamps", default="", help="unix seconds (default: one a minute up to now)")
    r.add_argument("--devices", default="", help="device per event (default 0)")
    r.add_argument("--user-id", default=None, help="encoder-cache key")
    r.add_argument("--segment", type=int, default=None)
    r.add_argument("--exclude", default="", help="item ids never to return")
    r.add_argument("--beam-width", default=None, help="int or 'w0,w1,w2'")
    r.add_argument("--top-k", type=int, default=None)

    f = sub.add_parser("feed", parents=[common], help="read a user's feed (follows the cursor for --pages)")
    f.add_argument("--user", required=True)
    f.add_argument("--count", type=int, default=None)
    f.add_argument("--pages", type=int, default=1)
    f.add_argument("--device", default=None, choices=("mobile", "desktop", "tablet"))

    e = sub.add_parser("event", parents=[common], help="post one event (token from a feed item's tracking)")
    e.add_argument("--user", required=True)
    e.add_argument("--type", required=True, choices=("impression", "click", "like", "dislike", "hide", "purchase", "dwell"))
    e.add_argument("--item", required=True, type=int)
    e.add_argument("--token", required=True, help="the item's tracking.event_token")
    e.add_argument("--dwell-ms", type=int, default=None)
    e.add_argument("--idempotency-key", default=None)

    i = sub.add_parser("item", parents=[common], help="an item's card, and optionally its similar items")
    i.add_argument("item_id", type=int)
    i.add_argument("--similar", type=int, default=0, metavar="K")
    i.add_argument("--user", default=None, help="leave out this user's negatives from the similar items")

    args = ap.parse_args(argv)
    run = {"recommend": _recommend, "feed": _feed, "event": _event, "item": _item}[args.cmd]
    try:
        out = run(args)
    except ClientError as err:
        print(f"genrec-client {args.cmd}: {err}", file=sys.stderr)
        return 1 if err.retryable else 2
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_human(args.cmd, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
