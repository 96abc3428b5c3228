"""espalier.service.settings: defaults < TOML file < environment < flags; bounds, help and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from espalier.planner.engine import Role
from espalier.planner.plan import Route
from espalier.service.settings import (
    ServerSettings,
    SettingsError,
    build_parser,
    load_settings,
    options,
    settings_from,
    to_toml,
)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "espalier.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_valid_and_safe() -> None:
    s = load_settings([], {})
    assert s == ServerSettings().validate()
    assert s.host == "127.0.0.1" and s.port == 50051 and not s.tls and not s.auth_token
    assert s.engine_config().large is not None and s.engine_config().small is not None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path, """
port = 6000
max_in_flight = 3
grace_s = 2
[small]
slots = 2
[planner]
point_max_tokens = 40
skeleton_role = "small"
[planner.sampling]
temperature = 0.7
""")
    env = {"ESPALIER_CONFIG": config, "ESPALIER_PORT": "7000", "ESPALIER_SMALL_SLOTS": "3",
           "ESPALIER_PLANNER_SAMPLING_TEMPERATURE": "0.2", "ESPALIER_TEST_MODEL": "ignored: not a setting"}
    s = load_settings(["--small-slots", "4"], env)
    assert s.port == 7000  # env over file
    assert s.small.slots == 4  # flag over env over file
    assert s.max_in_flight == 3 and s.grace_s == 2.0  # file over default (an int is fine for a float)
    assert s.planner.point_max_tokens == 40 and s.planner.skeleton_role is Role.SMALL
    assert s.planner.sampling.temperature == 0.2
    assert load_settings(["--config", config], {}).port == 6000  # --config works without the environment


def test_booleans_and_enums_from_every_source(tmp_path: Path) -> None:
    assert load_settings(["--small-only"], {}).small_only
    assert not load_settings(["--no-small-only"], {"ESPALIER_SMALL_ONLY": "yes"}).small_only
    assert load_settings([], {"ESPALIER_SMALL_ONLY": "true"}).small_only
    s = load_settings(["--planner-router-default", "graph"], {})
    assert s.planner.router_default is Route.GRAPH


def test_small_only_runs_every_planner_role_on_the_small_model() -> None:
    s = load_settings(["--small-only", "--planner-hard-role", "large"], {})
    assert {s.planner.skeleton_role, s.planner.router_role, s.planner.easy_role, s.planner.hard_role,
            s.planner.direct_role} == {Role.SMALL}
    cfg = s.engine_config()
    assert cfg.large is None and cfg.small is not None and cfg.small.model == "small"


@pytest.mark.parametrize(("argv", "env", "words"), [
    (["--port", "70000"], {}, "port must be an integer from 0 to 65535 (got 70000, from flag --port)"),
    (["--port", "abc"], {}, "port must be an integer"),
    ([], {"ESPALIER_MAX_IN_FLIGHT": "0"}, ("max_in_flight must be an integer from 1 to 1024 (got 0, from environment "
                                          "ESPALIER_MAX_IN_FLIGHT)")),
    ([], {"ESPALIER_SMALL_ONLY": "maybe"}, "small_only must be true or false"),
    (["--log-level", "loud"], {}, "log_level must be one of debug, info, warning, error"),
    (["--planner-skeleton-role", "huge"], {}, "planner.skeleton_role must be one of large, small"),
    (["--planner-point-max-tokens", "0"], {}, "planner.point_max_tokens must be an integer from 1 to 4096"),
    (["--planner-sampling-temperature", "nan"], {}, "planner.sampling.temperature"),
    (["--planner-min-nodes", "9", "--planner-max-nodes", "3"], {}, "planner.min_nodes must not exceed"),
    (["--small-flash-attn", "maybe"], {}, "small.flash_attn must be one of auto, on, off"),
    (["--tls-cert", "/nonexistent.pem"], {}, "tls_cert and tls_key go together"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], {}, "tls_cert: no such file"),
    (["--tls-client-ca", "/x.pem"], {}, "tls_client_ca (mutual TLS) needs tls_cert"),
    (["--auth-token", "has space"], {}, "auth_token must be printable"),
    (["--metrics-port", "50051"], {}, "metrics_port and port are both 50051"),
    (["--max-tokens", "256"], {}, "planner.long_point_max_tokens (512) must not exceed max_tokens (256)"),
])
def test_bad_values_name_the_setting_and_where_it_came_from(argv: list[str], env: dict[str, str],
                                                             words: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(argv, env)
    assert words in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown setting 'planner.colour'"):
        load_settings(["--config", write(tmp_path, "[planner]\ncolour = 'red'\n")], {})
    with pytest.raises(SettingsError, match="port must be an integer .* from config file"):
        load_settings(["--config", write(tmp_path, "port = '50051'\n")], {})  # TOML types are kept
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(["--config", write(tmp_path, "port = \n")], {})
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(["--config", str(tmp_path / "missing.toml")], {})
    with pytest.raises(SettingsError, match="unknown setting"):
        settings_from({"nope": 1})


def test_secrets_stay_out_of_reprs_and_dumps() -> None:
    s = load_settings([], {"ESPALIER_AUTH_TOKEN": "s3cret"})
    assert s.auth_token == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in to_toml(s)


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for opt in options():
        assert opt.flag in text and opt.env in text, opt.key
        assert opt.help.split()[0] in text
    assert "gRPC port; 0 = any free port (default 50051; an integer from 0 to 65535; env ESPALIER_PORT)" in text


def test_dumped_settings_load_back(tmp_path: Path) -> None:
    s = load_settings(["--small-only", "--port", "0", "--planner-sampling-top-k", "5"], {})
    again = load_settings(["--config", write(tmp_path, to_toml(s))], {})
    assert again == s
