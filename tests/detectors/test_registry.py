"""The detector table (detectors/registry.py) says what each class says: `oodgate methods` reads the table so that
it needs no torch; here the table is checked against the classes themselves."""

from __future__ import annotations

import pytest

from oodgate.detectors.registry import DETECTORS, available_detectors, describe_detectors, detector_class


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_table_matches_the_class(name):
    cls = detector_class(name)
    entry = DETECTORS[name]
    assert cls.name == name and cls.__name__ == entry.cls and cls.__module__.endswith("." + entry.module)
    assert cls.defaults == entry.defaults
    assert (cls.__doc__ or "").strip().splitlines()[0] == entry.summary


def test_describe_lists_every_detector_once():
    described = describe_detectors()
    assert [n for n, _, _ in described] == available_detectors() == sorted(DETECTORS)
