"""Settings: the config file, its checker, and precedence (defaults < file < env < flags)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_otlp.cli import main
from lightning_otlp.configfile import ConfigError, check_config, read_config
from lightning_otlp.settings import Address, Settings, from_env


def write(tmp_path: Path, text: str, name: str = "receiver.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_file_sets_every_kind_of_setting(tmp_path: Path) -> None:
    tokens = write(tmp_path, "# ops\nsecret-one\n", "tokens")
    path = write(
        tmp_path,
        f"""
grpc = "0.0.0.0:4317"
max-request-bytes = 1048576
max_in_flight = 8
rollout_keys = ["session.id", "gen_ai.conversation.id"]
fallback = "reject"
health = "off"
shutdown_timeout = 3
auth_token_file = "{tokens}"
""",
    )
    values = read_config(path)
    settings = Settings().with_overrides(values)
    assert settings.grpc == Address("0.0.0.0", 4317)
    assert settings.max_request_bytes == 1048576
    assert settings.max_in_flight == 8
    assert settings.rollout_keys == ("session.id", "gen_ai.conversation.id")
    assert settings.fallback == "reject"
    assert settings.health is None
    assert settings.shutdown_timeout == 3.0
    assert settings.auth_token_file == str(tokens)
    assert str(settings.http) == "127.0.0.1:4318"  # untouched default


def test_check_config_reports_every_mistake_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """grpc = "0.0.0.0:4317"
max_request_bytes = "64MiB"
fallback = "drop"
rollout-keyz = ["session.id"]
http = "localhost"
tls_cert = "/no/such/cert.pem"
log_level = "loud"
max_in_flight = -1

