"""`supervisor.private_paths`: what of the daemon's own a tool process must not see."""

from __future__ import annotations

from pathlib import Path

from appliance import settings
from appliance.isolation import supervisor


def configured(**data: object) -> settings.Settings:
    return settings.Settings.model_validate(data)


class TestPrivatePaths:
    def test_the_config_file_the_daemon_read_is_hidden_whatever_the_environment_says(
        self, tmp_path: Path
    ) -> None:
        """--config FILE is hidden, and so are $APPLIANCE_CONFIG's file and the default one."""
        real = tmp_path / "box.toml"
        found = supervisor.private_paths(
            configured(), real, {"APPLIANCE_CONFIG": str(tmp_path / "other.toml")}
        )
        assert {real, tmp_path / "other.toml"} <= set(found)
        assert settings.DEFAULT_CONFIG_PATH in supervisor.private_paths(configured(), real, {})

    def test_state_dir_and_key_file(self, tmp_path: Path) -> None:
        """The state directory, and the key file (its default place, or the configured one)."""
        state = tmp_path / "state"
        default = supervisor.private_paths(configured(state_dir=str(state)), None, {})
        assert {state, state / "vault.key"} <= set(default)
        key = tmp_path / "elsewhere" / "vault.key"
        chosen = supervisor.private_paths(
            configured(state_dir=str(state), vault={"key_file": str(key)}), None, {}
        )
        assert key in chosen

    def test_every_path_the_settings_name_but_the_watched_folders(self, tmp_path: Path) -> None:
        """The outbox file, the Postgres socket directory, the CA file, more hidden paths: all
        hidden; a watched folder is the tasks' input and stays visible."""
        config = configured(
            outbox={"file_path": str(tmp_path / "events.jsonl")},
            database={"socket_dir": str(tmp_path / "pg"), "sslrootcert": str(tmp_path / "ca")},
            isolation={"hidden_paths": [str(tmp_path / "more")]},
            watches=[{"path": str(tmp_path / "inbox"), "workflow": "agent.run"}],
        )
        found = set(supervisor.private_paths(config, None, {}))
        named = {"events.jsonl", "pg", "ca", "more"}
        assert {tmp_path / name for name in named} <= found
        assert tmp_path / "inbox" not in found

    def test_the_database_clients_credential_files(self, tmp_path: Path) -> None:
        """libpq's password, service and key files, from the environment and from the home."""
        environ = {"PGPASSFILE": str(tmp_path / "pass"), "HOME": str(tmp_path / "home")}
        found = set(supervisor.private_paths(configured(), None, environ))
        home = tmp_path / "home"
        assert {tmp_path / "pass", home / ".pgpass", home / ".postgresql"} <= found

    def test_a_home_of_slash_is_not_a_credential_directory(self) -> None:
        """HOME=/ (a system user without a home) adds /.pgpass, never / itself."""
        found = supervisor.private_paths(configured(), None, {"HOME": "/"})
        assert Path("/.pgpass") in found
        assert Path("/") not in found
