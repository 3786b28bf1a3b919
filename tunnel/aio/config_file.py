"""Read a qtun configuration file and check the files it names exist (the I/O half of
tunnel/config.py, which only parses text)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunnel.config import (
    ClientConfig,
    ConcentratorConfig,
    ConfigError,
    ObservabilityConfig,
    TlsConfig,
    parse_client_config,
    parse_concentrator_config,
)


def read_config_text(path: Path) -> str:
    """The text of a configuration file (ConfigError, one sentence, if it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {path} does not exist: give the path of a TOML file "
            "(examples/ has some)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path} ({exc}): check it") from None


def _nearest_existing(path: Path) -> Path:
    """`path` or the closest of its parents that exists (the root always does)."""
    return next(p for p in (path, *path.parents) if p.exists() or p == p.parent)


def _check_files(tls: TlsConfig, observability: ObservabilityConfig) -> None:
    """Refuse at load, before the program sets anything up on the host, the files it could
    not open later (a TLS file missing or a directory, an observability path of the wrong
    kind); what only opening tells (permissions, a CA that is no PEM) is said when opened."""
    for key, path in (("tls.ca", tls.ca), ("tls.cert", tls.cert), ("tls.key", tls.key)):
        if path.is_dir():
            raise ConfigError(
                f"{key} = {str(path)!r} is a directory: give the path of a PEM file (make "
                "test certificates with scripts/make-certs)"
            )
        if not path.is_file():
            raise ConfigError(
                f"{key} = {str(path)!r} does not exist: make test certificates with "
                "scripts/make-certs or fix the path"
            )
    for key, file in (
        ("observability.keylog_file", observability.keylog_file),
        ("observability.status_file", observability.status_file),
    ):
        if file is None:
            continue
        if file.is_dir():
            raise ConfigError(
                f"{key} = {str(file)!r} is a directory: give the path of a file (it is "
                "created if missing)"
            )
        if not file.parent.is_dir():
            raise ConfigError(
                f"{key} = {str(file)!r} is in a directory that does not exist: create "
                f"{file.parent} or choose another path"
            )
    qlog = observability.qlog_dir
    # made with its parents at start: the nearest that exists must be a directory
    if qlog is not None and not _nearest_existing(qlog).is_dir():
        raise ConfigError(
            f"observability.qlog_dir = {str(qlog)!r} cannot be a directory, as "
            f"{_nearest_existing(qlog)} is a file: give the path of a directory (created if "
            "missing)"
        )


def load_client_config(path: str | Path, overrides: Sequence[str] = ()) -> ClientConfig:
    """Read, parse and check the client configuration file at `path`."""
    path = Path(path)
    config = parse_client_config(
        read_config_text(path), base_dir=path.parent, overrides=overrides, source=str(path)
    )
    _check_files(config.tls, config.observability)
    return config


def load_concentrator_config(path: str | Path, overrides: Sequence[str] = ()) -> ConcentratorConfig:
    """Read, parse and check the concentrator configuration file at `path`."""
    path = Path(path)
    config = parse_concentrator_config(
        read_config_text(path), base_dir=path.parent, overrides=overrides, source=str(path)
    )
    _check_files(config.tls, config.observability)
    return config
