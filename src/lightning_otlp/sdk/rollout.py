"""Put every span of an OpenTelemetry-instrumented Python agent into its LightningStore rollout.

``rollout()`` opens a rollout context (kept in the OpenTelemetry ``Context``, so each thread and
each asyncio task sees its own); ``RolloutSpanProcessor``, added to the ``TracerProvider`` the
agent already has, stamps the context's rollout and attempt ids on every span started inside it,
including spans made by third-party instrumentation. The receiver then files each span under
those ids, creating the rollout and attempt records on first sight: no network call is needed to
start a rollout.

Spans written by this module:

- ``agentlightning.rollout`` covers a ``rollout()`` block (status ERROR if the block raised) and
  carries the rollout's ``input`` (JSON text) and ``mode``, which the receiver copies into the
  rollout record.
- ``agentlightning.rollout.start`` is a zero-duration child of it, ended as the block starts, so
  the binding of the trace to the rollout reaches exporters at once rather than when the block
  ends. It carries only the ids and is stored like any other span.
- ``agentlightning.annotation`` holds a reward from ``emit_reward()``, in Agent Lightning's own
  layout (``agentlightning.reward.<i>.name`` / ``.value``, primary reward first).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar, cast

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Status, StatusCode

from .. import ids, semconv

__all__ = [
    "RolloutIds",
    "RolloutSpanProcessor",
    "current_rollout",
    "emit_reward",
    "rollout",
]

_logger = logging.getLogger(__name__)

_ROLLOUT_KEY: Final = otel_context.create_key("agentlightning-rollout")
_MODES: Final = frozenset({"train", "val", "test"})
_TRACER_NAME: Final = "lightning_otlp"
_F = TypeVar("_F", bound=Callable[..., Any])


class RolloutIds(NamedTuple):
    """The rollout and attempt that spans started in the current context belong to."""

    rollout_id: str
    attempt_id: str


class _Binding:
    """What the context holds: the ids, and the attribute mapping ``on_start`` sets as is."""

    __slots__ = ("ids", "attributes")

    def __init__(self, rollout_id: str, attempt_id: str) -> None:
        self.ids = RolloutIds(rollout_id, attempt_id)
        # Built once per rollout block so that on_start allocates nothing of its own. A plain
        # dict, never handed out: the SDK checks a MappingProxyType's type more slowly.
        self.attributes: dict[str, str] = {
            semconv.ROLLOUT_ID: rollout_id,
            semconv.ATTEMPT_ID: attempt_id,
        }


class RolloutSpanProcessor(SpanProcessor):
    """Stamp the active rollout's ids on every span as it starts.

    The ids come from the innermost ``rollout()`` block of the span's parent context or, outside
    any block, from W3C Baggage entries ``agentlightning.rollout_id`` /
    ``agentlightning.attempt_id`` (so a service called from inside a rollout joins it). Spans
    that already carry either id keep what the caller set; spans with neither source are left
    alone and follow the receiver's routing rules. Never blocks, never raises.
    """

    def __init__(self) -> None:
        self._active = True
        self._shut_down = False
        self._warned = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self._active:
            return
        try:
            ctx = parent_context if parent_context is not None else otel_context.get_current()
            # Only _Binding objects are ever stored under this module's private key.
            binding: _Binding | None = ctx.get(_ROLLOUT_KEY)  # type: ignore[assignment]
            stamp = binding.attributes if binding is not None else _from_baggage(ctx)
            if stamp is None:
                return
            existing = span._attributes  # the start attributes; .attributes would copy them
            if existing and (semconv.ROLLOUT_ID in existing or semconv.ATTEMPT_ID in existing):
                return
            if not _stamp_in_place(existing, stamp):
                span.set_attributes(stamp)
        except Exception:  # a tracing aid must never break the agent it observes
            self._log_failure()

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        if self._shut_down:
            _logger.warning("RolloutSpanProcessor.shutdown() called more than once")
        self._shut_down = True
        self._active = False

    def _disable(self) -> None:
        """Stop stamping without a shutdown: the provider still owns the processor."""
        self._active = False

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def _log_failure(self) -> None:
        # One warning with the traceback, then quietly: a broken span must not flood the log.
        if not self._warned:
            self._warned = True
            _logger.warning("could not stamp rollout ids on a span", exc_info=True)
        else:
            _logger.debug("could not stamp rollout ids on a span", exc_info=True)


def _stamp_in_place(attributes: Any, stamp: dict[str, str]) -> bool:
    """Add the ids straight to a starting span's attribute dict when the SDK's own path would
    store them unchanged: new keys, plain string values, no length limit, room under the count
    limit. That path cleans and locks per attribute, most of what stamping costs; nobody else
    holds a span in ``on_start``. False (nothing done) whenever any of that is not so."""
    items = getattr(attributes, "_dict", None)
    if type(items) is not dict or getattr(attributes, "_immutable", True):
        return False
    if getattr(attributes, "max_value_len", 0) is not None:
        return False
    maxlen = getattr(attributes, "maxlen", 0)
    if maxlen is not None and len(items) + len(stamp) > maxlen:
        return False
    items.update(stamp)
    return True


def _from_baggage(ctx: Context) -> dict[str, str] | None:
    entries = baggage.get_all(ctx)
    if not entries:
        return None
    rollout_id = entries.get(semconv.ROLLOUT_ID)
    if not rollout_id or not isinstance(rollout_id, str):
        return None
    attempt_id = entries.get(semconv.ATTEMPT_ID)
    if attempt_id and isinstance(attempt_id, str):
        return {semconv.ROLLOUT_ID: rollout_id, semconv.ATTEMPT_ID: attempt_id}
    # Without an attempt id the receiver files the span under the rollout's latest attempt.
    return {semconv.ROLLOUT_ID: rollout_id}


def current_rollout() -> RolloutIds | None:
    """The ids of the innermost ``rollout()`` block around the caller, or None."""
    binding = otel_context.get_value(_ROLLOUT_KEY)
    return binding.ids if isinstance(binding, _Binding) else None


def _tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.get_tracer(_TRACER_NAME)
    return provider.get_tracer(_TRACER_NAME)


# Lower case: a context manager used like a function, as contextlib's are.
class rollout:
    """Open a rollout context: a ``with`` block, an ``async with`` block, or a decorator.

    Every span started inside (in this thread or asyncio task) is stamped with the rollout's ids
    by ``RolloutSpanProcessor``. Ids not given are generated in Agent Lightning's formats
    (``ro-`` + 12 hex, ``at-`` + 8 hex), once per block entered (so a decorated function gets a
    new rollout per call). Blocks nest: the inner one wins and the outer one is back on exit.

    Args:
        rollout_id: the rollout to report into; a new one when None.
        attempt_id: the attempt within it; a new one when None.
        input: the rollout's input, any JSON-serializable value, stored in the rollout record.
        mode: ``"train"``, ``"val"`` or ``"test"``, stored in the rollout record.
        propagate: also put the ids in W3C Baggage, so that context propagation carries them to
            downstream services (in any language) whose spans then join this rollout. When
            False, ids an outer block put in Baggage are removed for the inner block's duration.
        tracer_provider: where the ``agentlightning.rollout`` span goes; the global one if None.
    """

    def __init__(
        self,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        *,
        input: Any = None,  # Agent Lightning's field name
        mode: str | None = None,
        propagate: bool = False,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        if rollout_id is not None and (not isinstance(rollout_id, str) or not rollout_id):
            raise ValueError(f"rollout_id must be a non-empty string, not {rollout_id!r}")
        if attempt_id is not None and (not isinstance(attempt_id, str) or not attempt_id):
            raise ValueError(f"attempt_id must be a non-empty string, not {attempt_id!r}")
        if mode is not None and mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)} or None, not {mode!r}")
        input_json = None
        if input is not None:
            try:
                input_json = json.dumps(input, ensure_ascii=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"input must be JSON-serializable: {exc}") from exc
        self._rollout_id = rollout_id
        self._attempt_id = attempt_id
        self._input_json = input_json
        self._mode = mode
        self._propagate = propagate
        self._tracer_provider = tracer_provider
        # The blocks of this object open in the caller's thread or task, innermost last, as
        # (context token, rollout span): one object (a decorator, a shared instance) may be
        # entered by many threads and tasks at once, and each must close its own block.
        self._open: ContextVar[tuple[tuple[object, trace.Span], ...]] = ContextVar(
            "lightning_otlp.rollout", default=()
        )

    def __enter__(self) -> RolloutIds:
        rollout_id = self._rollout_id or ids.new_rollout_id()
        attempt_id = self._attempt_id or ids.new_attempt_id()
        binding = _Binding(rollout_id, attempt_id)
        parent = otel_context.get_current()
        attributes: dict[str, Any] = dict(binding.attributes)
        if self._input_json is not None:
            attributes[semconv.ROLLOUT_INPUT] = self._input_json
        if self._mode is not None:
            attributes[semconv.ROLLOUT_MODE] = self._mode
        tracer = _tracer(self._tracer_provider)
        span = tracer.start_span(semconv.ROLLOUT_SPAN, context=parent, attributes=attributes)
        ctx = otel_context.set_value(_ROLLOUT_KEY, binding, parent)
        ctx = _with_baggage(ctx, binding if self._propagate else None)
        ctx = trace.set_span_in_context(span, ctx)
        token = otel_context.attach(ctx)
        self._open.set((*self._open.get(), (token, span)))
        # Exported now, not when the block ends: the trace's binding is known from the start.
        marker = tracer.start_span(
            semconv.ROLLOUT_START_SPAN, context=ctx, attributes=binding.attributes
        )
        marker.end(end_time=marker.start_time if isinstance(marker, ReadableSpan) else None)
        return binding.ids

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        *outer, (token, span) = self._open.get()
        self._open.set(tuple(outer))
        try:
            if exc is not None:
                span.record_exception(exc, escaped=True)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            otel_context.detach(cast(Any, token))
            span.end()

    async def __aenter__(self) -> RolloutIds:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: _F) -> _F:
        """Run each call of ``fn`` (sync or async) in a rollout block of its own."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return cast(_F, run_async)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return cast(_F, run)


