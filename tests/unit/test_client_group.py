"""`qtun client-group` without root: the group file, what a group refuses, and the one-sentence
errors of the command line. Running a group is tested in namespaces
(tests/integration/test_client_group.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnel.aio import cli
from tunnel.aio.client_group import GroupMember, load_group, parse_group
from tunnel.aio.netns import NAMED_NETNS_DIR, namespace_path
from tunnel.config import ConfigError
from tunnel.user_error import EXIT_USAGE


def client_toml(certs: Path, name: str, status: Path, stream: bool = False) -> str:
    return f"""name = "{name}"
[concentrator]
address = "192.0.2.1"
[[access]]
name = "wifi"
access_id = "wifi"
interface = "eth0"
[tun]
addresses = ["10.8.0.3/32"]
[tls]
ca = "{certs / "ca.pem"}"
cert = "{certs / "alice.pem"}"
key = "{certs / "alice.key"}"
[observability]
status_file = "{status}"
[stream]
enabled = {"true" if stream else "false"}
intercept = ["10.200.0.0/16"]
"""


def test_members_with_and_without_namespace(tmp_path: Path) -> None:
    text = '[[client]]\nconfig = "a.toml"\n[[client]]\nconfig = "/b.toml"\nnetns = "blue"\n'
    assert parse_group(text, tmp_path) == [
        GroupMember(tmp_path / "a.toml", None),
        GroupMember(Path("/b.toml"), "blue"),
    ]
    assert namespace_path("blue") == NAMED_NETNS_DIR / "blue"
    assert namespace_path("/proc/1/ns/net") == Path("/proc/1/ns/net")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[client]\n", "is not valid TOML"),
        ("", "lists no client"),
        ("client = 3\n", "lists no client"),
        ("[server]\n", "unknown key 'server'"),
        ('[[client]]\nnetns = "x"\n', 'client 1 has no config = "FILE"'),
        ('[[client]]\nconfig = "a"\nport = 1\n', "client 1 has unknown key 'port'"),
        ('[[client]]\nconfig = "a"\nnetns = ""\n', "is not a path or a name"),
        ("client = [1]\n", "client 1 is not a table"),
    ],
)
def test_bad_group_files_get_one_sentence(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_group(text, source="g.toml")
    assert "\n" not in str(info.value)


def test_two_clients_with_one_status_file_are_refused(tmp_path: Path, lab_certs: Path) -> None:
    status = tmp_path / "status.json"
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(client_toml(lab_certs, name, status))
    group = tmp_path / "g.toml"
    group.write_text('[[client]]\nconfig = "a.toml"\n[[client]]\nconfig = "b.toml"\n')
    with pytest.raises(ConfigError, match="clients 'a' and 'b' share the status file"):
        load_group(group)


def test_stream_mode_is_refused(tmp_path: Path, lab_certs: Path) -> None:
    (tmp_path / "a.toml").write_text(client_toml(lab_certs, "a", tmp_path / "a.json", True))
    group = tmp_path / "g.toml"
    group.write_text('[[client]]\nconfig = "a.toml"\n')
    with pytest.raises(ConfigError, match="has \\[stream\\] enabled"):
        load_group(group)


def test_overrides_apply_to_every_client(tmp_path: Path, lab_certs: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(
            client_toml(lab_certs, name, tmp_path / f"{name}.json")
        )
    group = tmp_path / "g.toml"
    group.write_text('[[client]]\nconfig = "a.toml"\n[[client]]\nconfig = "b.toml"\nnetns = "n"\n')
    members = load_group(group, ["concentrator.port=5555"])
    assert [(c.name, c.concentrator_port, ns) for c, ns in members] == [
        ("a", 5555, None),
        ("b", 5555, "n"),
    ]


def test_a_members_error_names_its_file(tmp_path: Path, lab_certs: Path) -> None:
    """A member's sentence names a key (concentrator.port): which of the group's files holds
    it was left to guess."""
    (tmp_path / "a.toml").write_text(client_toml(lab_certs, "a", tmp_path / "a.json"))
    bad = client_toml(lab_certs, "b", tmp_path / "b.json").replace(
        'address = "192.0.2.1"', 'address = "192.0.2.1"\nport = "x"'
    )
    (tmp_path / "b.toml").write_text(bad)
    group = tmp_path / "g.toml"
    group.write_text('[[client]]\nconfig = "a.toml"\n[[client]]\nconfig = "b.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_group(group)
    assert str(info.value) == (
        f"{group}: client 2 ({tmp_path / 'b.toml'}): concentrator.port = 'x' is not an integer "
        "from 1 to 65535: give an integer from 1 to 65535"
    )


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["client-group", "-c", str(tmp_path / "none.toml")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("qtun: error: configuration file") and "\n" not in err
    group = tmp_path / "g.toml"
    group.write_text('[[client]]\nconfig = "missing.toml"\n')
    assert cli.main(["client-group", "-c", str(group)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "missing.toml does not exist" in err and "\n" not in err


def test_the_testbed_refuses_groups_it_cannot_run() -> None:
    from testbed.qtun import TunnelSpec

    with pytest.raises(ValueError, match="clients_per_process must be >= 1"):
        TunnelSpec(clients_per_process=0)
    with pytest.raises(ValueError, match="stream mode cannot run in client groups"):
        TunnelSpec(stream=True, clients_per_process=2)
    assert TunnelSpec(clients_per_process=50).clients_per_process == 50
