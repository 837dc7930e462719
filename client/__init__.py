"""What backend services import: typed clients for Triton's ``recommend`` and the feed API.

Needs only numpy, tritonclient[grpc], httpx, tenacity and pydantic, never torch: installed alone
as the ``genrec-client`` distribution, ``pip install ./client`` (client/pyproject.toml, README.md).
"""

from genrec.client.errors import ClientError, FeedApiError, RecommendError
from genrec.client.feed_client import AsyncFeedClient, Event, EventsResult, FeedClient, FeedItem, FeedPage, Item, SimilarItems
from genrec.client.recommend_client import AsyncRecommendClient, RecommendClient, RecommendResult
from genrec.client.retry import RetryPolicy

__all__ = [
    "AsyncFeedClient",
    "AsyncRecommendClient",
    "ClientError",
    "Event",
    "EventsResult",
    "FeedApiError",
    "FeedClient",
    "FeedItem",
    "FeedPage",
    "Item",
    "RecommendClient",
    "RecommendError",
    "RecommendResult",
    "RetryPolicy",
    "SimilarItems",
]
