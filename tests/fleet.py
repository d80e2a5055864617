"""Several ``lightning-otlp serve`` processes at once, as a fleet behind a load balancer runs them:
each on loopback ports of its own that a restart keeps, started side by side, any one killed or
restarted while the others serve."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .support import ReceiverProcess, free_port


class Fleet:
    """``count`` receivers on one shared store URL, or on one store URL each (``stores`` a list).

    Receiver ``i`` logs to ``workdir/receiver-i.log`` (beside its file for a SQLite store, which
    its ``spans()`` and ``rollouts()`` then read); extra ``flags`` go to every receiver.
    """

    def __init__(
        self,
        stores: str | Sequence[str],
        workdir: Path,
        *flags: str,
        count: int = 3,
        env: dict[str, str] | None = None,
    ) -> None:
        urls = [stores] * count if isinstance(stores, str) else list(stores)
        self.receivers = [
            ReceiverProcess(
                _sqlite_path(url) or workdir / f"receiver-{i}.db",
                "--grpc",
                f"127.0.0.1:{free_port()}",
                "--http",
                f"127.0.0.1:{free_port()}",
                "--health",
                f"127.0.0.1:{free_port()}",
                *flags,
                env=env,
                store=url,
            )
            for i, url in enumerate(urls)
        ]

    def __len__(self) -> int:
        return len(self.receivers)

    def __getitem__(self, index: int) -> ReceiverProcess:
        return self.receivers[index]

    def __iter__(self) -> Iterator[ReceiverProcess]:
        return iter(self.receivers)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_urls(self) -> list[str]:
        return [r.http_url for r in self.receivers]

    @property
    def traces_urls(self) -> list[str]:
        return [r.traces_url for r in self.receivers]

    @property
    def grpc_targets(self) -> list[str]:
        return [r.grpc_target for r in self.receivers]

    def start(self, timeout: float = 60.0) -> Fleet:
        """Start every receiver side by side; returns once all are ready."""
        for receiver in self.receivers:
            receiver.launch()
        try:
            for receiver in self.receivers:
                receiver.wait_started(timeout)
            for index in range(len(self.receivers)):
                self.wait_ready(index, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, index: int, timeout: float = 60.0) -> None:
        """Wait until receiver ``index`` answers ready on its health port."""
        receiver = self.receivers[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if receiver.ready():
                return
            if receiver.proc is not None and receiver.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"receiver {index} is not ready:\n{receiver.log()[-4000:]}")

    def kill(self, index: int) -> None:
        """``kill -9`` one receiver: no chance to finish a request or close its store."""
        self.receivers[index].kill()

    def restart(self, index: int, timeout: float = 60.0) -> ReceiverProcess:
        """Stop receiver ``index`` (if it still runs) and start it again on the same ports."""
        receiver = self.receivers[index]
        receiver.stop()
        receiver.start(timeout)
        self.wait_ready(index, timeout)
        return receiver

    def stop(self) -> list[int | None]:
        """Stop every receiver (SIGTERM, then SIGKILL after a grace time): their exit codes."""
        return [receiver.stop() for receiver in self.receivers]

    def tracebacks(self) -> list[str]:
        """The logs of the receivers that logged a traceback."""
        return [r.log() for r in self.receivers if "Traceback" in r.log()]


def _sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
