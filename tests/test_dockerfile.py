"""collector-config/Dockerfile, built without a Docker engine: its own instructions are carried
out in a directory that stands for the image's ``/``, and the image's entry point then runs.

FROM becomes a fresh virtual environment of the base image's Python version (``python:3.12-slim``
→ python3.12 where the machine has it); ENV, WORKDIR and COPY are applied as written; RUN's
``pip``, ``rm`` and ``mkdir`` steps run as written, rooted in that directory (``useradd`` and
``chown``, which need a real image's /etc, are left out and listed). ENTRYPOINT + CMD start with
their own flags, only the listen addresses moved to free loopback ports and ``/data`` to the
image directory; HEALTHCHECK's own command then has to pass, and a span sent to the OTLP/HTTP
port has to be stored.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .support import ROOT, free_port, wait_until
from .test_collector_config import dockerfile

pytestmark = [pytest.mark.e2e]

NEEDS_A_REAL_IMAGE = ("useradd", "chown")


def base_python(image: str) -> str:
    """An interpreter of the base image's Python version if the machine has one, else ours."""
    found = re.fullmatch(r"python:(\d+\.\d+)[-\w]*", image)
    assert found, image
    name = f"python{found.group(1)}"
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(name), *sorted(str(p) for p in pyenv.glob(f"*/bin/{name}"))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return sys.executable


def test_the_dockerfile_steps_install_and_start(tmp_path: Path) -> None:
    root = tmp_path / "image"
    root.mkdir()
    env: dict[str, str] = {}
    workdir = root
    skipped: list[str] = []
    entrypoint: list[str] = []
    cmd: list[str] = []
    healthcheck: list[str] = []
    exposed: list[int] = []
    python = ""

    def inside(path: str) -> Path:
        return root / path.lstrip("/") if path.startswith("/") else workdir / path

    for word, args in dockerfile():
        if word == "FROM":
            python = base_python(args)
            venv = root / "usr" / "local"
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
        elif word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
        elif word == "WORKDIR":
            workdir = inside(args)
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = shlex.split(args)
            target = inside(dest)
            for source in sources:
                if len(sources) > 1 or dest.endswith("/") and (ROOT / source).is_file():
                    shutil.copy(ROOT / source, target / Path(source).name)
                else:
                    shutil.copytree(
                        ROOT / source,
                        target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    )
        elif word == "RUN":
            for command in args.split("&&"):
                argv = shlex.split(command)
                if argv[0] in NEEDS_A_REAL_IMAGE:
                    skipped.append(command.strip())
                    continue
                if argv[0] in ("rm", "mkdir"):
                    argv = [
                        argv[0],
                        *(str(inside(a)) if a.startswith("/") else a for a in argv[1:]),
                    ]
                pip_env = {**os.environ, **env}
                pip_env.pop("PIP_NO_CACHE_DIR", None)  # the pip cache only saves downloads here
                here = workdir if workdir.exists() else root  # `rm -rf /src` removed the cwd
                done = subprocess.run(argv, cwd=here, env=pip_env, capture_output=True, text=True)
                assert done.returncode == 0, f"RUN {command}:\n{done.stdout}\n{done.stderr}"
        elif word == "EXPOSE":
            exposed = [int(p) for p in args.split()]
        elif word == "HEALTHCHECK":
            healthcheck = json.loads(args.split("CMD", 1)[1])
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif word == "CMD":
            cmd = json.loads(args)
    assert not (root / "src").exists(), "RUN removes the sources after installing"
    assert (root / "data").is_dir()
    assert exposed == [4317, 4318, 13133]

    # The image's command, listening on free loopback ports instead of 0.0.0.0, /data mapped.
    ports = {4317: free_port(), 4318: free_port(), 13133: free_port()}
    argv = []
    for arg in entrypoint + cmd:
        for image_port, port in ports.items():
            arg = arg.replace(f"0.0.0.0:{image_port}", f"127.0.0.1:{port}")
        argv.append(arg.replace("sqlite:////data/", f"sqlite:///{root / 'data'}/"))
    assert argv[0] == "lightning-otlp"
    argv[0] = str(root / "usr" / "local" / "bin" / "lightning-otlp")
    log_path = tmp_path / "image.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv, cwd=workdir, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        probe = [a.replace("127.0.0.1:13133", f"127.0.0.1:{ports[13133]}") for a in healthcheck]
        assert probe[0] == "python"
        probe[0] = str(root / "usr" / "local" / "bin" / "python")

        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return subprocess.run(probe, capture_output=True).returncode == 0

        wait_until(healthy, "the image's HEALTHCHECK to pass", timeout=60, interval=0.5)
        span = {
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "from the image",
            "startTimeUnixNano": str(int(time.time() * 1e9)),
            "endTimeUnixNano": str(int(time.time() * 1e9)),
        }
        attributes = [
            {"key": "agentlightning.rollout_id", "value": {"stringValue": "ro-d0c4e7f11e00"}}
        ]
        body = {
            "resourceSpans": [
                {"resource": {"attributes": attributes}, "scopeSpans": [{"spans": [span]}]}
            ]
        }
        response = httpx.post(f"http://127.0.0.1:{ports[4318]}/v1/traces", json=body, timeout=10)
        assert response.status_code == 200, response.text
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, log_path.read_text()
    listed = subprocess.run(
        [
            argv[0],
            "spans",
            "--store",
            argv[argv.index("--store") + 1],
            "--rollout",
            "ro-d0c4e7f11e00",
        ],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    [stored] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert stored["name"] == "from the image" and stored["span_id"] == "eee19b7ec3c1b174"
    version = subprocess.run(
        [str(root / "usr" / "local" / "bin" / "python"), "--version"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"\n[Dockerfile without Docker] base {version}, left out: {skipped}", flush=True)
    assert skipped and all(s.split()[0] in NEEDS_A_REAL_IMAGE for s in skipped)
