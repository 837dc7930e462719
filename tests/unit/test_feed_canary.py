"""The canary split of recommend versions: stable per user, near the share, 0 = rollback."""

from __future__ import annotations

import asyncio

from genrec.feed.canary import VersionRouter, pick_version


def test_one_version_is_never_named():
    assert pick_version("u1", [], 0.5) == "" and pick_version("u1", [3], 0.0) == ""


def test_share_zero_is_the_rollback_and_one_the_full_rollout():
    users = [f"u{i}" for i in range(500)]
    assert {pick_version(u, [4, 5], 0.0) for u in users} == {"4"}
    assert {pick_version(u, [4, 5], 1.0) for u in users} == {""}


def test_the_split_is_near_the_share_and_stable():
    users = [f"u{i}" for i in range(4000)]
    newest = sum(pick_version(u, [1, 2, 3], 0.2) == "" for u in users)
    assert 0.17 < newest / len(users) < 0.23
    assert all(pick_version(u, [2, 3], 0.2) == pick_version(u, [2, 3], 0.2) for u in users[:50])


def test_the_router_reads_versions_when_due_and_keeps_them_on_errors():
    reads = []

    async def ready() -> list[int]:
        reads.append(1)
        if len(reads) > 1:
            raise ConnectionError("triton down")
        return [1, 2]

    router = VersionRouter(0.0, ready, refresh_s=0.0)
    assert asyncio.run(router.version_for("u1")) == "1"
    assert asyncio.run(router.version_for("u1")) == "1", "a failed read keeps the last known versions"
    assert len(reads) == 2
