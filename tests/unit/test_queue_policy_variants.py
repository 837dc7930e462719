"""bench.queue_policy's three configs of recommend differ from the published one only in the batcher."""

from bench.queue_policy import BATCHING_BLOCK, bounded_block, variant
from genrec.contracts import recommend_contract
from genrec.exporters.pbtxt import render
from genrec.settings import named_config


def test_the_three_modes_differ_only_in_the_batcher_block():
    published = render(recommend_contract(named_config("tiny", environ={})))
    assert "dynamic_batching" not in published  # the default: no bounded queue
    bounded = bounded_block(64, 500)
    assert "max_queue_size: 64" in bounded and "default_timeout_microseconds: 500000" in bounded
    assert variant(published, "no_batcher", bounded) == published
    with_policy = variant(published, "queue_policy", bounded)
    assert with_policy == render(recommend_contract(named_config("tiny", environ={"GENREC_SERVING__MAX_QUEUE_SIZE": "64"})))
    no_policy = variant(published, "batcher_no_policy", bounded)
    assert "dynamic_batching { }" in no_policy and "default_queue_policy" not in no_policy
    for text in (with_policy, no_policy):
        assert BATCHING_BLOCK.sub("", text).replace("dynamic_batching { }\n", "") == published
