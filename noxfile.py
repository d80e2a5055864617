"""Every Python the package declares (``requires-python >= 3.10``): on each, the fast suite and an
end-to-end smoke with real exporters and a receiver subprocess. ``make test-pythons`` runs it;
the interpreters come from the machine (pyenv here).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# 3.11 is the project venv's own and runs the whole suite there (make test).
PYTHONS = ["3.10", "3.12", "3.13"]
FAST = "not e2e and not agl and not node and not slow and not postgres"
# Real OpenTelemetry exporters (HTTP and gRPC), the SDK processor and the CLI, end to end.
SMOKE = ["tests/test_e2e_python.py", "tests/test_e2e_sdk.py", "tests/test_readme.py"]
SMOKE_MARKS = "e2e and not agl and not node and not slow"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The fast suite and the end-to-end smoke on one Python; arguments after ``--`` go to pytest
    (``make test-pythons`` passes its ``-n`` there)."""
    session.install("-e", ".[server,test,postgres]")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "-m", FAST, *session.posargs)
    session.run(
        "pytest", "-q", "-p", "no:cacheprovider", "-m", SMOKE_MARKS, *SMOKE, *session.posargs
    )
