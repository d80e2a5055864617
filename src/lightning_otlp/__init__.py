"""lightning-otlp: OpenTelemetry spans from any language into Agent Lightning's LightningStore."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
