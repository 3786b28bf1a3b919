"""infer_access: which access a session's connection runs over, from Access Reports."""

from __future__ import annotations

from tunnel.session.access_mapping import AccessInference, infer_access
from tunnel.wire.messages import AccessId

WIFI, FIVE_G = AccessId.NON_THREE_GPP, AccessId.THREE_GPP


def test_available_names_the_reporters_own_access() -> None:
    result = infer_access({"a": None, "b": None}, "a", WIFI, available=True)
    assert result == AccessInference({"a": WIFI})


def test_available_on_a_new_connection_replaces_the_old_one_on_that_access() -> None:
    members = {"old": WIFI, "cell": FIVE_G, "new": None}
    assert infer_access(members, "new", WIFI, available=True) == AccessInference(
        {"new": WIFI}, replaced=("old",)
    )


def test_unavailable_travels_over_the_other_access() -> None:
    # b says WiFi is down: b is on 5G, and a, the only other unknown one, is the WiFi one
    result = infer_access({"a": None, "b": None}, "b", WIFI, available=False)
    assert result == AccessInference({"b": FIVE_G, "a": WIFI})


def test_unavailable_with_several_unknown_names_only_the_reporter() -> None:
    result = infer_access({"a": None, "b": None, "c": None}, "c", FIVE_G, available=False)
    assert result == AccessInference({"c": WIFI})


def test_unavailable_never_puts_the_reporter_on_the_failed_access() -> None:
    # 5G is already someone else's, so the reporter stays unknown rather than become WiFi
    result = infer_access({"cell": FIVE_G, "r": None}, "r", WIFI, available=False)
    assert result == AccessInference()


def test_known_or_foreign_reporters_teach_nothing() -> None:
    assert infer_access({"a": WIFI, "b": None}, "a", FIVE_G, True) == AccessInference()
    assert infer_access({"a": WIFI, "b": None}, "a", WIFI, False) == AccessInference()
    assert infer_access({"a": None}, "zz", WIFI, True) == AccessInference()
