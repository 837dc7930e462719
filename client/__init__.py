"""What backend services import: typed clients for Triton's ``recommend`` and the feed API.

Needs only numpy, tritonclient[grpc], httpx, tenacity and pydantic (the ``client`` extra),
never torch: ``pip install 'genrec[client]'`` or the client-only wheel (client/README.md).
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
