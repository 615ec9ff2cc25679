"""TLS with Postgres: the mode and CA file each connection demands, folded into its URL."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from appliance import doctor, settings
from appliance.db import pool, tls

REMOTE = "postgresql://worker:pw@db.internal.example:5432/appliance"


def database(**fields: object) -> settings.DatabaseSettings:
    return settings.DatabaseSettings.model_validate(fields)


def parameters(dsn: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(dsn).query))


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    return path


class TestDefault:
    def test_a_server_on_another_host_gets_verify_full(self) -> None:
        """No sslmode anywhere and a remote host: verify-full, never the driver's `prefer`."""
        secured = tls.secured(REMOTE, database(), {})

        assert parameters(secured) == {"sslmode": "verify-full"}

    @pytest.mark.parametrize(
        "dsn",
        [
            "postgresql://postgres@localhost:5432/appliance",
            "postgresql://postgres@127.0.0.1/appliance",
            "postgresql://postgres@[::1]:5432/appliance",
            "postgresql://appliance@/appliance?host=/var/lib/appliance/run",
        ],
        ids=["localhost", "127.0.0.1", "::1", "unix socket"],
    )
    def test_this_machine_keeps_the_drivers_default(self, dsn: str) -> None:
        """Loopback and a unix socket: the url is left as it is."""
        assert tls.secured(dsn, database(), {}) == dsn

    def test_one_remote_host_among_several_is_enough(self) -> None:
        """A multi-host url with another machine in it is verified too."""
        dsn = "postgresql://u@localhost:5432,db-2.example:5432/appliance"

        assert tls.effective(dsn, database(), {}).mode == "verify-full"

    def test_pghost_names_the_host_of_a_url_without_one(self) -> None:
        """With no host in the url, PGHOST is where it goes, as libpq does."""
        dsn = "postgresql:///appliance"

        assert tls.effective(dsn, database(), {"PGHOST": "db.example"}).mode == "verify-full"


class TestWhereItComesFrom:
    def test_the_settings_are_folded_into_the_url(self, ca: Path) -> None:
        """database.sslmode and database.sslrootcert become the url's parameters."""
        secured = tls.secured(
            "postgresql://u@db.example/appliance?application_name=x",
            database(sslmode="verify-full", sslrootcert=str(ca)),
            {},
        )

        assert parameters(secured) == {
            "application_name": "x",
            "sslmode": "verify-full",
            "sslrootcert": str(ca),
        }
        assert f"sslrootcert={ca}" in secured  # the path stays readable

    def test_the_urls_own_parameters_stand(self, ca: Path) -> None:
        """sslmode and sslrootcert written in the url are what connections use."""
        dsn = f"postgresql://u@db.example/appliance?sslmode=verify-ca&sslrootcert={ca}"

        found = tls.effective(dsn, database(), {})

        assert (found.mode, found.rootcert) == ("verify-ca", str(ca))

    def test_the_environment_is_the_last_resort(self, ca: Path) -> None:
        """PGSSLMODE and PGSSLROOTCERT apply when neither the settings nor the url say."""
        environ = {"PGSSLMODE": "require", "PGSSLROOTCERT": str(ca)}

        secured = tls.secured(REMOTE, database(), environ)

        assert parameters(secured) == {"sslmode": "require", "sslrootcert": str(ca)}

    def test_the_settings_and_the_url_must_agree(self) -> None:
        """Two different modes for one server: a config error naming both."""
        with pytest.raises(tls.DatabaseTlsError, match=r"verify-full\).*require\)") as caught:
            tls.effective(f"{REMOTE}?sslmode=require", database(sslmode="verify-full"), {})

        assert caught.value.exit_code == 78

    def test_a_ca_file_that_is_not_there_is_a_config_error(self, tmp_path: Path) -> None:
        """A CA file named but missing stops the start, naming the path (not 'unreachable')."""
        missing = tmp_path / "nowhere.pem"

        with pytest.raises(tls.DatabaseTlsError, match=r"nowhere\.pem is not a file"):
            tls.secured(REMOTE, database(sslmode="verify-full", sslrootcert=str(missing)), {})

    def test_an_unknown_mode_is_named(self) -> None:
        """A misspelt sslmode in the url is refused with the modes there are."""
        with pytest.raises(tls.DatabaseTlsError, match="'verify_full' is not one of"):
            tls.effective(f"{REMOTE}?sslmode=verify_full", database(), {})

    def test_the_pool_connects_with_the_secured_url(self, ca: Path) -> None:
        """dsn_of, which every connection of the daemon starts from, carries the TLS."""
        config = database(url=REMOTE, sslrootcert=str(ca))

        assert parameters(pool.dsn_of(config))["sslmode"] == "verify-full"


class TestDescribe:
    def test_the_address_leaves_the_password_out(self) -> None:
        """Messages name host and port, never the credentials before them."""
        found = tls.effective(REMOTE, database(), {})

        assert found.address == "db.internal.example:5432"
        assert found.hosts == ("db.internal.example",)


class TestDoctor:
    def test_verify_full_is_ok(self, ca: Path) -> None:
        """The default for a remote server passes, naming the CA and the host."""
        check = doctor._database_tls(database(sslrootcert=str(ca)), REMOTE)

        assert check.ok, check.detail
        assert f"sslmode=verify-full, CA {ca}" in check.detail

    @pytest.mark.parametrize(
        ("mode", "said"),
        [
            ("require", "the server is not verified"),
            ("verify-ca", "not the host it names"),
            ("prefer", "may go in the clear"),
            ("disable", "may go in the clear"),
        ],
    )
    def test_less_than_verify_full_is_called_out(self, mode: str, said: str) -> None:
        """require, verify-ca and the modes without TLS warn, with the fix."""
        check = doctor._database_tls(database(sslmode=mode), REMOTE)

        assert (check.ok, check.severity) == (False, "warn")
        assert said in check.detail
        assert 'database.sslmode = "verify-full"' in check.fix

    def test_this_machine_is_ok_without_tls(self) -> None:
        """Loopback traffic does not leave the machine."""
        check = doctor._database_tls(database(), "postgresql://postgres@localhost/appliance")

        assert check.ok, check.detail
