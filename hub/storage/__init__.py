"""Persistence: tortoise models, the hot-table SQL and the :class:`Storage` seam."""

from .codes import QUALITY_CODE, QUALITY_NAME, quality_name
from .store import EventRow, IngestTx, SampleRow, Storage, StorageError

__all__ = [
    "QUALITY_CODE",
    "QUALITY_NAME",
    "EventRow",
    "IngestTx",
    "SampleRow",
    "Storage",
    "StorageError",
    "quality_name",
]
