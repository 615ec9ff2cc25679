"""The built .deb, shared by the packaging, boot and upgrade tests of one session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import package, prepare


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This tree's .deb, built offline from the wheelhouse (skips where it cannot be built)."""
    why = package.requirements()
    if why:
        pytest.skip(why)
    return prepare.get("deb", tmp_path_factory.mktemp("deb"))
