"""The concentrator's optional NAT keys (`nat`, `nat_exclude`)."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from tunnel.config import ConcentratorConfig, ConfigError, parse_concentrator_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _conc(*overrides: str) -> ConcentratorConfig:
    text = (EXAMPLES / "concentrator.toml").read_text()
    return parse_concentrator_config(text, base_dir=EXAMPLES, overrides=overrides)


def test_nat_is_off_by_default() -> None:
    config = _conc()
    assert config.nat is False and config.nat_exclude == ()


def test_nat_on_with_exclusions() -> None:
    config = _conc("nat=true", 'nat_exclude=["10.200.0.0/16", "fd00:200::/32"]')
    assert config.nat is True
    assert config.nat_exclude == (ip_network("10.200.0.0/16"), ip_network("fd00:200::/32"))


@pytest.mark.parametrize(
    ("override", "message"),
    [("nat=1", "nat = 1 is not true or false"), ('nat_exclude=["10.0.0.1/8"]', "nat_exclude")],
)
def test_bad_nat_values_say_what_to_do(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _conc(override)
