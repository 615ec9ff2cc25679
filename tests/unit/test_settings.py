"""Settings: defaults, the TOML file, environment overrides, errors, redaction, the template."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pydantic
import pytest

from appliance import errors, settings

SECRET_DSN = "postgresql://u:secretpw@db.example:5432/appliance"
_KEY_LINE = re.compile(
    r"^# ([a-z_]+) =(?: (.+))?$"
)  # a key line; no value when the default is None


def config(tmp_path: Path, text: str = "") -> Path:
    """A config file with `text` in it."""
    path = tmp_path / "appliance.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path | None, environ: dict[str, str]) -> errors.ConfigError:
    """The ConfigError that loading raises."""
    with pytest.raises(errors.ConfigError) as caught:
        settings.load(path, environ)
    return caught.value


class TestDefaults:
    def test_the_defaults_are_valid(self) -> None:
        """Every field has a default, and together they validate."""
        defaults = settings.Settings()
        assert defaults.engine.concurrency >= 1
        assert defaults.embedded

    def test_an_empty_file_gives_the_defaults(self, tmp_path: Path) -> None:
        """An empty config file and no overrides are the defaults."""
        loaded = settings.load(config(tmp_path), {})
        assert loaded.model_dump() == settings.Settings().model_dump()

    def test_settings_are_frozen(self) -> None:
        """Loaded settings cannot be changed afterwards."""
        with pytest.raises(pydantic.ValidationError):
            settings.Settings().engine.concurrency = 2  # type: ignore[misc]


class TestPrecedence:
    def test_the_file_overrides_a_default(self, tmp_path: Path) -> None:
        """A key in the file replaces its default."""
        loaded = settings.load(config(tmp_path, "[engine]\nconcurrency = 4\n"), {})
        assert loaded.engine.concurrency == 4

    def test_the_environment_overrides_the_file(self, tmp_path: Path) -> None:
        """APPLIANCE_<SECTION>__<KEY> wins over the same key in the file."""
        path = config(tmp_path, "[engine]\nconcurrency = 4\nlease_seconds = 3.0\n")
        loaded = settings.load(path, {"APPLIANCE_ENGINE__CONCURRENCY": "6"})
        assert loaded.engine.concurrency == 6
        assert loaded.engine.lease_seconds == 3.0

    def test_environment_values_are_read_as_json(self, tmp_path: Path) -> None:
        """Lists, booleans and numbers from the environment arrive as such."""
        loaded = settings.load(
            config(tmp_path),
            {
                "APPLIANCE_ENGINE__WORKFLOW_MODULES": '["a.b", "c"]',
                "APPLIANCE_DATABASE__MIGRATE_ON_START": "false",
                "APPLIANCE_ENGINE__LEASE_SECONDS": "2.5",
            },
        )
        assert loaded.engine.workflow_modules == ("a.b", "c")
        assert loaded.database.migrate_on_start is False
        assert loaded.engine.lease_seconds == 2.5

    def test_an_environment_value_that_is_not_json_is_text(self, tmp_path: Path) -> None:
        """A DSN from the environment is taken as the string it is."""
        loaded = settings.load(config(tmp_path), {"APPLIANCE_DATABASE__URL": SECRET_DSN})
        assert loaded.database.url is not None
        assert loaded.database.url.get_secret_value() == SECRET_DSN

    def test_a_number_like_value_of_a_text_setting_stays_text(self, tmp_path: Path) -> None:
        """A node named `7` from the environment is the text "7", not a type error."""
        loaded = settings.load(config(tmp_path), {"APPLIANCE_ENGINE__NODE_NAME": "7"})
        assert loaded.engine.node_name == "7"

    def test_a_top_level_key_comes_from_its_own_variable(self, tmp_path: Path) -> None:
        """APPLIANCE_<KEY> sets a key outside any section."""
        loaded = settings.load(config(tmp_path), {"APPLIANCE_DEFAULT_TENANT": "acme"})
        assert loaded.default_tenant == "acme"

    def test_appliance_config_names_the_file(self, tmp_path: Path) -> None:
        """Without --config, $APPLIANCE_CONFIG is the file read."""
        path = config(tmp_path, 'default_tenant = "globex"\n')
        loaded = settings.load(None, {"APPLIANCE_CONFIG": str(path)})
        assert loaded.default_tenant == "globex"


class TestErrors:
    def test_an_unknown_key_names_the_file_and_the_key(self, tmp_path: Path) -> None:
        """A misspelt key is refused as an unknown key, with where it was written."""
        path = config(tmp_path, "[engine]\nconcurency = 4\n")
        message = str(load_error(path, {}))
        assert str(path) in message
        assert "engine.concurency" in message
        assert "unknown key" in message

    def test_a_bad_override_names_the_environment_variable(self, tmp_path: Path) -> None:
        """A value from the environment that does not validate names its variable."""
        message = str(load_error(config(tmp_path), {"APPLIANCE_ENGINE__CONCURRENCY": "abc"}))
        assert "APPLIANCE_ENGINE__CONCURRENCY" in message
        assert "engine.concurrency" in message

    def test_an_unknown_override_is_refused(self, tmp_path: Path) -> None:
        """A misspelt variable is an unknown key, named by its variable."""
        message = str(load_error(config(tmp_path), {"APPLIANCE_ENGINE__CONCURENCY": "4"}))
        assert "APPLIANCE_ENGINE__CONCURENCY" in message
        assert "unknown key" in message

    def test_invalid_toml_names_the_file(self, tmp_path: Path) -> None:
        """A file that is not TOML is a configuration error naming the file."""
        path = config(tmp_path, "[engine\n")
        message = str(load_error(path, {}))
        assert str(path) in message
        assert "TOML" in message

    def test_a_named_file_must_exist(self, tmp_path: Path) -> None:
        """A config file named explicitly but missing is an error, not the defaults."""
        missing = tmp_path / "missing.toml"
        assert str(missing) in str(load_error(missing, {}))

    def test_a_config_error_exits_78(self, tmp_path: Path) -> None:
        """Configuration errors carry the 'misconfigured' exit code."""
        assert load_error(config(tmp_path, "nonsense = 1\n"), {}).exit_code == 78


class TestRedaction:
    def test_the_dsn_is_redacted(self) -> None:
        """The DSN is a secret: shown as asterisks, its password nowhere."""
        data = settings.redacted(settings.Settings(database={"url": SECRET_DSN}))
        assert data["database"]["url"] == "**********"
        assert "secretpw" not in json.dumps(data)

    def test_other_values_are_shown(self) -> None:
        """Redaction hides secrets only: plain values stay readable."""
        data = settings.redacted(settings.Settings(engine={"node_name": "edge-1"}))
        assert data["engine"]["node_name"] == "edge-1"


class TestTemplate:
    def test_the_template_is_toml_that_loads_as_the_defaults(self, tmp_path: Path) -> None:
        """`template()` parses as TOML, and as a config file it gives the defaults."""
        text = settings.template()
        tomllib.loads(text)
        loaded = settings.load(config(tmp_path, text), {})
        assert loaded.model_dump() == settings.Settings().model_dump()

    def test_every_key_it_shows_has_its_real_default(self, tmp_path: Path) -> None:
        """Uncommenting every `key = value` line of the template still gives the defaults."""
        lines = []
        for line in settings.template().splitlines():
            match = _KEY_LINE.match(line)
            lines.append(line[2:] if match and match[2] else line)
        loaded = settings.load(config(tmp_path, "\n".join(lines)), {})
        assert loaded.model_dump() == settings.Settings().model_dump()

    def test_it_names_every_key(self) -> None:
        """Every field of every section appears in the template."""
        lines = settings.template().splitlines()
        shown = {match[1] for line in lines if (match := _KEY_LINE.match(line))}
        expected: set[str] = set()
        for name, field in settings.Settings.model_fields.items():
            model = field.annotation
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
                expected |= set(model.model_fields)
            else:
                expected.add(name)
        assert expected <= shown
