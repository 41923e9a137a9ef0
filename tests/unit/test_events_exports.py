"""The public surface of celeriac.events: every name in __all__ exists and is documented."""

from __future__ import annotations

import celeriac.events as events


def test_every_exported_name_exists() -> None:
    missing = [name for name in events.__all__ if not hasattr(events, name)]
    assert missing == []


def test_exported_classes_have_docstrings() -> None:
    undocumented = [
        name
        for name in events.__all__
        if isinstance(getattr(events, name), type) and not getattr(events, name).__doc__
    ]
    assert undocumented == []
