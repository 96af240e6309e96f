"""The ids exocall gives (app/ids.py) are made in order, so that their indexes grow at one end."""

from __future__ import annotations

from app.ids import new_id


def test_ids_are_version_7_and_each_sorts_after_the_one_before() -> None:
    ids = [new_id() for _ in range(10_000)]  # many within one millisecond
    assert {made.version for made in ids} == {7}
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
