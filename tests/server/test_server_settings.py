"""Settings: both flag spellings, environment variables, JSON and YAML config files, precedence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from llamacpp_integrations.server import ServerSettings, create_app
from llamacpp_integrations.server.__main__ import security_warning
from llamacpp_integrations.server.settings import ENV_PREFIX, parse_settings
from llamacpp_native.errors import ModelNotFoundError


@pytest.fixture(autouse=True)
def _no_server_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the environment it describes; the developer's own settings stay out."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_flags_take_both_spellings(model_path: Path) -> None:
    settings = parse_settings(
        ["--model", str(model_path), "--n-ctx", "512", "--n_parallel", "2", "--model-alias", "m"]
    )
    (model,) = settings.model_list()
    assert (model.n_ctx, model.n_parallel, model.alias) == (512, 2, "m")


def test_defaults_are_safe(model_path: Path) -> None:
    settings = parse_settings(["--model", str(model_path)])
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 8000, None)
    assert (settings.n_parallel, settings.max_queue, settings.max_body_bytes) == (4, 64, 10_000_000)


def test_every_flag_can_come_from_the_environment(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMACPP_MODEL", str(model_path))
    monkeypatch.setenv("LLAMACPP_N_THREADS", "3")
    monkeypatch.setenv("LLAMACPP_API_KEY", "secret")
    settings = parse_settings([])
    assert settings.model_list()[0].n_threads == 3
    assert settings.api_key == "secret"


def test_verbose_is_a_switch_or_a_value(model_path: Path) -> None:
    assert parse_settings(["--model", str(model_path), "--verbose"]).verbose is True
    assert parse_settings(["--model", str(model_path), "--verbose", "false"]).verbose is False


def test_a_yaml_config_file_lists_models_and_server_settings(model_path: Path, tmp_path: Path) -> None:
    config = {
        "port": 9001,
        "models_max": 2,
        "models": [
            {"model": str(model_path), "model_alias": "small", "n_ctx": 1024},
            {"model": str(model_path), "model_alias": "tiny", "n_parallel": 1},
        ],
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = parse_settings(["--config_file", str(path)])
    assert [m.alias for m in settings.model_list()] == ["small", "tiny"]
    assert (settings.port, settings.models_max) == (9001, 2)
    assert settings.model_list()[0].n_ctx == 1024 and settings.model_list()[1].n_parallel == 1


def test_flags_then_environment_override_the_config_file(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "server.json"
    path.write_text(json.dumps({"port": 9001, "max_queue": 5, "models": [{"model": str(model_path)}]}))
    monkeypatch.setenv("LLAMACPP_MAX_QUEUE", "7")
    settings = parse_settings(["--config-file", str(path), "--port", "9002"])
    assert (settings.port, settings.max_queue) == (9002, 7)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("models: [{model: x.gguf, n_ctxx: 5}]", id="misspelt model setting"),
        pytest.param("prot: 80", id="misspelt server setting"),
        pytest.param("- just a list", id="not a mapping"),
        pytest.param("port: [", id="not YAML"),
    ],
)
def test_a_bad_config_file_stops_with_a_message(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        parse_settings(["--config_file", str(path)])
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_no_model_stops_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([])
    assert "no model to serve" in capsys.readouterr().err


def test_a_missing_model_file_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        create_app(ServerSettings(model=str(tmp_path / "missing.gguf")))


@pytest.mark.parametrize(
    ("host", "api_key", "warns"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", None, True),
        ("0.0.0.0", "secret", False),
        ("example.org", None, True),
    ],
)
def test_binding_beyond_loopback_without_a_key_warns(host: str, api_key: str | None, warns: bool) -> None:
    settings = ServerSettings(model="m.gguf", host=host, api_key=api_key)
    assert (security_warning(settings) is not None) == warns


def test_a_built_in_template_is_named_or_refused(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (model,) = parse_settings(["--model", str(model_path), "--chat_template", "command-r"]).model_list()
    assert model.llama_kwargs(False)["chat_template"] == "command-r"
    with pytest.raises(SystemExit):
        parse_settings(["--model", str(model_path), "--chat_template", "llama-3"])
    assert "not Jinja text nor a built-in template" in capsys.readouterr().err
