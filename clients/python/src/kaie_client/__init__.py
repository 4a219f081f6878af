"""A typed Python client for the kaie-analytics API (sync and async, on httpx)."""

from kaie_client._core import IngestReport, KaieError, RetryPolicy, content_id
from kaie_client.client import AsyncClient, Client, Job, Workflow

__all__ = [
    "AsyncClient",
    "Client",
    "IngestReport",
    "Job",
    "KaieError",
    "RetryPolicy",
    "Workflow",
    "content_id",
]
