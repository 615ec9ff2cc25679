"""Driver errors become ours at one place: those that mean Postgres is out of reach."""

from __future__ import annotations

import asyncpg
import pytest

from appliance import errors
from appliance.db import pool


class TestUnavailable:
    def test_a_connection_broken_mid_operation_means_postgres_is_away(self) -> None:
        """asyncpg's InternalClientError, raised by a connection the server's shutdown caught
        mid-operation, becomes DatabaseUnavailableError (it killed the daemon's db watch)."""
        broken = asyncpg.exceptions.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        )

        with (
            pytest.raises(errors.DatabaseUnavailableError, match="cannot switch") as caught,
            pool.translated(),
        ):
            raise broken
        assert caught.value.__cause__ is broken
        assert pool.is_unavailable(broken)
