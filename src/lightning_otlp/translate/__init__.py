"""GenAI instrumentation conventions to the shape Agent Lightning trains on, at read time.

One module per convention (``otel_genai``, ``openllmetry``, ``openinference``, ``vercel``), each a
pure function from a span's attributes (and events, including GenAI log records joined onto the
span) to one ``LlmCall``; ``dispatch`` picks the convention by what the span carries and writes the
call as Agent Lightning's own tracer does. No I/O and no state: the same span gives the same
record on every receiver.
"""

from __future__ import annotations

from .dispatch import awaits_logs, encloses_call, model_call, translate
from .logs import answers_call, is_genai_event, log_event

__all__ = [
    "answers_call",
    "awaits_logs",
    "encloses_call",
    "is_genai_event",
    "log_event",
    "model_call",
    "translate",
]