def _with_baggage(ctx: Context, binding: _Binding | None) -> Context:
    if binding is not None:
        ctx = baggage.set_baggage(semconv.ROLLOUT_ID, binding.ids.rollout_id, ctx)
        return baggage.set_baggage(semconv.ATTEMPT_ID, binding.ids.attempt_id, ctx)
    entries = baggage.get_all(ctx)
    if semconv.ROLLOUT_ID in entries or semconv.ATTEMPT_ID in entries:
        # An outer block's ids must not send downstream spans to the wrong rollout.
        ctx = baggage.remove_baggage(semconv.ROLLOUT_ID, ctx)
        ctx = baggage.remove_baggage(semconv.ATTEMPT_ID, ctx)
    return ctx


def emit_reward(
    reward: float | Mapping[str, float],
    primary_key: str | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
) -> dict[str, Any]:
    """Record a reward as Agent Lightning does: an ``agentlightning.annotation`` span.

    A number becomes one dimension named ``primary``; a mapping needs ``primary_key``, whose
    dimension goes first (Agent Lightning reads the first as the primary reward). Inside a
    ``rollout()`` block the span carries that rollout's ids. Returns the span's attributes.
    """
    dimensions: list[tuple[str, float]] = []
    if isinstance(reward, Mapping):
        values: dict[str, float] = {}
        for key, value in reward.items():
            if not isinstance(value, (int, float)):
                raise ValueError(f"reward value must be a number, got {type(value)} for {key!r}")
            values[str(key)] = float(value)
        if primary_key is None:
            raise ValueError("a reward given as a mapping needs primary_key")
        if primary_key not in values:
            raise ValueError(f"primary_key {primary_key!r} not in the reward's keys {list(values)}")
        dimensions.append((primary_key, values.pop(primary_key)))
        dimensions.extend(values.items())
    elif isinstance(reward, (int, float)):
        dimensions.append(("primary", float(reward)))
    else:
        raise TypeError(f"reward must be a number or a mapping of numbers, not {type(reward)}")
    attributes: dict[str, Any] = {}
    for index, (name, value) in enumerate(dimensions):
        attributes[f"{semconv.REWARD_PREFIX}.{index}.name"] = name
        attributes[f"{semconv.REWARD_PREFIX}.{index}.value"] = value
    binding = otel_context.get_value(_ROLLOUT_KEY)
    if isinstance(binding, _Binding):
        attributes.update(binding.attributes)
    span = _tracer(tracer_provider).start_span(semconv.ANNOTATION_SPAN, attributes=attributes)
    span.set_status(Status(StatusCode.OK))
    span.end()
    return attributes
