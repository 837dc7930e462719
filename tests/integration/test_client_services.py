"""genrec.client against the real services: Triton's `recommend` (gRPC and HTTP, sync and
asyncio), retries while the server is briefly unreachable, errors that are not retried, the
CLI, and the client installed alone in a fresh virtualenv without torch."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tomllib

from genrec.client import AsyncRecommendClient, RecommendClient, RecommendError, RetryPolicy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HISTORY = ([3, 17, 42, 5], [0, 1, 0, 2], [1.7e9, 1.7e9 + 60, 1.7e9 + 120, 1.7e9 + 180], [0, 0, 1, 0])


class Forwarder:
    """A TCP forwarder from a loopback port to a running server: started late, it makes the
    server look briefly down (connection refused) and then up, without restarting it."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port, self.target_port = listen_port, target_port
        self.sock: socket.socket | None = None

    def start(self) -> Forwarder:
        self.sock = socket.create_server(("127.0.0.1", self.listen_port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()


@pytest.fixture(scope="module")
def triton(tiny_triton):
    return tiny_triton


def test_grpc_and_http_give_the_same_typed_answer(triton):
    with RecommendClient(triton.grpc_url) as g, RecommendClient(triton.http_url, "http") as h:
        a = g.recommend(*HISTORY, user_id="client-1", top_k=5, request_id="req-grpc")
        b = h.recommend(*HISTORY, top_k=5, timeout_s=5.0)
    assert a.items.dtype == np.int64 and a.scores.dtype == np.float32 and len(a.items) == 5
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert a.request_id == "req-grpc" and a.model_version and a.model_version == b.model_version


def test_async_clients_share_one_channel_across_concurrent_calls(triton):
    async def go(url: str, protocol: str):
        async with AsyncRecommendClient(url, protocol) as c:
            results = await asyncio.gather(*(c.recommend(*HISTORY, user_id=f"async-{i}", top_k=3) for i in range(6)))
            assert await c.ready()
            return results

    for url, protocol in ((triton.grpc_url, "grpc"), (triton.http_url, "http")):
        results = asyncio.run(go(url, protocol))
        assert len({tuple(r.items) for r in results}) == 1 and len({r.request_id for r in results}) == 6


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_invalid_argument_is_raised_at_once_with_message_code_and_request_id(triton, protocol):
    retries: list[object] = []
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    client = RecommendClient(url, protocol, retry=RetryPolicy(on_retry=retries.append))
    with pytest.raises(RecommendError) as e:
        client.recommend([10**7], [0], [1.7e9], [0], request_id="bad-1")
    assert e.value.invalid_argument and e.value.code == "INVALID_ARGUMENT" and not e.value.retryable
    assert "unknown item" in e.value.message and e.value.request_id == "bad-1" and retries == []


def test_deadline_exceeded_is_retried_then_raised(triton):
    retries: list[object] = []
    client = RecommendClient(triton.grpc_url, retry=RetryPolicy(attempts=3, initial_s=0.001, max_s=0.01, on_retry=retries.append))
    with pytest.raises(RecommendError) as e:
        client.recommend(*HISTORY, timeout_s=0.0001)
    assert e.value.code == "DEADLINE_EXCEEDED" and e.value.retryable and len(retries) == 2
    assert len(client.recommend(*HISTORY).items) > 0  # the same channel serves again


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_call_succeeds_when_the_server_comes_back_during_its_retries(triton, free_port, protocol):
    port = free_port()
    target = triton.grpc_port if protocol == "grpc" else triton.http_port
    forwarder = Forwarder(port, target)
    failures: list[str] = []

    def came_back_after_first_failure(state) -> None:
        failures.append(state.outcome.exception().code)
        if len(failures) == 2:  # down for two attempts, then up
            forwarder.start()

    policy = RetryPolicy(attempts=20, initial_s=0.05, max_s=0.2, deadline_s=30, on_retry=came_back_after_first_failure)
    try:
        with RecommendClient(f"127.0.0.1:{port}", protocol, timeout_s=5.0, retry=policy) as c:
            r = c.recommend(*HISTORY, top_k=4)
    finally:
        forwarder.stop()
    assert failures[:2] == ["UNAVAILABLE", "UNAVAILABLE"] and len(r.items) == 4


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "genrec-client"), *args], capture_output=True, text=True, timeout=60)


def test_cli_recommend(triton):
    ok = _cli("recommend", "--url", triton.grpc_url, "--items", "3,17,42", "--top-k", "3", "--json")
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["items"]) == 3
    human = _cli("recommend", "--url", triton.http_url, "--protocol", "http", "--items", "3,17")
    assert human.returncode == 0 and "rank" in human.stdout
    bad = _cli("recommend", "--url", triton.grpc_url, "--items", str(10**7))
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "unknown item" in bad.stderr
    down = _cli("recommend", "--url", "127.0.0.1:1", "--items", "3", "--attempts", "2")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
    assert _cli("--help").returncode == 0 and "feed --user" in _cli("--help").stdout


