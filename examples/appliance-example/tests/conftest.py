"""The example's fixtures: the appliance's own (a fresh migrated Postgres database per session,
emptied for each test, with the tenant `default`), and what lies outside the box played by
local stand-ins: the tracker (`stand_in.Tracker`) and the Messages API
(`tests.support.messages_api`), which the real `anthropic` SDK talks to.

These tests run from the appliance's source tree (its `tests` package is importable there), in
an environment where this package is installed, so its entry points are there to be loaded:

    pip install --no-deps --no-build-isolation -e examples/appliance-example
    pytest examples/appliance-example/tests
"""

from __future__ import annotations

from tests.conftest import database_dsn, db, server_dsn, session_pool

__all__ = ["database_dsn", "db", "server_dsn", "session_pool"]
