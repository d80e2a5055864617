"""Refused requests are logged, but a flood of them makes a few lines, not one line each."""

from __future__ import annotations

import logging

import pytest

from lightning_otlp.receiver.rejectlog import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_bad_tokens_logs_a_few_lines_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = RejectionLog(logging.getLogger("test.rejections"), burst=3, interval=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.rejections"):
        for i in range(9044):
            log.refused(logging.INFO, "HTTP 401", f"bad token {i}")
        log.refused(logging.WARNING, "HTTP 503", "store busy")
        clock.now += 61
        log.refused(logging.INFO, "HTTP 401", "one more")
        log.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "answering HTTP 401: bad token 0",
        "answering HTTP 401: bad token 1",
        "answering HTTP 401: bad token 2",
        "answering HTTP 503: store busy",
        "answering HTTP 401: 9041 more request(s) in 61 s, not logged one by one",
        "answering HTTP 401: one more",
    ]


def test_each_kind_has_its_own_allowance(caplog: pytest.LogCaptureFixture) -> None:
    log = RejectionLog(logging.getLogger("test.kinds"), burst=1, clock=Clock())
    with caplog.at_level(logging.INFO, logger="test.kinds"):
        for kind in ("HTTP 400", "HTTP 413", "gRPC UNAUTHENTICATED", "HTTP 400"):
            log.refused(logging.INFO, kind, "x")
        log.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "answering HTTP 400: x",
        "answering HTTP 413: x",
        "answering gRPC UNAUTHENTICATED: x",
        "answering HTTP 400: 1 more request(s) in 0 s, not logged one by one",
    ]
