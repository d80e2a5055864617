"""tests/fleet.py: several real receivers started side by side, one killed and restarted on its
own ports while the others serve. Each on its own SQLite file here; the shared-store tests run the
same harness on one PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .fleet import Fleet
from .payloads import make_request, make_span

pytestmark = [pytest.mark.e2e]

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def send(url: str, name: str) -> None:
    body = make_request([make_span(name)]).SerializeToString()
    response = httpx.post(url, content=body, headers=PROTOBUF, timeout=10)
    assert response.status_code == 200, response.text


def names(fleet: Fleet, index: int) -> list[str]:
    return sorted(s["name"] for s in fleet[index].spans())


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet([f"sqlite:///{tmp_path / f'receiver-{i}.db'}" for i in range(3)], tmp_path)


def test_receivers_start_side_by_side_each_on_its_own_ports(fleet: Fleet) -> None:
    with fleet:
        assert len(fleet) == 3 and all(r.ready() for r in fleet)
        addresses = fleet.http_urls + fleet.grpc_targets + [r.health_url for r in fleet]
        assert len(set(addresses)) == 9
        for i, url in enumerate(fleet.traces_urls):
            send(url, f"span {i}")
        assert [names(fleet, i) for i in range(3)] == [["span 0"], ["span 1"], ["span 2"]]
    assert [r.proc.returncode for r in fleet if r.proc] == [0, 0, 0]
    assert fleet.tracebacks() == []


def test_one_receiver_killed_and_restarted_on_the_same_ports(fleet: Fleet) -> None:
    with fleet:
        send(fleet.traces_urls[1], "before")
        address = fleet[1].http_url
        fleet.kill(1)
        assert fleet[1].proc is not None and fleet[1].proc.returncode == -9
        assert not fleet[1].ready()
        with pytest.raises(httpx.ConnectError):
            send(fleet.traces_urls[1], "while down")
        send(fleet.traces_urls[0], "to another")  # the others serve on
        assert fleet[2].ready()

        fleet.restart(1)
        assert fleet[1].http_url == address and fleet[1].ready()
        send(fleet.traces_urls[1], "after")
        assert names(fleet, 1) == ["after", "before"]  # the acknowledged span was kept
        assert names(fleet, 0) == ["to another"]
    assert fleet.tracebacks() == []
