"""Zero-code setup: ``opentelemetry-instrument`` adds ``RolloutSpanProcessor`` by itself.

Auto-instrumentation loads every ``opentelemetry_instrumentor`` entry point after the distro
and configurator have installed the SDK ``TracerProvider``; this package registers
``RolloutInstrumentor`` there, whose ``instrument()`` adds the processor to that provider. Like
any instrumentation it is turned off with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=lightning_otlp``. Imported only by auto-instrumentation
(or by a user calling it by hand), so ``opentelemetry-instrumentation`` stays optional.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from .rollout import RolloutSpanProcessor

__all__ = ["RolloutInstrumentor"]

_logger = logging.getLogger(__name__)


class RolloutInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Add ``RolloutSpanProcessor`` to the SDK ``TracerProvider`` (the global one by default)."""

    _processor: RolloutSpanProcessor | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        add = getattr(provider, "add_span_processor", None)
        if add is None:
            _logger.warning(
                "no OpenTelemetry SDK TracerProvider is installed (found %s): rollout ids will "
                "not be stamped; install opentelemetry-distro or configure the SDK",
                type(provider).__name__,
            )
            return
        processor = RolloutSpanProcessor()
        add(processor)
        self._processor = processor
        _logger.debug("RolloutSpanProcessor added to %s", type(provider).__name__)

    def _uninstrument(self, **kwargs: Any) -> None:
        # The SDK cannot remove a processor: this one stays, stamping nothing.
        if self._processor is not None:
            self._processor._disable()
            self._processor = None