[serve]
store = "sqlite:///x.db"
""",
    )
    _, problems = check_config(path)
    found = {(p.line, p.key) for p in problems}
    assert found == {
        (2, "max_request_bytes"),
        (3, "fallback"),
        (4, "rollout-keyz"),
        (5, "http"),
        (6, "tls_cert"),
        (7, "log_level"),
        (8, "max_in_flight"),
        (10, "serve"),
    }
    text = {p.key: str(p) for p in problems}
    assert text["rollout-keyz"].startswith(f"{path}:4: rollout-keyz: unknown setting")
    assert "did you mean 'rollout_keys'" in text["rollout-keyz"]
    assert "whole number" in text["max_request_bytes"]
    assert "reject" in text["fallback"]
    assert "HOST:PORT" in text["http"]
    assert "no such file" in text["tls_cert"]
    assert "unknown table" in text["serve"]


def test_check_config_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'grpc = "0.0.0.0:4317"\nhttp = \n')
    _, problems = check_config(path)
    assert len(problems) == 1
    assert problems[0].line == 2
    assert "not valid TOML" in problems[0].message


def test_check_config_cross_setting_mistakes(tmp_path: Path) -> None:
    cert = write(tmp_path, "not a certificate", "cert.pem")
    only_cert = write(tmp_path, f'tls_cert = "{cert}"\n', "a.toml")
    _, problems = check_config(only_cert)
    assert [(p.line, p.key) for p in problems] == [(1, "tls_cert")]
    assert "together" in problems[0].message
    key = write(tmp_path, "not a key", "key.pem")
    both = write(tmp_path, f'\ntls_cert = "{cert}"\ntls_key = "{key}"\n', "b.toml")
    _, problems = check_config(both)
    assert [(p.line, p.key) for p in problems] == [(3, "tls_key")]
    assert "do not load" in problems[0].message
    empty = write(tmp_path, "# nobody\n\n", "tokens")
    tokens = write(tmp_path, f'auth-token-file = "{empty}"\n', "c.toml")
    _, problems = check_config(tokens)
    assert [(p.line, p.key) for p in problems] == [(1, "auth-token-file")]
    assert "no token" in problems[0].message
    with pytest.raises(ConfigError) as raised:
        read_config(tokens)
    assert f"{tokens}:1: auth-token-file" in str(raised.value)


def test_the_same_setting_twice_is_a_mistake(tmp_path: Path) -> None:
    path = write(tmp_path, "max_in_flight = 1\nmax-in-flight = 2\n")
    _, problems = check_config(path)
    assert [(p.line, p.key) for p in problems] == [(2, "max-in-flight")]


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, 'grpc = "127.0.0.1:14317"\n', "good.toml")
    assert main(["check-config", str(good)]) == 0
    assert f"{good}: ok" in capsys.readouterr().out
    bad = write(tmp_path, 'grpc = 4317\nfallback = "x"\n', "bad.toml")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: grpc: must be a string" in err
    assert f"{bad}:2: fallback:" in err
    assert "2 mistake(s)" in err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read config file" in capsys.readouterr().err


def test_environment_reads_the_new_settings() -> None:
    env = {
        "LIGHTNING_OTLP_HEALTH": "0.0.0.0:13133",
        "LIGHTNING_OTLP_SHUTDOWN_TIMEOUT": "2.5",
        "LIGHTNING_OTLP_TLS_CERT": "/c.pem",
        "LIGHTNING_OTLP_TLS_KEY": "/k.pem",
    }
    values = from_env(env)
    assert values == {
        "health": Address("0.0.0.0", 13133),
        "shutdown_timeout": 2.5,
        "tls_cert": "/c.pem",
        "tls_key": "/k.pem",
    }


def test_settings_refuse_half_a_tls_setup() -> None:
    with pytest.raises(ValueError, match="together"):
        Settings(tls_key="/k.pem")
    with pytest.raises(ValueError, match="mutual TLS"):
        Settings(tls_client_ca="/ca.pem")
    with pytest.raises(ValueError, match="HOST:PORT"):
        Settings(health="13133")


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    """Run ``serve`` for real: the address each server binds shows which layer won."""
    path = write(
        tmp_path,
        'grpc = "127.0.0.1:0"\nhttp = "127.0.0.1:2"\nhealth = "127.0.0.1:3"\n'
        'store = "sqlite:///never.db"\n',
    )
    env = {
        **os.environ,
        "LIGHTNING_OTLP_HTTP": "127.0.0.1:0",
        "LIGHTNING_OTLP_HEALTH": "127.0.0.1:4",
        "LIGHTNING_OTLP_CONFIG": str(path),
    }
    store = tmp_path / "flag.db"
    args = ["serve", "--health", "127.0.0.1:0", "--store", f"sqlite:///{store}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_otlp", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "store:" in line:
            break
    proc.terminate()
    assert proc.wait(20) == 0, "".join(lines) + proc.stderr.read()
    text = "".join(lines)
    ports = {m[0]: int(m[1]) for m in re.findall(r"(\S+) listening on \S*?:(\d+)", text)}
    assert ports["OTLP/gRPC"] not in (0, 4317)  # file beats default
    assert ports["OTLP/HTTP"] != 2  # env beats file
    assert ports["health"] not in (3, 4)  # flag beats env
    assert f"store: sqlite:///{store}" in text  # flag beats file
    assert not (tmp_path / "never.db").exists()


def test_serve_refuses_a_bad_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'fallbak = "trace"\n')
    result = subprocess.run(
        [sys.executable, "-m", "lightning_otlp", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{path}:1: fallbak: unknown setting; did you mean 'fallback'?" in result.stderr


def test_every_setting_can_come_from_the_file_and_zero_where_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "affinity_window = 0\nfinalize-on-root = true\n")
    values = read_config(path)
    assert values == {"affinity_window": 0.0, "finalize_on_root": True}
    path = write(tmp_path, 'sequence-ids = "counter"\n', "seq.toml")
    assert read_config(path) == {"sequence_ids": "counter"}
    assert from_env({"LIGHTNING_OTLP_SEQUENCE_IDS": "start-time"}) == {"sequence_ids": "start-time"}
    with pytest.raises(ValueError, match="sequence_ids: must be one of start-time, counter"):
        Settings(sequence_ids="dense")
    path = write(tmp_path, 'finalize_on_root = "maybe"\nmax_in_flight = 0\n', "bad.toml")
    _, problems = check_config(path)
    assert [(p.line, p.key) for p in problems] == [(1, "finalize_on_root"), (2, "max_in_flight")]
