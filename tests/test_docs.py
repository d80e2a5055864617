"""The documentation site and the README: every code block is a file the tests run or check.

A page never holds code of its own: each fenced block is one ``--8<-- "path"`` line that
includes a file listed in ``TESTED`` below, with the test that runs or checks it. The README,
which GitHub shows without the include step, holds exact copies of such files. Shell snippets
are checked command by command against the real CLI, Makefile and configs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lightning_otlp.cli import _settings, build_parser
from lightning_otlp.configfile import check_config
from lightning_otlp.settings import ENV_VARS, SPECS, flag_of

from .support import ROOT, ReceiverProcess

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

# Every file a page includes, and what runs or checks it.
TESTED: dict[str, str] = {
    "examples/quickstart.py": "test_readme.py::test_python_quickstart",
    "examples/processor_in_code.py": "test_e2e_sdk.py::test_example_processor_in_code",
    "examples/zero_code_agent.py": (
        "test_e2e_sdk.py::test_opentelemetry_instrument_adds_the_processor"
    ),
    "examples/resource_attributes_agent.py": (
        "test_e2e_sdk.py::test_example_resource_attributes_for_any_language"
    ),
    "examples/typescript-agent/quickstart.ts": "test_readme.py::test_typescript_quickstart",
    "examples/typescript-agent/proxy_agent.ts": "test_e2e_llm_proxy.py",
    "examples/go-agent/quickstart/main.go": "test_e2e_go.py",
    "examples/go-agent/service/main.go": "test_e2e_go.py",
    "examples/java-agent/sdk/src/main/java/Quickstart.java": "test_e2e_java.py",
    "examples/java-agent/Service.java": "test_e2e_java.py",
    "collector-config/sidecar.yaml": "test_e2e_collector.py, test_docs_collector.py",
    "collector-config/kubernetes/plain-sidecar.yaml": "test_collector_config.py",
    "CHANGELOG.md": "not code: the changelog page",
    "docs/snippets/data-flow.txt": "test_readme_blocks_are_copies_of_tested_files (a picture)",
    "docs/snippets/layout.txt": "test_layout_names_every_module",
    "docs/snippets/rollouts-table.txt": "test_readme.py::test_python_quickstart",
    "docs/snippets/receiver.toml": "test_config_file_snippet",
    "docs/snippets/trainer_store.py": "test_trainer_snippet_matches_agentlightning",
    "docs/snippets/auth_exporter.py": "test_auth_exporter_snippet",
    "docs/snippets/sidecar-one-host.sh": "test_docs_collector.py",
    "docs/snippets/gateway-one-host.sh": "test_docs_collector.py",
    "docs/snippets/build-collector.sh": "test_docs_collector.py",
}
SHELL = sorted(p.relative_to(ROOT).as_posix() for p in (DOCS / "snippets").glob("*.sh"))
for _shell in SHELL:
    TESTED.setdefault(_shell, "test_shell_snippets")

INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')
FENCE = re.compile(r"^(```+|~~~+)(.*)$")


def fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced code block of a Markdown text."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, lang = opened.group(1), opened.group(2).strip()
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        yield lang, "\n".join(body)


def includes() -> dict[str, list[str]]:
    """Included file -> the pages that include it (in a code block or as a whole page)."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for line in page.read_text().splitlines():
            match = INCLUDE.match(line.strip())
            if match:
                found.setdefault(match.group(1), []).append(page.name)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_code_block_on_a_page_includes_a_tested_file(page: Path) -> None:
    for lang, body in fenced_blocks(page.read_text()):
        match = INCLUDE.match(body.strip())
        assert match, f"{page.name}: a ```{lang} block with code of its own:\n{body[:200]}"
        assert match.group(1) in TESTED, f"{page.name}: {match.group(1)} is not in TESTED"


def test_every_tested_file_exists_and_is_shown() -> None:
    shown = includes()
    for path in TESTED:
        assert (ROOT / path).is_file(), path
        assert path in shown, f"{path} is on no page"
    snippets = {p.relative_to(ROOT).as_posix() for p in (DOCS / "snippets").iterdir()}
    assert snippets <= set(TESTED), snippets - set(TESTED)


def test_readme_blocks_are_copies_of_tested_files() -> None:
    files = {path: (ROOT / path).read_text().rstrip("\n") for path in TESTED}
    for lang, body in fenced_blocks(README.read_text()):
        assert body in files.values(), f"a README ```{lang} block is no tested file:\n{body[:200]}"


