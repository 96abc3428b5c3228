"""Remote roles in the server's settings (TOML, environment, flags) and how the server builds its
engine from them: all remote, or mixed with the embedded engine (MixedEngine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_fakes import FakeEngine

from espalier.planner.engine import GenerateRequest, Message, Role, RoleNotLoaded
from espalier.service.mixed_engine import MixedEngine
from espalier.service.remote.remote_engine import RemoteEngine
from espalier.service.server import load_engines
from espalier.service.settings import ServerSettings, SettingsError, load_settings, to_toml

A, B = "http://127.0.0.1:9/v1", "https://gpu-box:8443/v1"


def test_urls_from_file_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "espalier.toml"
    config.write_text(f'[remote.large]\nurls = ["{A}", "{B}"]\nmodel = "qwen2.5-7b"\nslots = 8\n'
                      '[remote.small]\nchat_template = "llama3"\n')
    s = load_settings(["--config", str(config)], {})
    assert s.remote.large.urls == (A, B) and s.remote.large.model == "qwen2.5-7b" and s.remote.large.slots == 8
    assert s.remote.small.chat_template == "llama3" and set(s.remote_roles()) == {Role.LARGE}
    s = load_settings([], {"ESPALIER_REMOTE_SMALL_URLS": f" {A} ,{B},", "ESPALIER_REMOTE_SMALL_API_KEY": "t0k"})
    assert s.remote.small.urls == (A, B) and s.remote.small.api_key == "t0k"
    assert "t0k" not in repr(s) and "t0k" not in to_toml(s)
    s = load_settings(["--remote-large-urls", A, "--remote-large-first-byte-timeout-s", "30"], {})
    assert s.remote.large.urls == (A,) and s.remote.large.first_byte_timeout_s == 30.0


def test_remote_roles_are_not_loaded_locally() -> None:
    mixed = load_settings(["--remote-large-urls", A], {})
    assert mixed.engine_config().large is None and mixed.engine_config().small is not None
    both = load_settings(["--remote-large-urls", A, "--remote-small-urls", B], {})
    assert both.engine_config().roles() == {} and set(both.remote_roles()) == {Role.LARGE, Role.SMALL}
    small_only = load_settings(["--small-only", "--remote-large-urls", A], {})  # large is not used at all
    assert small_only.remote_roles() == {} and set(small_only.engine_config().roles()) == {Role.SMALL}


@pytest.mark.parametrize(("argv", "words"), [
    (["--remote-large-urls", "gpu-box:8080"], "remote.large.urls: 'gpu-box:8080' is not an http"),
    (["--remote-large-urls", f"{A},{A}"], "remote.large.urls names a server twice"),
    (["--small-only", "--remote-large-urls", "bad"], "remote.large.urls: 'bad' is not"),  # unused, still checked
    (["--remote-small-urls", "http://u:p@h/v1"], "must not carry a query, fragment or credentials"),
    (["--remote-large-idle-timeout-s", "0"], "remote.large.idle_timeout_s must be a number from 0.1 to 3600"),
    (["--remote-large-chat-template", "jinja"], "remote.large.chat_template must be one of chatml, llama3"),
])
def test_bad_remote_settings_name_the_setting(argv: list[str], words: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(argv, {})
    assert words in str(info.value)


def test_urls_in_a_file_must_be_a_list(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[remote.large]\nurls = "{A}"\n')
    with pytest.raises(SettingsError, match="remote.large.urls must be a list of strings"):
        load_settings(["--config", str(config)], {})


def test_dumped_remote_settings_load_back(tmp_path: Path) -> None:
    s = load_settings(["--remote-large-urls", f"{A},{B}", "--remote-large-model", 'q"x'], {})
    path = tmp_path / "dump.toml"
    path.write_text(to_toml(s))
    assert load_settings(["--config", str(path)], {}) == s


async def test_all_remote_roles_need_no_local_model() -> None:
    async def no_local(settings: ServerSettings) -> FakeEngine:
        raise AssertionError("nothing should load locally")

    s = load_settings(["--remote-large-urls", A, "--remote-small-urls", A, "--remote-small-connect-timeout-s",
                       "0.5", "--remote-large-connect-timeout-s", "0.5"], {})
    engine = await load_engines(s, no_local)  # the probe finds nothing on port 9: a warning, not a failure
    assert isinstance(engine, RemoteEngine) and engine.roles() == {Role.LARGE, Role.SMALL}
    await engine.aclose(0)


async def test_mixed_roles_join_the_local_engine() -> None:
    local = FakeEngine(roles=[Role.SMALL])
    loaded: list[ServerSettings] = []

    async def load_local(settings: ServerSettings) -> FakeEngine:
        loaded.append(settings)
        return local

    s = load_settings(["--remote-large-urls", A, "--remote-large-connect-timeout-s", "0.5"], {})
    engine = await load_engines(s, load_local)
    assert isinstance(engine, MixedEngine) and engine.roles() == {Role.LARGE, Role.SMALL} and len(loaded) == 1
    # the small role goes to the local engine, the large one to the remote servers
    chunks = [c async for c in engine.generate(GenerateRequest("hi", Role.SMALL))]
    assert chunks[0].text == "Some"
    assert engine.chat_prompt(Role.LARGE, [Message("user", "x")]).startswith("<|im_start|>user")
    assert {r.role for r in engine.stats().roles} == {Role.LARGE, Role.SMALL}
    assert engine.free_slots(Role.LARGE) == 4 and engine.free_slots(Role.SMALL) == local.slots
    assert await engine.add_resident_prefix(Role.LARGE, "fixed part") == 0
    await engine.aclose(0)


async def test_mixed_engine_refuses_overlaps_and_unknown_roles() -> None:
    with pytest.raises(ValueError, match="served by two engines"):
        MixedEngine([FakeEngine(roles=[Role.SMALL]), FakeEngine(roles=[Role.SMALL, Role.LARGE])])
    engine = MixedEngine([FakeEngine(roles=[Role.SMALL])])
    with pytest.raises(RoleNotLoaded, match="large model is not loaded"):  # on the first iteration
        [chunk async for chunk in engine.generate(GenerateRequest("x", Role.LARGE))]
    assert engine.free_slots(Role.LARGE) == 0
