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


# Secrets of several shapes, each written where a config error could echo it.
CANARIES = (
    "sk-ant-api03-Canary0LEAKED1canary2LEAKED3-abcdefghij",
    "whsec_Q2FuYXJ5TEVBS0VEY2FuYXJ5TEVBS0VE",
    "CanaryLeakedPassphraseWithoutDigits",
    "postgresql://app:CanaryLeakedPw77@db.example:5432/leakydb",
)
# TOML documents that are invalid in one way each; {c} is where the secret goes.
BROKEN_FILES = {
    "misspelt key": '[model]\napi_kye = "{c}"\n',
    "unknown top-level key": 'api_key = "{c}"\n',
    "unknown section": '[modle]\napi_key = "{c}"\n',
    "list for a secret": '[model]\napi_key = ["{c}"]\n',
    "table for a secret": '[database]\nurl = {{ dsn = "{c}" }}\n',
    "secret in place of a section": 'model = "{c}"\n',
    "secret as a key": '[model]\n"{c}" = true\n',
    "model check quoting the input": '[database]\nurl = "{c}"\nsocket_dir = "/run/pg"\n',
    "webhook secret not base64": (
        "[ingress]\nenabled = true\n[[ingress.sources]]\n"
        'tenant = "default"\nname = "shop"\nworkflow = "w"\nsecrets = ["whsec_{c}!"]\n'
    ),
    "webhook secret and reference": (
        '[ingress]\nenabled = true\n[[ingress.sources]]\ntenant = "default"\nname = "shop"\n'
        'workflow = "w"\nsecrets = ["{c}"]\nsecret_ref = "webhook/shop"\n'
    ),
    "misspelt key of a source": (
        "[ingress]\n[[ingress.sources]]\n"
        'tenant = "default"\nname = "shop"\nworkflow = "w"\nsecret = "{c}"\n'
    ),
    "TOML: unquoted value": "[model]\napi_key = {c}\n",
    "TOML: unterminated string": '[model]\napi_key = "{c}\n',
    "TOML: control character in a string": '[model]\napi_key = "{c}\x01"\n',
    "TOML: duplicate key": '[model]\napi_key = "{c}"\napi_key = "{c}"\n',
    "TOML: duplicate inline key": 'model = {{ "{c}" = 1, "{c}" = 2 }}\n',
}
BROKEN_ENVIRONMENTS = {
    "misspelt variable": {"APPLIANCE_MODEL__API_KYE": "{c}"},
    "JSON that does not parse": {"APPLIANCE_MESH__ADVERTISE_TAGS": '["tag:{c}"'},
    "sources whose JSON does not parse": {
        "APPLIANCE_INGRESS__SOURCES": '[{{"tenant": "default", "secrets": ["{c}"]'
    },
    "a source with a bad secret": {
        "APPLIANCE_INGRESS__SOURCES": '[{{"tenant": "default", "name": "shop", '
        '"workflow": "w", "secrets": ["whsec_{c}!"]}}]'
    },
    "DSN and socket together": {
        "APPLIANCE_DATABASE__URL": "{c}",
        "APPLIANCE_DATABASE__SOCKET_DIR": "/run/pg",
    },
}


def everything_said(exc: BaseException) -> str:
    """The error's message and every message chained to it, as the CLI could print them."""
    said = []
    current: BaseException | None = exc
    while current is not None:
        said.append(str(current))
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "\n".join(said)


def assert_nothing_of(secret: str, text: str) -> None:
    """Not the secret, nor any 8 characters of it in a row."""
    pieces = [secret[i : i + 8] for i in range(len(secret) - 7)]
    shown = [piece for piece in pieces if piece in text]
    assert not shown, f"{shown[:3]} of the secret in:\n{text}"


