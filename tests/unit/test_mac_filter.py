"""The L2 ingress filter (tunnel/policy/mac_filter.py): a client sources only its own MACs."""

from __future__ import annotations

import pytest

from tunnel.policy.mac_filter import (
    LEARNED_HOLD,
    MacFilter,
    MacOwners,
    MacVerdict,
    is_group_mac,
    mac_text,
    mac_to_int,
)

ALICE = mac_to_int("02:00:00:00:00:0a")
ALICE_2 = mac_to_int("02:00:00:00:00:0b")
CAROL = mac_to_int("02:00:00:00:00:0c")
MALLORY = mac_to_int("02:00:00:00:00:66")
GATEWAY = mac_to_int("02:00:00:00:00:01")


def frame(source: int, destination: int = 0xFFFFFFFFFFFF) -> bytes:
    return destination.to_bytes(6) + source.to_bytes(6) + b"\x08\x06" + bytes(28)


def test_configured_macs_pass_and_nothing_else_is_learned() -> None:
    macs = MacFilter([ALICE, ALICE_2])
    assert macs.accept(frame(ALICE)) and macs.accept(frame(ALICE_2))
    assert not macs.accept(frame(MALLORY))
    assert macs.macs == (ALICE, ALICE_2)
    assert macs.stats.as_dict()["foreign_source"] == 1
    assert macs.stats.dropped == 1


def test_without_configured_macs_the_first_source_is_locked() -> None:
    macs = MacFilter(max_learned=1)
    assert macs.learning
    assert macs.accept(frame(ALICE))
    assert not macs.learning
    assert not macs.accept(frame(MALLORY))
    assert macs.accept(frame(ALICE))
    assert macs.macs == (ALICE,)
    assert macs.stats.as_dict() == {
        "accepted": 2,
        "truncated": 0,
        "group_source": 0,
        "foreign_source": 1,
        "taken_source": 0,
        "router_role": 0,
        "dhcp_server_role": 0,
        "foreign_lladdr": 0,
        "unreadable": 0,
    }


def test_up_to_max_learned_sources_are_locked() -> None:
    macs = MacFilter(max_learned=2)
    assert macs.accept(frame(ALICE)) and macs.accept(frame(ALICE_2))
    assert not macs.accept(frame(MALLORY))


@pytest.mark.parametrize("source", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01"])
def test_a_group_source_is_never_accepted_nor_learned(source: str) -> None:
    macs = MacFilter()
    assert is_group_mac(mac_to_int(source))
    assert macs.classify(frame(mac_to_int(source))) is MacVerdict.GROUP_SOURCE
    assert macs.macs == ()  # not learned
    assert macs.accept(frame(ALICE))  # the room is still there for the real one


def test_a_mac_another_client_holds_is_never_learned() -> None:
    """Configured for alice (connected or not) or learned by carol: mallory gets neither, and
    keeps her room to learn her own."""
    owners = MacOwners({"alice": [ALICE]})
    carol = MacFilter(owners=owners, client="carol")
    assert carol.accept(frame(CAROL))
    mallory = MacFilter(max_learned=2, owners=owners, client="mallory")
    assert mallory.classify(frame(ALICE)) is MacVerdict.TAKEN_SOURCE
    assert mallory.classify(frame(CAROL)) is MacVerdict.TAKEN_SOURCE
    assert mallory.macs == () and mallory.learning
    assert mallory.accept(frame(MALLORY))
    assert owners.holder(CAROL) == "carol" and owners.holder(MALLORY) == "mallory"


def test_learned_macs_outlive_a_reconnect_for_the_hold_then_are_free() -> None:
    owners = MacOwners({})
    carol = MacFilter(owners=owners, client="carol")
    assert carol.accept(frame(CAROL))
    owners.left("carol", last_frame=10.0)

    owners.expire(10.0 + LEARNED_HOLD - 1)
    assert not MacFilter(owners=owners, client="mallory").accept(frame(CAROL))
    again = MacFilter(owners=owners, client="carol")  # carol reconnects: still locked to it
    assert again.macs == (CAROL,) and not again.learning
    assert again.classify(frame(MALLORY)) is MacVerdict.FOREIGN_SOURCE
    owners.left("carol", last_frame=20.0)

    owners.expire(20.0 + LEARNED_HOLD)  # silent for the bridge's ageing time: forgotten
    assert owners.holder(CAROL) is None
    assert MacFilter(owners=owners, client="carol").learning
    assert MacFilter(owners=owners, client="mallory").accept(frame(CAROL))


def test_the_hosts_own_macs_are_never_learned_and_taken_back() -> None:
    owners = MacOwners({})
    early = MacFilter(owners=owners, client="carol")
    assert early.accept(frame(GATEWAY))  # before the host reported its MACs
    owners.set_host_macs([GATEWAY])
    assert early.macs == () and owners.holder(GATEWAY) is None
    assert early.classify(frame(GATEWAY)) is MacVerdict.TAKEN_SOURCE
    assert MacFilter(owners=owners, client="dave").classify(frame(GATEWAY)) is (
        MacVerdict.TAKEN_SOURCE
    )
    assert early.accept(frame(CAROL))


def test_a_runt_is_dropped_as_truncated() -> None:
    macs = MacFilter()
    assert macs.classify(frame(ALICE)[:13]) is MacVerdict.TRUNCATED
    assert macs.macs == ()


def test_mac_text_round_trip_and_bad_text() -> None:
    assert mac_text(mac_to_int("02-00-5E-10-00-01")) == "02:00:5e:10:00:01"
    for bad in ("02:00:5e:10:00", "0200.5e10.0001", "02:00:5e:10:00:0g"):
        with pytest.raises(ValueError):
            mac_to_int(bad)
