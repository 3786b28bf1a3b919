"""Client config keys added for qtun client: access_reports, tunnel mode with several accesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnel.config import ConfigError, parse_client_config
from tunnel.wire.modes import TunnelMode

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _session_text() -> str:
    return (EXAMPLES / "client-session.toml").read_text()


def test_access_reports_default_true() -> None:
    config = parse_client_config(_session_text(), base_dir=EXAMPLES)
    assert config.access_reports is True


def test_access_reports_false() -> None:
    config = parse_client_config(
        _session_text(), base_dir=EXAMPLES, overrides=["access_reports=false"]
    )
    assert config.access_reports is False


def test_access_reports_not_bool() -> None:
    with pytest.raises(ConfigError, match="access_reports = 'maybe' is not true or false"):
        parse_client_config(_session_text(), base_dir=EXAMPLES, overrides=["access_reports=maybe"])


def test_tunnel_mode_accepts_several_accesses_as_migration_targets() -> None:
    config = parse_client_config(_session_text(), base_dir=EXAMPLES, overrides=["mode=tunnel"])
    assert config.mode is TunnelMode.TUNNEL
    assert [a.name for a in config.accesses] == ["wifi", "5g"]


def test_failback_default_true_and_can_be_turned_off() -> None:
    text = _session_text()
    assert parse_client_config(text, base_dir=EXAMPLES).failback is True
    off = parse_client_config(text, base_dir=EXAMPLES, overrides=["failback=false"])
    assert off.failback is False
