"""The release: ``python -m build`` makes a wheel and an sdist of the tracked files, and each
installs into a fresh venv with the ``server`` extra, says its version and serves."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from lightning_otlp import __version__

from .support import ROOT, ReceiverProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of the tracked files (as a release is)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        path = ROOT / name.decode()
        if path.is_file():
            target = source / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    assert wheel.name == f"lightning_otlp-{__version__}-py3-none-any.whl"
    assert sdist.name == f"lightning_otlp-{__version__}.tar.gz"
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_a_release_installs_with_the_server_extra_and_serves(
    kind: str, dists: dict[str, Path], tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + [f"lightning-otlp[server] @ {dists[kind].as_uri()}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    version = subprocess.run(
        [str(env_dir / "bin" / "lightning-otlp"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.strip() == f"lightning-otlp {__version__}"
    # Installed, not the checkout: the receiver runs from the new venv's site-packages.
    where = subprocess.run(
        [str(python), "-c", "import lightning_otlp; print(lightning_otlp.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(env_dir) in where.stdout, where.stdout + where.stderr
    receiver = ReceiverProcess(tmp_path / "release.db", python=str(python)).start()
    try:
        answer = httpx.post(
            receiver.http_url + "/v1/traces",
            content=b"{}",
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 200
        assert httpx.get(receiver.http_url + "/v1/agl/health", timeout=10).status_code == 200
    finally:
        receiver.stop()
