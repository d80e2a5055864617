"""Stores behind small interfaces; which one a URL names is decided in ``wiring.py``."""

from __future__ import annotations

from ..defaults import DEFAULT_STORE_URL
from .base import Metric, Store, WriteResult
from .sqlite import SQLiteStore
from .url import StoreURL, parse_store_url

__all__ = [
    "DEFAULT_STORE_URL",
    "Metric",
    "SQLiteStore",
    "Store",
    "StoreURL",
    "WriteResult",
    "parse_store_url",
]
