"""The canary split of recommend versions (stable per user, near the share, 0 = rollback) and
the pairing of each recommend version with the ad_ctr version published with it."""

from __future__ import annotations

import asyncio
import json

from genrec.feed.canary import Route, VersionRouter, newly_ready, paired_ad_ctr, pick_version, route_for


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


# Deploy warm-up: a newly ready recommend version is held until its encoder states are built.


def test_a_held_newest_version_sends_everyone_to_the_previous_one_named():
    ready = {"recommend": [1, 2], "ad_ctr": [1, 2]}
    for share in (1.0, 0.5, 0.0):
        for u in ("a", "b", "c", "d"):
            assert route_for(u, ready, share, PAIRS, held={2}) == Route("1", "1", False, "1"), (
                'named ("" would be Triton\'s newest, the held one), two calls with its own ad_ctr'
            )
    assert route_for("a", ready, 1.0, PAIRS, held=set()) == Route("", "2", True, "2"), "released: the split applies again"


def test_with_the_policy_keeping_two_the_version_before_the_held_one_serves():
    ready = {"recommend": [2, 3], "ad_ctr": [2, 3]}  # 1 retired when 3 loaded
    assert {route_for(f"u{i}", ready, 0.5, {2: 2, 3: 3}.get, held={3}).recommend for i in range(100)} == {"2"}


def test_holding_the_only_ready_version_holds_nothing():
    ready = {"recommend": [2], "ad_ctr": [2]}
    assert route_for("a", ready, 1.0, PAIRS, held={2}) == Route("", "2", True, "2")


def test_a_held_version_with_an_unknown_pairing_serves_the_previous_one_without_ads():
    ready = {"recommend": [1, 2], "ad_ctr": [1, 2]}
    assert route_for("a", ready, 1.0, lambda v: None, held={2}) == Route("1", None, False, "1")


def test_only_versions_newer_than_the_released_one_with_another_one_ready_are_held():
    assert newly_ready(None, [1, 2]) == [], "the first read: served as found (Triton is warm for them)"
    assert newly_ready(1, [1, 2]) == [2]
    assert newly_ready(2, [2, 3]) == [3]
    assert newly_ready(2, [1]) == [], "a rollback holds nothing"
    assert newly_ready(1, [2]) == [], "nothing else to serve: not held"
    assert newly_ready(2, [1, 2]) == [], "an older version back from a reload is never held"


def test_the_router_holds_a_new_version_until_its_warm_up_returns():
    versions = {"recommend": [1], "ad_ctr": [1]}
    started: list[int] = []

    async def ready() -> dict[str, list[int]]:
        return versions

    async def scenario() -> None:
        gate = asyncio.Event()

        async def warm(version: int) -> None:
            started.append(version)
            await gate.wait()

        router = VersionRouter(1.0, ready, None, refresh_s=0.0, warm=warm)
        router._pair = PAIRS  # type: ignore[method-assign]
        assert (await router.route("u1")).label == "1"
        versions.update({"recommend": [1, 2], "ad_ctr": [1, 2]})
        held = await router.route("u1")
        assert held == Route("1", "1", False, "1") and router.held == {2}
        await asyncio.sleep(0)
        assert started == [2], "one warm-up, started in the background"
        assert (await router.route("u2")).recommend == "1", "still held while warming"
        gate.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert router.held == frozenset() and await router.route("u1") == Route("", "2", True, "2")
        assert started == [2], "a version is warmed once"

    asyncio.run(scenario())


def test_a_failed_warm_up_releases_the_version_and_a_retired_one_is_cancelled():
    versions = {"recommend": [1], "ad_ctr": [1]}

    async def ready() -> dict[str, list[int]]:
        return versions

    async def scenario() -> None:
        async def broken(version: int) -> None:
            raise RuntimeError("boom")

        router = VersionRouter(1.0, ready, None, refresh_s=0.0, warm=broken)
        await router.route("u")
        versions.update({"recommend": [1, 2]})
        await router.route("u")
        for _ in range(3):
            await asyncio.sleep(0)
        assert router.held == frozenset(), "a failed warm-up does not hold the version for ever"

        async def slow(version: int) -> None:
            await asyncio.sleep(3600)

        router.warm = slow
        versions.update({"recommend": [1, 2, 3]})
        await router.route("u")
        assert router.held == {3}
        versions.update({"recommend": [1, 2]})  # 3 rolled back while warming
        await router.route("u")
        assert router.held == frozenset()

    asyncio.run(scenario())


def test_a_version_reloaded_while_warming_is_warmed_again_once_it_is_back():
    """genrec-publish loads recommend, then the ensemble, which reloads recommend (every version)."""
    versions: dict[str, list[int]] = {"recommend": [1], "ad_ctr": [1]}
    started: list[int] = []

    async def ready() -> dict[str, list[int]]:
        return versions

    async def scenario() -> None:
        async def warm(version: int) -> None:
            started.append(version)
            await asyncio.sleep(3600)

        router = VersionRouter(1.0, ready, None, refresh_s=0.0, warm=warm)
        await router.route("u")
        versions["recommend"] = [1, 2]
        await router.route("u")
        await asyncio.sleep(0)
        assert router.held == {2} and started == [2]
        versions["recommend"] = []  # the reload: nothing ready for a moment
        await router.route("u")
        assert router.held == frozenset()
        versions["recommend"] = [1, 2]
        assert (await router.route("u")).recommend == "1", "held again after the reload"
        await asyncio.sleep(0)
        assert started == [2, 2] and router.held == {2}

    asyncio.run(scenario())


def test_an_older_version_reloaded_while_the_new_one_warms_is_not_held():
    """A read during a publish's reload may catch v1 missing and v2 ready: v1 coming back must not be
    held too, or both would be held and traffic would go to v2, still warming."""
    versions: dict[str, list[int]] = {"recommend": [1], "ad_ctr": [1, 2]}

    async def ready() -> dict[str, list[int]]:
        return versions

    async def scenario() -> None:
        async def warm(version: int) -> None:
            await asyncio.sleep(3600)

        router = VersionRouter(1.0, ready, None, refresh_s=0.0, warm=warm)
        await router.route("u")
        versions["recommend"] = [1, 2]
        await router.route("u")
        assert router.held == {2}
        versions["recommend"] = [2]  # v1 is being reloaded
        await router.route("u")
        versions["recommend"] = [1, 2]
        route = await router.route("u")
        assert router.held == {2} and route.recommend == "1", route

    asyncio.run(scenario())