class TestSecretsInErrors:
    @pytest.mark.parametrize("canary", CANARIES)
    @pytest.mark.parametrize("case", sorted(BROKEN_FILES))
    def test_a_broken_file_never_shows_a_secret(
        self, tmp_path: Path, case: str, canary: str
    ) -> None:
        """Each kind of error in the file names the file, and no part of the secret."""
        text = BROKEN_FILES[case].format(c=canary.replace('"', ""))
        error = load_error(config(tmp_path, text), {})
        said = everything_said(error)
        assert_nothing_of(canary, said)
        assert str(tmp_path / "appliance.toml") in said
        assert error.exit_code == 78

    @pytest.mark.parametrize("canary", CANARIES)
    @pytest.mark.parametrize("case", sorted(BROKEN_ENVIRONMENTS))
    def test_a_broken_override_never_shows_a_secret(
        self, tmp_path: Path, case: str, canary: str
    ) -> None:
        """Each kind of error in an override names the variable, and no part of the secret."""
        environ = {k: v.format(c=canary) for k, v in BROKEN_ENVIRONMENTS[case].items()}
        said = everything_said(load_error(config(tmp_path), environ))
        assert_nothing_of(canary, said)
        assert any(name in said for name in environ)

    def test_a_misspelt_key_is_still_named(self, tmp_path: Path) -> None:
        """The key is named (it is not a value), and says it is unknown."""
        message = str(load_error(config(tmp_path, BROKEN_FILES["misspelt key"].format(c="x")), {}))
        assert "model.api_kye: unknown key" in message

    def test_a_secret_written_as_a_key_is_not_named(self, tmp_path: Path) -> None:
        """A token pasted in a key's place is counted, not shown."""
        text = BROKEN_FILES["secret as a key"].format(c=CANARIES[0])
        message = str(load_error(config(tmp_path, text), {}))
        assert f"model.(a key of {len(CANARIES[0])} characters, not shown): unknown key" in message

    def test_a_toml_error_gives_the_position(self, tmp_path: Path) -> None:
        """A syntax error says where it is: line and column."""
        text = BROKEN_FILES["TOML: unquoted value"].format(c=CANARIES[0])
        message = str(load_error(config(tmp_path, text), {}))
        assert "not valid TOML at line 2, column 11: Invalid value" in message

    def test_json_that_does_not_parse_says_so(self, tmp_path: Path) -> None:
        """An override that looks like JSON but does not parse says where it breaks."""
        environ = {"APPLIANCE_ENGINE__WORKFLOW_MODULES": '["a", "b"'}
        message = str(load_error(config(tmp_path), environ))
        assert "APPLIANCE_ENGINE__WORKFLOW_MODULES" in message
        assert "not valid JSON at column" in message

    def test_a_non_secret_value_is_still_shown(self, tmp_path: Path) -> None:
        """Reasons that quote a value of a field that is no secret keep it (they help)."""
        message = str(load_error(config(tmp_path, '[mesh]\nallowed = ["sctp/9"]\n'), {}))
        assert "'sctp/9' is not protocol/port" in message

    def test_a_file_that_is_not_utf8_gives_the_position(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 are a config error with their offset, not a traceback."""
        path = tmp_path / "appliance.toml"
        path.write_bytes(b'[model]\napi_key = "' + CANARIES[0].encode() + b'\xff"\n')
        said = everything_said(load_error(path, {}))
        assert "not UTF-8 text (byte" in said
        assert_nothing_of(CANARIES[0], said)


WILDCARD = "0.0.0.0"  # noqa: S104 - a value under test, never bound


class TestWorkerHealthAddress:
    @pytest.mark.parametrize("host", ["127.0.0.1", "10.0.1.5", "172.31.4.9", "fd00::2"])
    def test_a_private_address_is_taken(self, host: str) -> None:
        """Loopback, RFC 1918 and unique-local addresses are fine for a worker's listener."""
        config = settings.load(None, {"APPLIANCE_MODE": "worker", "APPLIANCE_HEALTH__HOST": host})

        assert config.health.host == host

    @pytest.mark.parametrize(
        ("host", "reason"),
        [
            (WILDCARD, f"{WILDCARD} listens on every interface"),
            ("::", ":: listens on every interface"),
            ("8.8.8.8", "8.8.8.8 is not a private address"),
            ("worker-1.internal", "'worker-1.internal' is not an IP address"),
        ],
    )
    def test_anything_else_is_refused(self, host: str, reason: str) -> None:
        """A wildcard, a public address or a name: a config error saying which."""
        error = load_error(None, {"APPLIANCE_MODE": "worker", "APPLIANCE_HEALTH__HOST": host})

        assert f"health.host of a worker: {reason}" in error.message

    def test_the_edge_box_is_not_held_to_it(self) -> None:
        """The rule is the worker's: edge mode keeps any address (the exposure gate judges it)."""
        config = settings.load(None, {"APPLIANCE_HEALTH__HOST": WILDCARD})

        assert config.health.host == WILDCARD


class TestOutgoingWebhooks:
    HOOK = '[[outbox.webhooks]]\nname = "ops"\nsecret_ref = "outbox/ops"\n'

    def test_an_endpoint_loads_with_its_filters(self, tmp_path: Path) -> None:
        """`[[outbox.webhooks]]` with a URL, a vault reference and filters."""
        text = self.HOOK + 'url = "https://hooks.example.com/x"\nevents = ["task.*"]\n'
        [hook] = settings.load(config(tmp_path, text), {}).outbox.webhooks
        assert (hook.name, hook.events, hook.tenants) == ("ops", ("task.*",), ("*",))

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("ftp://hooks.example.com/x", "http:// or https://"),
            ("https:///x", "http:// or https://"),
            ("https://user:Pa55word-kept-back@hooks.example.com/x", "user or password"),
        ],
    )
    def test_a_url_that_is_not_a_plain_http_address_is_refused(
        self, tmp_path: Path, url: str, reason: str
    ) -> None:
        """Only http(s) with a host, and no credentials in it (which are never echoed)."""
        message = everything_said(load_error(config(tmp_path, self.HOOK + f'url = "{url}"\n'), {}))
        assert "outbox.webhooks" in message
        assert reason in message
        assert_nothing_of("Pa55word-kept-back", message)

    def test_two_endpoints_of_one_name_are_refused(self, tmp_path: Path) -> None:
        """Each endpoint's name is its queue: two of one name are a mistake."""
        one = self.HOOK + 'url = "https://a.example.com/x"\n'
        message = str(load_error(config(tmp_path, one + one), {}))
        assert "two webhooks are named 'ops'" in message
