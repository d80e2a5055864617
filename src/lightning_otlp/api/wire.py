"""Request parsing for ``/v1/agl`` with the error bodies FastAPI gives upstream's server.

The stock ``LightningStoreClient`` reads only status codes and ``detail``, but people read the
rest: a request upstream rejects with 422 (pydantic) or 400 (its own checks) is rejected here
with the same status and the same shape of body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..batch import MAX_SEQUENCE_ID
from ..errors import BadRequest, Invalid
from ..store.lightning import (
    ATTEMPT_STATUSES,
    MODES,
    ROLLOUT_STATUSES,
    WORKER_STATUSES,
    Query,
    Record,
)

ROLLOUT_FIELDS: Final = (
    "rollout_id",
    "input",
    "start_time",
    "end_time",
    "mode",
    "resources_id",
    "status",
    "config",
    "metadata",
)
ATTEMPT_FIELDS: Final = (
    "rollout_id",
    "attempt_id",
    "sequence_id",
    "start_time",
    "end_time",
    "status",
    "worker_id",
    "last_heartbeat_time",
    "metadata",
)
WORKER_FIELDS: Final = (
    "worker_id",
    "status",
    "heartbeat_stats",
    "last_heartbeat_time",
    "last_dequeue_time",
    "last_busy_time",
    "last_idle_time",
    "current_rollout_id",
    "current_attempt_id",
)
RESOURCES_FIELDS: Final = ("resources_id", "create_time", "update_time", "version", "resources")
SPAN_FIELDS: Final = (
    "rollout_id",
    "attempt_id",
    "sequence_id",
    "trace_id",
    "span_id",
    "parent_id",
    "name",
    "status",
    "attributes",
    "events",
    "links",
    "start_time",
    "end_time",
    "context",
    "parent",
    "resource",
)
SPAN_FILTERS: Final = ("trace_id", "span_id", "parent_id", "name")

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def error(kind: str, loc: Sequence[Any], msg: str, value: Any) -> Invalid:
    return Invalid([{"type": kind, "loc": list(loc), "msg": msg, "input": value}])


class Fields:
    """Typed reads from one JSON object (a body or a query string), collecting FastAPI errors."""

    def __init__(self, data: Mapping[str, Any], where: str, *, loc: Sequence[Any] = ()) -> None:
        self.data = data
        self.where = where
        # where an error points: ("body", name) by default, or under a nested object's path
        self.prefix = list(loc) if loc else [where]

    def has(self, name: str) -> bool:
        return name in self.data

    def _loc(self, name: str) -> list[Any]:
        return [*self.prefix, name]

    def raw(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        if name not in self.data:
            if required:
                raise error("missing", self._loc(name), "Field required", None)
            return default
        return self.data[name]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.raw(name, default, required=required)
        if value is None or (name not in self.data):
            return value
        if not isinstance(value, str):
            raise error("string_type", self._loc(name), "Input should be a valid string", value)
        return value

    def integer(self, name: str, default: int | None = None, *, required: bool = False) -> Any:
        """An integer; an explicit ``null`` only where the field may be missing with no
        default (pydantic's ``Optional[int] = None``), else 422 as for any other non-integer."""
        value = self.raw(name, default, required=required)
        if name not in self.data:
            return value
        if value is None:
            if required or default is not None:
                raise error("int_type", self._loc(name), "Input should be a valid integer", None)
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise error("int_type", self._loc(name), "Input should be a valid integer", value)
        try:
            number = int(value)
        except (ValueError, OverflowError):  # OverflowError: an infinite float
            raise error(
                "int_parsing",
                self._loc(name),
                "Input should be a valid integer, unable to parse string as an integer",
                value,
            ) from None
        if isinstance(value, float) and number != value:
            raise error(
                "int_from_float",
                self._loc(name),
                "Input should be a valid integer, got a number with a fractional part",
                value,
            )
        if not _INT64_MIN <= number <= _INT64_MAX:
            # The store keeps 64-bit integers; a larger one would fail there, as a 5xx.
            raise error(
                "less_than_equal" if number > 0 else "greater_than_equal",
                self._loc(name),
                f"Input should fit in a 64-bit integer ({_INT64_MIN} to {_INT64_MAX})",
                value,
            )
        return number

    def number(self, name: str) -> Any:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise error("float_type", self._loc(name), "Input should be a valid number", value)
        try:
            return float(value)
        except ValueError:
            raise error(
                "float_parsing",
                self._loc(name),
                "Input should be a valid number, unable to parse string as a number",
                value,
            ) from None

    def choice(self, name: str, allowed: Sequence[str], default: str | None = None) -> Any:
        """One of ``allowed``; ``null`` only where there is no default (``Optional``)."""
        value = self.raw(name, default)
        if name in self.data and value not in allowed and (value is not None or default):
            raise _literal(self._loc(name), allowed, value)
        return value

    def choices(self, name: str, allowed: Sequence[str]) -> list[str] | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise error("list_type", self._loc(name), "Input should be a valid list", value)
        for i, item in enumerate(value):
            if item not in allowed:
                raise _literal([*self._loc(name), i], allowed, item)
        return list(value)

    def strings(self, name: str) -> list[str] | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise error("list_type", self._loc(name), "Input should be a valid list", value)
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise error(
                    "string_type", [*self._loc(name), i], "Input should be a valid string", item
                )
        return list(value)

    def mapping(self, name: str) -> Any:
        value = self.raw(name)
        if value is not None and not isinstance(value, dict):
            raise error("dict_type", self._loc(name), "Input should be a valid dictionary", value)
        return value


def _literal(loc: Sequence[Any], allowed: Sequence[str], value: Any) -> Invalid:
    options = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
    return error("literal_error", loc, f"Input should be {options}", value)


def body_object(body: Any, *, required: bool) -> Record | None:
    if body is None:
        if required:
            raise error("missing", ["body"], "Field required", None)
        return None
    if not isinstance(body, dict):
        raise error("model_attributes_type", ["body"], "Input should be a valid dictionary", body)
    return body


def rollout_config(value: Any, loc: Sequence[Any]) -> Record | None:
    """A ``RolloutConfig`` with its defaults filled, as pydantic would."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise error("model_attributes_type", loc, "Input should be a valid dictionary", value)
    fields = Fields(value, "body", loc=loc)
    max_attempts = fields.integer("max_attempts", 1)
    if max_attempts is None or max_attempts < 1:
        raise error(
            "greater_than_equal",
            [*loc, "max_attempts"],
            "Input should be greater than or equal to 1",
            value.get("max_attempts"),
        )
    retry = fields.choices("retry_condition", ATTEMPT_STATUSES)
    return {
        "timeout_seconds": fields.number("timeout_seconds"),
        "unresponsive_seconds": fields.number("unresponsive_seconds"),
        "max_attempts": max_attempts,
        "retry_condition": retry or [],
    }


def rollout_request(data: Record, loc: Sequence[Any] = ("body",)) -> Record:
    """``RolloutRequest`` / ``EnqueueRolloutRequest``: input, mode, resources_id, config, ..."""
    fields = Fields(data, "body", loc=loc)
    return {
        "input": fields.raw("input", required=True),
        "mode": fields.choice("mode", MODES),
        "resources_id": fields.string("resources_id"),
        "config": rollout_config(data.get("config"), [*loc, "config"]),
        "metadata": fields.mapping("metadata"),
        "worker_id": fields.string("worker_id"),
    }


def query(fields: Fields, allowed_sort: Sequence[str], sort_default: str | None = None) -> Query:
    """Pagination and sorting, with upstream's 400s for values it refuses."""
    result = Query(
        sort_by=fields.string("sort_by", sort_default),
        sort_order=fields.choice("sort_order", ("asc", "desc"), "asc"),
        limit=fields.integer("limit", -1),
        offset=fields.integer("offset", 0),
    )
    if result.sort_by is not None and result.sort_by not in allowed_sort:
        raise BadRequest(
            f"Invalid sort_by: {result.sort_by}, allowed fields are: {', '.join(allowed_sort)}"
        )
    # 0 is an empty page (with its total), as agentlightning's stores themselves answer it.
    if result.limit < -1:
        raise BadRequest("Limit must be 0 or more, or -1 for no limit")
    if not result.offset >= 0:
        raise BadRequest("Offset must be greater than or equal to 0")
    return result


def filter_logic(fields: Fields) -> Any:
    return fields.choice("filter_logic", ("and", "or"), "and")


def span(data: Record) -> Record:
    """A ``Span``: every field is required; ids and name must be strings."""
    fields = Fields(data, "body")
    for name in SPAN_FIELDS:
        fields.raw(name, required=True)
    for name in ("rollout_id", "attempt_id", "trace_id", "span_id", "name"):
        fields.string(name, required=True)
    fields.string("parent_id")
    sequence_id = fields.integer("sequence_id", required=True)
    if sequence_id > MAX_SEQUENCE_ID:
        # The OTLP path keeps the same bound: ids stay exact in JSON readers (the dashboard).
        raise error(
            "less_than_equal",
            ["body", "sequence_id"],
            f"Input should fit in a 64-bit integer and be at most {MAX_SEQUENCE_ID}",
            sequence_id,
        )
    status = data["status"]
    if not isinstance(status, dict) or status.get("status_code") not in ("UNSET", "OK", "ERROR"):
        raise error(
            "model_attributes_type", ["body", "status"], "Input should be a valid status", status
        )
    return {**data, "sequence_id": int(data["sequence_id"])}


STATUS_SETS: Final = {
    "rollout": ROLLOUT_STATUSES,
    "attempt": ATTEMPT_STATUSES,
    "worker": WORKER_STATUSES,
}
