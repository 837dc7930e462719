"""The canary split of recommend versions (stable per user, near the share, 0 = rollback) and
the pairing of each recommend version with the ad_ctr version published with it."""

from __future__ import annotations

import asyncio
import json

from genrec.feed.canary import Route, VersionRouter, paired_ad_ctr, pick_version, route_for


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


PAIRS = {1: 1, 2: 2}.get  # recommend version -> the ad_ctr version published with it


def test_each_recommend_version_is_scored_by_its_own_ad_ctr():
    ready = {"recommend": [1, 2], "ad_ctr": [1, 2]}
    assert route_for("u", ready, 1.0, PAIRS) == Route("", "2", True, "2"), "newest with newest: the ensemble"
    assert route_for("u", ready, 0.0, PAIRS) == Route("1", "1", False, "1"), "the control group: two calls, its own ad_ctr"


def test_after_a_recommend_rollback_the_ensemble_is_not_used():
    ready = {"recommend": [1], "ad_ctr": [1, 2]}  # recommend 2 rolled back, ad_ctr 2 still newest
    assert route_for("u", ready, 1.0, PAIRS) == Route("", "1", False, "1")


def test_an_unknown_or_unloaded_pairing_serves_no_ads():
    ready = {"recommend": [1, 2], "ad_ctr": [2]}
    assert route_for("u", ready, 0.0, PAIRS).ad_ctr is None, "ad_ctr 1 is not loaded any more"
    unknown = lambda v: None  # noqa: E731
    assert route_for("u", ready, 0.0, unknown).ad_ctr is None, "the control version's pairing is unknown"
    assert route_for("u", ready, 1.0, unknown) == Route("", "", True, "2"), "newest with newest is trusted"


def test_the_pairing_is_read_from_the_recommend_manifest(tmp_path):
    (tmp_path / "recommend" / "3").mkdir(parents=True)
    (tmp_path / "recommend" / "3" / "manifest.json").write_text(json.dumps({"ad_ctr_version": 7}))
    assert paired_ad_ctr(tmp_path, 3) == 7
    assert paired_ad_ctr(tmp_path, 4) is None and paired_ad_ctr(None, 3) is None


def test_the_router_reads_versions_when_due_keeps_them_on_errors_and_starts_closed_at_share_zero():
    reads = []

    async def ready() -> dict[str, list[int]]:
        reads.append(1)
        if len(reads) == 1:
            raise ConnectionError("triton starting")
        if len(reads) > 2:
            raise ConnectionError("triton down")
        return {"recommend": [1, 2], "ad_ctr": [1, 2]}

    router = VersionRouter(0.0, ready, None, refresh_s=0.0)
    first = asyncio.run(router.route("u1"))
    assert first.ad_ctr is None, "nothing known yet at share 0: no ads"
    assert asyncio.run(router.route("u1")).recommend == "1"
    assert asyncio.run(router.route("u1")).recommend == "1", "a failed read keeps the last known versions"
    assert len(reads) == 3
