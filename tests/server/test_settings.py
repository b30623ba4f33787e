"""Settings: defaults, TOML < environment < flags, errors, TOML output."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from elink_server.settings import (
    ServerSettings,
    SettingsError,
    default_data_dir,
    load_settings,
    settings_as_toml,
)

HOME = {"HOME": "/home/op"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "elink.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(None, HOME, {})
    assert settings.host == "127.0.0.1"
    assert settings.port == 7420
    assert settings.data_dir == Path("/home/op/.local/share/elink")
    assert settings.offline_cap == 1000
    assert settings.recall_window == 120.0
    assert settings.allow_legacy_suites is False
    assert settings.log_level == "INFO"


def test_data_dir_follows_xdg() -> None:
    assert default_data_dir({"XDG_DATA_HOME": "/xdg", **HOME}) == Path("/xdg/elink")
    # A relative XDG_DATA_HOME is invalid per the spec and ignored.
    assert default_data_dir({"XDG_DATA_HOME": "rel", **HOME}) == Path("/home/op/.local/share/elink")


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'port = 1000\nhost = "0.0.0.0"\nrecall_window = 60\nlog_level = "debug"\n'
    )
    environ = {**HOME, "ELINK_PORT": "2000", "ELINK_RECALL_WINDOW": "90.5"}
    settings = load_settings(path, environ, {"port": 3000, "offline_cap": None})
    assert settings.port == 3000  # flag beats environment beats file
    assert settings.recall_window == 90.5  # environment beats file
    assert settings.host == "0.0.0.0"  # file beats default
    assert settings.log_level == "DEBUG"
    assert settings.offline_cap == 1000  # a None flag was "not given"
    assert load_settings(path, environ, {}).port == 2000
    assert load_settings(path, HOME, {}).port == 1000


def test_environment_conversions() -> None:
    environ = {
        **HOME,
        "ELINK_ALLOW_LEGACY_SUITES": "yes",
        "ELINK_DATA_DIR": "/srv/elink",
        "ELINK_IDLE_TIMEOUT": "90",
        "ELINK_MAX_CONNECTIONS": " 500 ",
        "ELINK_SERVER_URL": "ignored: belongs to the SDK",
    }
    settings = load_settings(None, environ, {})
    assert settings.allow_legacy_suites is True
    assert settings.data_dir == Path("/srv/elink")
    assert settings.idle_timeout == 90.0
    assert settings.max_connections == 500


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ELINK_PORT", "seventy", "ELINK_PORT: expected an integer"),
        ("ELINK_PORT", "1.5", "ELINK_PORT: expected an integer"),
        ("ELINK_ALLOW_LEGACY_SUITES", "maybe", "expected true or false"),
        ("ELINK_RECALL_WINDOW", "nan", "finite"),
        ("ELINK_PORT", "70000", "port must be in 0..65535 (0: any free port), got 70000 (from"),
        ("ELINK_OFFLINE_CAP", "10", "at least 1000, got 10 (from ELINK_OFFLINE_CAP)"),
        ("ELINK_LOG_LEVEL", "loud", "log_level must be one of"),
        ("ELINK_DATA_DIR", "", "expected a path"),
    ],
)
def test_environment_errors_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, {**HOME, variable: value}, {})
    assert message in str(caught.value)
    assert variable in str(caught.value)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "prot = 7420\n")
    with pytest.raises(SettingsError, match="unknown key 'prot'"):
        load_settings(path, HOME, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('port = "7420"', "key 'port': expected an integer, got str"),
        ("port = true", "key 'port': expected an integer, got bool"),
        ("allow_legacy_suites = 1", "expected a boolean"),
        ("recall_window = 'long'", "expected a number"),
        ("host = 5", "expected a string"),
        ("[server]\nport = 1", "unknown key 'server'"),
        ("port = ", "invalid TOML"),
    ],
)
def test_toml_type_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(write(tmp_path, text), HOME, {})


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", HOME, {})


def test_flag_errors() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(None, HOME, {"prot": 1})
    with pytest.raises(SettingsError, match="flag 'port': expected an integer"):
        load_settings(None, HOME, {"port": "x"})
    with pytest.raises(SettingsError, match="flag 'port': expected an integer, got float"):
        load_settings(None, HOME, {"port": 1.0})
    # String flags (argparse without type=) are converted like the environment.
    assert load_settings(None, HOME, {"port": "8000"}).port == 8000


def test_cross_field_rule_names_both_sources(tmp_path: Path) -> None:
    path = write(tmp_path, "idle_timeout = 10\n")
    with pytest.raises(SettingsError, match="heartbeat_interval") as caught:
        load_settings(path, {**HOME, "ELINK_HEARTBEAT_INTERVAL": "30"}, {})
    assert "ELINK_HEARTBEAT_INTERVAL" in str(caught.value)
    assert "key 'idle_timeout'" in str(caught.value)


def test_toml_output_round_trips(tmp_path: Path) -> None:
    settings = attrs.evolve(
        load_settings(None, HOME, {}),
        host='we"ird\\ho\x7fst\n名',
        data_dir=Path("/data/e link"),
        allow_legacy_suites=True,
        recall_window=0.25,
    )
    text = settings_as_toml(settings)
    assert "allow_legacy_suites = true\n" in text
    assert load_settings(write(tmp_path, text), {}, {}) == settings


def test_settings_are_frozen() -> None:
    settings = ServerSettings(data_dir=Path("/x"))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_workers_is_a_count_or_auto(tmp_path: Path) -> None:
    assert load_settings(None, HOME, {}).workers == 1
    assert load_settings(write(tmp_path, "workers = 3\n"), HOME, {}).worker_count() == 3
    auto = load_settings(write(tmp_path, 'workers = "auto"\n'), HOME, {})
    assert auto.workers == "auto" and auto.worker_count() >= 1
    assert load_settings(None, {**HOME, "ELINK_WORKERS": "AUTO"}, {}).workers == "auto"
    assert load_settings(None, HOME, {"workers": "2"}).workers == 2
    assert load_settings(settings_path := write(tmp_path, settings_as_toml(auto)), HOME, {}) == auto
    assert settings_path.read_text().count('workers = "auto"') == 1
    for bad, source in (
        ("workers = 0\n", "key 'workers'"),
        ('workers = "many"\n', "key 'workers'"),
        ("workers = 1.5\n", "key 'workers'"),
    ):
        with pytest.raises(SettingsError, match=f"{source}.*positive integer or 'auto'"):
            load_settings(write(tmp_path, bad), HOME, {})
    with pytest.raises(SettingsError, match="ELINK_WORKERS"):
        load_settings(None, {**HOME, "ELINK_WORKERS": "-1"}, {})
    with pytest.raises(ValueError, match="workers must be"):
        ServerSettings(workers=0)