def test_the_client_installs_alone_in_a_fresh_venv_without_torch(tmp_path):
    """client/ copied as it is (its own pyproject.toml: the ``genrec-client`` distribution) and
    ``pip install``-ed into a venv without system site-packages, the way a backend service does:
    it imports, the CLI runs, and torch is not there."""
    meta = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "genrec-client"
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in meta["dependencies"]}  # type: ignore[union-attr]
    assert names.isdisjoint({"torch", "lightgbm", "pandas"}), names
    src = tmp_path / "client"
    shutil.copytree(REPO / "client", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import importlib.util, sys\n"
        "import genrec.client\n"
        "from genrec.client import RecommendClient, FeedClient, AsyncRecommendClient, AsyncFeedClient, RetryPolicy\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
        "print(sorted(m for m in ('torch', 'lightgbm', 'bentoml', 'genrec.ensemble') if m in sys.modules))\n"
    )
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    cli = subprocess.run([str(venv / "bin" / "genrec-client"), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cli.returncode == 0 and "genrec-client" in cli.stdout


def test_feed_client_pages_events_and_items(tiny_feed):
    from genrec.client import Event, FeedApiError, FeedClient

    retries: list[object] = []
    with FeedClient(tiny_feed.url, retry=RetryPolicy(on_retry=retries.append)) as c:
        first = c.feed("u1", 4)
        second = c.feed("u1", 4, first.next_cursor)
        assert len(first.items) == 4 and second.page == first.page + 1 and first.request_id
        assert not {i.id for i in first.items} & {i.id for i in second.items}
        batch = [Event.of(first.items[0], "impression"), Event.of(first.items[1], "click")]
        once = c.events("u1", batch, "client-key-1")
        again = c.events("u1", batch, "client-key-1")
        assert once.accepted == 2 and not once.replayed and again.replayed
        organic = next(i for i in first.items + second.items if i.type != "ad")  # ads are not served as items
        assert all((i.ad is not None) == (i.type == "ad") for i in first.items + second.items)
        assert c.item(organic.id).id == organic.id
        assert len(c.similar(organic.id, 3, "u1").items) == 3
        with pytest.raises(FeedApiError) as e:
            c.item(10**9, request_id="nf-1")
        assert (e.value.status, e.value.code, e.value.request_id, e.value.retryable) == (404, 40400, "nf-1", False)
        with pytest.raises(FeedApiError) as e:
            c.feed("u1", 0)
        assert e.value.status == 422 and "count" in e.value.message
    assert retries == []


def test_async_feed_client(tiny_feed):
    from genrec.client import AsyncFeedClient, Event

    async def go():
        async with AsyncFeedClient(tiny_feed.url) as c:
            pages = await asyncio.gather(*(c.feed(f"u{i}", 3) for i in range(4)))
            ack = await c.events("u0", [Event.of(pages[0].items[0], "like")])
            return pages, ack

    pages, ack = asyncio.run(go())
    assert all(len(p.items) == 3 for p in pages) and ack.likes == 1


def test_an_events_post_is_retried_with_its_key_while_redis_is_down(tiny_feed):
    """Redis stopped: the feed answers /v1/events with 503 (nothing stored). The client retries
    with the same Idempotency-Key; Redis comes back after the first failure; the batch is
    applied once (a repeat with the key is a replay)."""
    from genrec.client import Event, FeedClient

    page = FeedClient(tiny_feed.url).feed("u3", 2)
    batch = [Event.of(page.items[0], "click")]
    seen: list[int | None] = []

    def redis_back_after_first_failure(state) -> None:
        seen.append(state.outcome.exception().status)
        if len(seen) == 1:
            tiny_feed.restart_redis()

    tiny_feed.redis.stop()
    try:
        client = FeedClient(
            tiny_feed.url, retry=RetryPolicy(attempts=10, initial_s=0.05, max_s=0.5, on_retry=redis_back_after_first_failure)
        )
        ack = client.events("u3", batch, "redis-down-key")
    finally:
        if tiny_feed.redis.proc is None or tiny_feed.redis.proc.poll() is not None:
            tiny_feed.restart_redis()
    assert seen[0] == 503 and ack.accepted == 1 and not ack.replayed
    assert client.events("u3", batch, "redis-down-key").replayed


def test_cli_feed(tiny_feed):
    out = _cli("feed", "--url", tiny_feed.url, "--user", "u2", "--count", "3", "--pages", "2", "--json")
    assert out.returncode == 0, out.stderr
    pages = json.loads(out.stdout)["pages"]
    assert [p["page"] for p in pages] == [0, 1] and all(len(p["items"]) == 3 for p in pages)
    assert "page 0" in _cli("feed", "--url", tiny_feed.url, "--user", "u2").stdout