def test_readme_is_a_front_door() -> None:
    assert len(README.read_text().splitlines()) <= 250


def _slug(heading: str) -> str:
    """Python-Markdown's default heading id, which MkDocs checks anchors against."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_every_relative_link_of_the_readme_resolves() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    relative = [link for link in links if "://" not in link]
    assert len(relative) > 10
    for link in relative:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, link


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def test_every_image_a_page_shows_exists_and_every_image_is_shown() -> None:
    """A missing chart or screenshot shows as a broken picture, which the strict build lets
    through; an image no page shows is a stale one left behind."""
    shown: set[Path] = set()
    for page in [*PAGES, README]:
        for link in IMAGE.findall(page.read_text()):
            assert "://" not in link, f"{page.name}: {link} is not in the repository"
            image = (page.parent / link).resolve()
            assert image.is_file(), f"{page.name} shows {link}, which does not exist"
            shown.add(image)
    assert len(shown) >= 7
    images = {p.resolve() for p in DOCS.rglob("*") if p.suffix in {".png", ".svg", ".jpg"}}
    assert images <= shown, f"images no page shows: {sorted(images - shown)}"


# -- the files a page includes that no other test runs ------------------------------------


def test_layout_names_every_module() -> None:
    package = ROOT / "src" / "lightning_otlp"
    listed: set[str] = set()
    folder = ""
    for line in (DOCS / "snippets" / "layout.txt").read_text().splitlines():
        names = re.split(r",\s*", line.strip().split("  ")[0])
        if not line.startswith(" "):
            folder = names[0] if names[0].endswith("/") else ""
            listed.update(name.rstrip("/") for name in names)
        else:
            listed.update(folder + name for name in names)
    for name in listed:
        assert (package / name).exists(), f"the layout names {name}, which does not exist"
    modules = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    }
    assert modules <= listed, f"modules the layout does not name: {sorted(modules - listed)}"


def test_config_file_snippet(tmp_path: Path) -> None:
    text = (DOCS / "snippets" / "receiver.toml").read_text()
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token\n")
    config = tmp_path / "receiver.toml"
    config.write_text(text.replace("/etc/lightning-otlp/tokens", str(tokens)))
    values, problems = check_config(config)
    assert problems == []
    assert values["rollout_keys"] == ("session.id",) and values["store"].endswith("runs.db")
    done = subprocess.run(
        [str(BIN / "lightning-otlp"), "check-config", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.e2e
def test_auth_exporter_snippet(
    tmp_path: Path, start_receiver: Callable[..., ReceiverProcess]
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tokens = tmp_path / "tokens"
    tokens.write_text("my-token\n")
    receiver = start_receiver("--auth-token-file", str(tokens))
    source = (DOCS / "snippets" / "auth_exporter.py").read_text()
    namespace: dict[str, object] = {}
    exec(source.replace("http://127.0.0.1:4318", receiver.http_url), namespace)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(namespace["exporter"]))  # type: ignore[arg-type]
    provider.get_tracer("t").start_span("with a token").end()
    provider.shutdown()
    assert [s["name"] for s in receiver.wait_for_spans(1)] == ["with a token"]


@pytest.mark.agl
def test_trainer_snippet_matches_agentlightning() -> None:
    """The Trainer snippet's imports and keyword arguments, against agentlightning 0.3.0."""
    agl = os.environ.get("AGL_PYTHON")
    assert agl, "AGL_PYTHON (make agl-env) is needed"
    source = (DOCS / "snippets" / "trainer_store.py").read_text()
    check = f"""
import ast, inspect
source = {source!r}
tree = ast.parse(source)
imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
names = {{}}
for node in imports:
    module = __import__(node.module, fromlist=[a.name for a in node.names])
    for alias in node.names:
        names[alias.name] = getattr(module, alias.name)
for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
    func = call.func
    if isinstance(func, ast.Name) and func.id in names:
        target = names[func.id]
    elif isinstance(func, ast.Attribute) and func.attr == "fit":
        target = names["Trainer"].fit
        inspect.signature(target).bind_partial(None, *[None] * len(call.args),
            **{{k.arg: None for k in call.keywords}})
        continue
    else:
        continue
    inspect.signature(target).bind_partial(*[None] * len(call.args),
        **{{k.arg: None for k in call.keywords}})
print("ok")
"""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([agl, "-c", check], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# -- shell snippets, command by command ---------------------------------------------------

MAKE_TARGETS = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
# Programs the snippets use beside the project's own, and the test that runs each of them.
OTHER_PROGRAMS = {
    "agl": "support.AglStoreProcess (agl store --host --port)",
    "cd": "a shell built-in",
    "export": "a shell built-in",
    "npm": "make node-deps",
    "node": "test_e2e_node.py (examples/typescript-agent/agent.js)",
    "jq": "reads the JSON Lines output",
    "go": "make collector (go install ...builder)",
    "builder": "make collector",
    "otelcol-contrib": "test_docs_collector.py (the same configs, the Collector built here)",
    "./otelcol-lightning/otelcol-lightning": "test_docs_collector.py",
    "head": "coreutils",
    "docker": "test_docs_collector.py (a throwaway PostgreSQL server stands in for the container)",
}
# Scripts the snippets run, each run by an end-to-end test.
RUN_BY_TESTS = {
    "examples/quickstart.py",
    "examples/processor_in_code.py",
    "examples/zero_code_agent.py",
    "examples/resource_attributes_agent.py",
    "examples/python-runner/runner.py",
}


def commands(path: str) -> Iterator[list[str]]:
    """Each command of a shell snippet as words: continuations joined, comments dropped."""
    text = (ROOT / path).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words + ["&&"]:
            if word in {"&&", "|", ";", "&"}:
                if current:
                    yield current
                current = []
            else:
                current.append(word)


def _check_env(name: str, path: str) -> None:
    if name.startswith("LIGHTNING_OTLP_") and name not in ENV_VARS:
        configs = " ".join(p.read_text() for p in (ROOT / "collector-config").glob("*.yaml"))
        assert "${env:" + name in configs, f"{path}: {name} is read by nothing"
    elif name.startswith("OTELCOL_"):
        configs = " ".join(p.read_text() for p in (ROOT / "collector-config").glob("*.yaml"))
        assert "${env:" + name in configs, f"{path}: {name} is read by no Collector config"


def _check_command(words: list[str], path: str) -> None:
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        _check_env(words[0].split("=", 1)[0], path)
        words = words[1:]
    if not words:
        return  # a bare assignment: the variable was checked
    program, args = words[0], words[1:]
    if program.endswith("lightning-otlp"):
        parsed = build_parser().parse_args(args)
        if parsed.command in {"serve", "rollouts", "spans", "status", "check-store"}:
            _settings(parsed)  # addresses, store URLs and choices, as serve would parse them
    elif program == "make":
        assert set(args) <= MAKE_TARGETS, f"{path}: no make target {args}"
    elif program.endswith("/python"):
        assert args[0] in RUN_BY_TESTS, f"{path}: {args[0]} is run by no test"
    elif program.endswith("opentelemetry-instrument"):
        assert (BIN / "opentelemetry-instrument").exists()
        _check_command(args, path)
    elif program.endswith("/pip"):
        assert args[0] == "install"
        with open(ROOT / "pyproject.toml") as f:
            declared = f.read()
        for package in args[1:]:
            assert f'"{package}>=' in declared, f"{path}: {package} is no test dependency"
    else:
        assert program in OTHER_PROGRAMS, f"{path}: {program} is checked by nothing"
        for i, word in enumerate(args):
            if word == "--config":
                assert (ROOT / args[i + 1]).is_file(), f"{path}: no {args[i + 1]}"


@pytest.mark.parametrize("path", SHELL)
def test_shell_snippets(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # store URLs are only parsed, but nothing lands in the clone
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    found = list(commands(path))
    assert found, path
    for words in found:
        _check_command(words, path)


# -- the configuration reference ----------------------------------------------------------


def test_configuration_reference_has_every_setting() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from docs_hooks import MARKER, on_page_markdown
    finally:
        sys.path.pop(0)
    page = (DOCS / "configuration.md").read_text()
    assert MARKER in page
    rendered = on_page_markdown(page)
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {o for a in serve._actions for o in a.option_strings if o.startswith("--")}
    flags -= {"--help", "--config"}
    for name in SPECS:
        assert f"`{flag_of(name)}" in rendered, name
        assert f"`{name}`" in rendered, name
    for flag in flags:
        assert f"`{flag}" in rendered, flag
    for var in ENV_VARS:
        assert f"`{var}`" in rendered, var


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = BIN / "mkdocs"
    assert mkdocs.exists(), "the docs extra is part of make install-test"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "LIGHTNING_OTLP_MAX_REQUEST_BYTES" in config
    reference = (tmp_path / "site" / "reference" / "sdk" / "index.html").read_text()
    assert "RolloutSpanProcessor" in reference and "emit_reward" in reference
