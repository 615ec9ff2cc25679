"""The configuration: one frozen pydantic model of nested sections, read from TOML plus env.

Where the file comes from: `--config`, else `$APPLIANCE_CONFIG`, else
`/etc/appliance/appliance.toml` (a missing default file means all defaults; a missing file that
was named explicitly is an error). Any key can be overridden from the environment as
`APPLIANCE_<SECTION>__<KEY>` (top-level keys as `APPLIANCE_<KEY>`); lists and tables are written
as JSON (`APPLIANCE_OUTBOX__SINKS='["stdout"]'`), scalars as they are.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import pydantic

from appliance import errors, triggers
from appliance.ingress import cron, signatures

DEFAULT_CONFIG_PATH = Path("/etc/appliance/appliance.toml")
MEBIBYTE = 1024 * 1024
_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_WEBHOOK_REF = r"^webhook/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_OUTBOX_REF = r"^outbox/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
ENV_PREFIX = "APPLIANCE_"
EVERY_TENANT = "*"


class _Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: pydantic.SecretStr | None = pydantic.Field(
        default=None,
        description="libpq DSN of an external Postgres; empty = the embedded cluster",
    )
    socket_dir: Path | None = pydantic.Field(
        default=None, description="connect over the unix socket in this directory instead of a DSN"
    )
    name: str = pydantic.Field(default="appliance", description="database name (socket/embedded)")
    user: str = pydantic.Field(default="appliance", description="database role (socket/embedded)")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        pydantic.Field(
            default=None,
            description="TLS with the server (or sslmode in the url); unset: verify-full for a "
            "server on another host, the driver's default on this machine",
        )
    )
    sslrootcert: Path | None = pydantic.Field(
        default=None,
        description="CA file (PEM) that signs the server's certificate (or sslrootcert in the url)",
    )
    pool_min: int = pydantic.Field(default=2, ge=1, description="connections kept open")
    pool_max: int = pydantic.Field(default=12, ge=2, description="most connections in the pool")
    connect_timeout: float = pydantic.Field(
        default=5.0, gt=0, description="seconds to wait for a connection"
    )
    migrate_on_start: bool = pydantic.Field(
        default=True, description="apply pending migrations when the daemon starts"
    )
    embedded_user: str = pydantic.Field(
        default="appliance",
        description="OS user that runs the embedded Postgres when the daemon runs as root",
    )

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> DatabaseSettings:
        if self.url is not None and self.socket_dir is not None:
            raise ValueError("set either url or socket_dir, not both")
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min is larger than pool_max")
        return self


class EngineSettings(_Section):
    node_name: str = pydantic.Field(
        default_factory=socket.gethostname,
        description="this node's name, held by one live process at a time (a second one "
        "under it refuses to start, exit 78); a restarted node takes back its own tasks at once",
    )
    concurrency: int = pydantic.Field(default=8, ge=1, description="tasks run at once per worker")
    lease_seconds: float = pydantic.Field(
        default=10.0,
        ge=1,
        description="a task whose lease is not renewed for this long is taken over",
    )
    poll_seconds: float = pydantic.Field(
        default=2.0, gt=0, description="safety-net poll when no notification arrives"
    )
    max_attempts: int = pydantic.Field(default=3, ge=1, description="default attempts per task")
    max_crashes: int = pydantic.Field(
        default=50,
        ge=1,
        description="a task whose worker is lost this many times while running it fails "
        "(attempts lost to a crash are not charged against max_attempts)",
    )
    retry_base_seconds: float = pydantic.Field(
        default=1.0, ge=0, description="first retry delay; doubles per attempt, with jitter"
    )
    retry_max_seconds: float = pydantic.Field(
        default=300.0, ge=0, description="longest retry delay"
    )
    tenant_concurrency: int = pydantic.Field(
        default=4,
        ge=1,
        description="fair share of running tasks per tenant while other tenants wait (soft)",
    )
    integration_limits: dict[str, int] = pydantic.Field(
        default_factory=dict,
        description="hard limit of running tasks per integration a workflow names",
    )
    shutdown_grace_seconds: float = pydantic.Field(
        default=10.0, ge=0, description="time running steps get to finish on SIGTERM"
    )
    workflow_modules: tuple[str, ...] = pydantic.Field(
        default=(),
        description="Python modules imported at start to register workflows and tools "
        "(installed plugins need no entry here: their entry points are found)",
    )


class OutgoingWebhook(_Section):
    """An HTTP endpoint that gets the outbox's events, signed (`[[outbox.webhooks]]`)."""

    name: str = pydantic.Field(
        pattern=_NAME, description="the endpoint's name (its queue, doctor, metrics)"
    )
    url: str = pydantic.Field(
        max_length=2000,
        description="where events are POSTed (http or https); redirects are never followed",
    )
    secret_ref: str = pydantic.Field(
        pattern=_OUTBOX_REF,
        description="`outbox/<name>`: the Standard Webhooks signing secret (whsec_...) is the "
        "vault's secret of the default tenant, integration outbox, workflow *, read at start "
        "(one per line: each line signs, while the receiver's secret is rotated)",
    )
    events: tuple[str, ...] = pydantic.Field(
        default=("*",),
        min_length=1,
        description="event types sent: exact (task.failed) or with a * (task.*, *)",
    )
    tenants: tuple[str, ...] = pydantic.Field(
        default=(EVERY_TENANT,),
        min_length=1,
        description="tenants whose events are sent; '*' for every tenant",
    )
    timeout_seconds: float = pydantic.Field(
        default=10.0, gt=0, le=300, description="a delivery not answered within this failed"
    )

    @pydantic.field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry a user or password (the signature authenticates)")
        return value

    @pydantic.field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tenant in value:
            if tenant != EVERY_TENANT and not re.fullmatch(_NAME, tenant):
                raise ValueError(f"{tenant!r} is not a tenant id (nor '*' for every tenant)")
        return value


class OutboxSettings(_Section):
    sinks: tuple[Literal["stdout", "file"], ...] = pydantic.Field(
        default=("stdout",), description="where outbox events are shipped"
    )
    webhooks: tuple[OutgoingWebhook, ...] = pydantic.Field(
        default=(),
        description="HTTP endpoints that get the events, signed with Standard Webhooks, each "
        "with its own queue: [[outbox.webhooks]]",
    )
    file_path: Path | None = pydantic.Field(
        default=None, description="JSON-lines file of the `file` sink"
    )
    batch_size: int = pydantic.Field(default=200, ge=1, description="events shipped per batch")
    retry_base_seconds: float = pydantic.Field(
        default=1.0, ge=0, description="first redelivery delay; doubles per failure"
    )
    retry_max_seconds: float = pydantic.Field(default=300.0, ge=0, description="longest delay")

    @pydantic.model_validator(mode="after")
    def _file_sink_needs_path(self) -> OutboxSettings:
        if "file" in self.sinks and self.file_path is None:
            raise ValueError("the file sink needs outbox.file_path")
        names = [w.name for w in self.webhooks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two webhooks are named {name!r}")
        return self


TAILNET = "tailnet"


class HealthSettings(_Section):
    host: str = pydantic.Field(
        default=TAILNET,
        description="where /healthz and /readyz listen: 'tailnet' = this node's tailnet "
        "addresses only; an address (127.0.0.1 for development, or `run --local`) = just that; "
        "a VPC worker (mode = 'worker') listens only when given a private address",
    )
    port: int = pydantic.Field(default=8470, ge=0, le=65535, description="0 picks a free port")
    db_check_seconds: float = pydantic.Field(
        default=0.25, gt=0, description="how often readiness checks Postgres"
    )


# A reader of /metrics: a tag, or a MagicDNS name (dotted, its last label not all digits, so
# an IP address is not taken for a name).
_READER = re.compile(
    r"^(tag:[A-Za-z0-9][A-Za-z0-9-]*|([A-Za-z0-9-]+\.)+[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*\.?)$"
)


class MetricsSettings(_Section):
    """Prometheus metrics at `/metrics` on the console's listener (`appliance.metrics`)."""

    readers: tuple[str, ...] = pydantic.Field(
        default=(),
        description="tailnet devices (MagicDNS names) and tags (tag:...) that may read /metrics "
        "(and nothing else); loopback may always",
    )
    query_timeout_seconds: float = pydantic.Field(
        default=5.0,
        gt=0,
        description="a scrape's database query gets this long; then appliance_postgres_up is 0 "
        "and the database's series are left out",
    )
    whois_cache_seconds: float = pydantic.Field(
        default=30.0, ge=0, description="how long a tailnet peer's identity is remembered"
    )

    @pydantic.field_validator("readers")
    @classmethod
    def _device_or_tag(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not _READER.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is neither a tag (tag:prometheus) nor a device's MagicDNS name "
                    "(prometheus.tail1234.ts.net)"
                )
        return value


class MeshSettings(_Section):
    tailscale: str = pydantic.Field(default="tailscale", description="the tailscale CLI")
    hostname: str | None = pydantic.Field(
        default=None, description="the node's tailnet name (default: engine.node_name)"
    )
    advertise_tags: tuple[str, ...] = pydantic.Field(
        default=(), description="ACL tags the node advertises when it joins (tag:...)"
    )
    allowed: tuple[str, ...] = pydantic.Field(
        default=("udp/41641@tailscaled",),
        description="listeners the exposure gate allows besides the daemon's webhook ingress "
        "socket, as protocol/port@process (the holder's command name)",
    )
    recheck_seconds: float = pydantic.Field(
        default=10.0,
        ge=0,
        description="how often the running daemon re-checks every listening socket of the box "
        "(0: only at boot)",
    )
    command_timeout_seconds: float = pydantic.Field(
        default=10.0, gt=0, description="timeout of each tailscale CLI call"
    )

    @pydantic.field_validator("allowed")
    @classmethod
    def _protocol_port_process(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            where, _, process = entry.partition("@")
            protocol, _, port = where.partition("/")
            if protocol not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{entry!r} is not protocol/port@process (udp/41641@tailscaled)")
            if not process:
                raise ValueError(
                    f"{entry!r} names no process: the port is allowed to one holder only "
                    f"(write {where}@<command name>, such as udp/41641@tailscaled)"
                )
        return value


ROLES = ("viewer", "operator", "approver", "admin")


class ConsoleGrant(_Section):
    """One person's role in some tenants (`[[console.grants]]`)."""

    login: str = pydantic.Field(
        min_length=1, description="the tailnet login name (user@example.com)"
    )
    tenants: tuple[str, ...] = pydantic.Field(
        min_length=1, description="the tenants the role holds in; '*' for every tenant"
    )
    role: Literal["viewer", "operator", "approver", "admin"] = pydantic.Field(
        description="viewer < operator (submit, cancel, retry) < approver < admin"
    )

    @pydantic.field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tenant in value:
            if tenant != EVERY_TENANT and not re.fullmatch(_NAME, tenant):
                raise ValueError(f"{tenant!r} is not a tenant id (nor '*' for every tenant)")
        return value


class ConsoleSettings(_Section):
    """Who may use the console, and how a request's person is known (README: Console)."""

    grants: tuple[ConsoleGrant, ...] = pydantic.Field(
        default=(), description="roles of tailnet logins per tenant: [[console.grants]]"
    )
    capability: str = pydantic.Field(
        default="",
        description="the tailnet app capability whose grants name tenants and a role "
        '({"tenants": ["acme"], "role": "operator"}), in a domain you control '
        "(example.com/cap/appliance); empty: only console.grants count",
    )
    serve_socket: Path | None = pydantic.Field(
        default=None,
        description="a unix socket the console also listens on, for `tailscale serve "
        "unix:PATH`: the Tailscale-User-* identity headers are trusted there, never on TCP",
    )
    whois_cache_seconds: float = pydantic.Field(
        default=10.0, ge=0, description="how long a tailnet peer's whois answer is reused"
    )


PROVISIONING_FILE = "appliance-provision.toml"  # its name at the root of a USB stick


class ProvisioningSettings(_Section):
    """Where a fresh box looks for its provisioning file (README: First boot)."""

    paths: tuple[str, ...] = pydantic.Field(
        default=(
            "/etc/appliance/provision.toml",
            f"/media/*/{PROVISIONING_FILE}",
            f"/media/*/*/{PROVISIONING_FILE}",
            f"/Volumes/*/{PROVISIONING_FILE}",
        ),
        description="where a provisioning file is looked for, in order (shell patterns: the "
        "root of a volume mounted under /media, /media/<user>/<label> by udisks, or /Volumes on "
        "macOS); <state_dir>/provision.toml, where the packaged box's root step puts a file "
        "it found, is looked at first",
    )
    poll_seconds: float = pydantic.Field(
        default=5.0,
        gt=0,
        description="how often a box that is not on its tailnet looks for a provisioning file",
    )


class VaultSettings(_Section):
    source: Literal["file", "credential", "keyring"] = pydantic.Field(
        default="file",
        description="where the master key comes from: a root-only key file, a systemd "
        "credential (LoadCredentialEncrypted=), or the OS keyring (a secure backend only)",
    )
    key_file: Path | None = pydantic.Field(
        default=None, description="the key file (default: <state_dir>/vault.key, mode 0600)"
    )
    credential: str = pydantic.Field(
        default="appliance-vault-key", description="the systemd credential's name"
    )
    overdue_check_seconds: float = pydantic.Field(
        default=60.0,
        gt=0,
        description="how often the daemon looks for secrets overdue for rotation (each is "
        "announced once per period, outbox event secret.overdue)",
    )


class ApprovalSettings(_Section):
    timeout_seconds: float = pydantic.Field(
        default=86400.0, gt=0, description="a request not decided within this time expires (denied)"
    )
    approvers: int = pydantic.Field(
        default=1, ge=1, description="distinct people whose approval a request needs"
    )
    sweep_seconds: float = pydantic.Field(
        default=30.0, gt=0, description="how often the daemon expires overdue requests"
    )


class IsolationSettings(_Section):
    """How tool calls are confined: each runs in its own process (`appliance.isolation`)."""

    memory_mb: int = pydantic.Field(
        default=1024, ge=64, description="address-space limit of a tool process (RLIMIT_AS), MiB"
    )
    cpu_seconds: int = pydantic.Field(
        default=60, ge=1, description="CPU time limit of a tool process (RLIMIT_CPU)"
    )
    open_files: int = pydantic.Field(
        default=256, ge=16, description="open file limit of a tool process (RLIMIT_NOFILE)"
    )
    call_timeout_seconds: float = pydantic.Field(
        default=120.0, gt=0, description="wall-clock limit of one tool call; then it is killed"
    )
    egress_ports: tuple[int, ...] = pydantic.Field(
        default=(443,),
        description="TCP ports a tool process may connect to (Landlock); 53 too, for names",
    )
    hidden_paths: tuple[Path, ...] = pydantic.Field(
        default=(),
        description="more paths a tool process cannot see (the config file, the state directory, "
        "the key file, every path of these settings but the watched folders and /run are always "
        "hidden)",
    )
    strict: bool = pydantic.Field(
        default=True,
        description="refuse to run a tool when the host cannot apply every confinement layer "
        "(namespaces, Landlock, seccomp); false only for development hosts such as macOS",
    )
    lease_ttl_seconds: float = pydantic.Field(
        default=30.0, gt=0, le=60, description="how long a granted lease may wait to be redeemed"
    )

    @pydantic.field_validator("egress_ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for port in value:
            if not 0 < port < 65536:
                raise ValueError(f"{port} is not a TCP port")
        return value


class ModelSettings(_Section):
    api_key: pydantic.SecretStr | None = pydantic.Field(
        default=None, description="Anthropic API key (moves to the vault in a later issue)"
    )
    base_url: str | None = pydantic.Field(
        default=None, description="Messages API base URL; empty = Anthropic's"
    )
    timeout_seconds: float = pydantic.Field(default=120.0, gt=0, description="per-call timeout")
    max_retries: int = pydantic.Field(
        default=4, ge=0, description="retries of 429 (after retry-after), 529 and 5xx"
    )
    cache_ttl: Literal["5m", "1h"] = pydantic.Field(
        default="5m", description="prompt-cache lifetime of the stable prefix"
    )


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = pydantic.Field(
        default="INFO", description="log level"
    )
    format: Literal["json", "text"] = pydantic.Field(
        default="json", description="json lines (journald) or text for a terminal"
    )


class BackupSettings(_Section):
    dir: Path | None = pydantic.Field(
        default=None, description="where backups are written (default: <state_dir>/backups)"
    )
    keep: int = pydantic.Field(
        default=14, ge=1, description="backups kept; `backup create` deletes older ones"
    )


class _Trigger(_Section):
    """Something that starts tasks: of a workflow, or, with `agent` and `prompt`, of an agent
    (the workflow agent.run; its prompt a template filled from each event, appliance/triggers)."""

    _kind: ClassVar[triggers.Kind]
    workflow: str
    agent: str | None = pydantic.Field(
        default=None,
        pattern=_NAME,
        description="start this agent (the workflow agent.run) instead of a workflow",
    )
    prompt: str | None = pydantic.Field(
        default=None,
        min_length=1,
        description="the agent's prompt: a Jinja2 template filled from each event",
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _an_agent_runs_agent_run(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("agent") is not None and "workflow" not in data:
            return {**data, "workflow": triggers.AGENT_WORKFLOW}
        return data

    @pydantic.model_validator(mode="after")
    def _the_prompt_fits_the_events(self) -> Self:
        if self.agent is None:
            if self.prompt is not None:
                raise ValueError("a prompt is for an agent: set agent too, or drop prompt")
            return self
        if self.workflow != triggers.AGENT_WORKFLOW:
            raise ValueError("set either workflow or agent (which runs agent.run), not both")
        if self.prompt is None:
            raise ValueError(
                f"agent {self.agent!r} needs a prompt: a template filled from each event"
            )
        triggers.check(self.prompt, self._kind)
        return self


class Source(_Trigger):
    """One sender of webhooks to one tenant, at `/hooks/<tenant>/<name>`."""

    _kind: ClassVar[triggers.Kind] = "webhook"

    tenant: str = pydantic.Field(pattern=_NAME, description="the tenant its tasks belong to")
    name: str = pydantic.Field(pattern=_NAME, description="the last part of its URL path")
    scheme: Literal["standard", "github", "stripe"] = pydantic.Field(
        default="standard", description="how the sender signs (Standard Webhooks by default)"
    )
    secrets: tuple[pydantic.SecretStr, ...] = pydantic.Field(
        default=(),
        description="signing secrets in this file, several while one is rotated (doctor warns: "
        "prefer secret_ref)",
    )
    secret_ref: str | None = pydantic.Field(
        default=None,
        pattern=_WEBHOOK_REF,
        description="`webhook/<name>`: the signing secret is the vault's secret of this "
        "source's tenant, integration webhook, workflow *, read at start (one per line)",
    )
    workflow: str = pydantic.Field(min_length=1, description="the workflow a delivery starts")
    max_body_bytes: int = pydantic.Field(
        default=MEBIBYTE, ge=1, le=64 * MEBIBYTE, description="largest body accepted"
    )
    rate_limit_per_minute: int = pydantic.Field(
        default=600, ge=1, description="verified deliveries accepted per minute (per process)"
    )

    @pydantic.model_validator(mode="after")
    def _secrets_fit_the_scheme(self) -> Source:
        if bool(self.secrets) == (self.secret_ref is not None):
            raise ValueError("set either secrets or secret_ref (the vault), not both or neither")
        if self.secret_ref is not None:
            return self  # checked against the scheme when the daemon reads it from the vault
        try:
            self.verifier()
        except errors.ConfigError as exc:
            raise ValueError(exc.message) from None
        return self

    def verifier(self) -> signatures.Scheme:
        """The scheme's verifier over this source's secrets in the config file."""
        if self.secret_ref is not None:
            raise errors.ConfigError(
                f"ingress source {self.tenant}/{self.name} keeps its secret in the vault "
                f"({self.secret_ref}); read it from there"
            )
        return signatures.scheme(self.scheme, [s.get_secret_value() for s in self.secrets])


class IngressSettings(_Section):
    """The public webhook listener and its sources (`[ingress]` in the config file)."""

    enabled: bool = pydantic.Field(default=False, description="serve the public webhook port")
    host: str = pydantic.Field(
        default="0.0.0.0",  # noqa: S104 - the one public port, declared to the exposure gate
        description="address of the public webhook port",
    )
    port: int = pydantic.Field(default=8471, ge=0, le=65535, description="0 picks a free port")
    enqueue_timeout_seconds: float = pydantic.Field(
        default=10.0, gt=0, description="a delivery Postgres has not taken by then is 503"
    )
    max_connections: int = pydantic.Field(
        default=512,
        ge=1,
        description="connections open at once on the public port (lowered at start to fit the "
        "open-files limit); one more is answered 503 and closed",
    )
    max_connections_per_address: int = pydantic.Field(
        default=32, ge=1, description="the same, per source address (an IPv6 /64 counts as one)"
    )
    header_timeout_seconds: float = pydantic.Field(
        default=10.0,
        gt=0,
        description="a new connection's request line and headers must arrive within this, "
        "else 408 and closed",
    )
    body_timeout_seconds: float = pydantic.Field(
        default=30.0, gt=0, description="a body must arrive whole within this, else 408 and closed"
    )
    keepalive_timeout_seconds: float = pydantic.Field(
        default=15.0,
        gt=0,
        description="an idle kept-alive connection (or one whose next request's headers are "
        "not complete) is closed this long after the previous answer",
    )
    keepalive_requests: int = pydantic.Field(
        default=100, ge=1, description="requests served on one connection before it is closed"
    )
    body_budget_bytes: int = pydantic.Field(
        default=64 * MEBIBYTE,
        ge=1,
        description="bytes of request bodies in flight across all connections (unverified "
        "ones included); a body that does not fit is 503 with Retry-After",
    )
    sources: tuple[Source, ...] = pydantic.Field(
        default=(), description="the senders, each at /hooks/<tenant>/<name>"
    )

    @pydantic.model_validator(mode="after")
    def _sources_fit(self) -> IngressSettings:
        largest = max((source.max_body_bytes for source in self.sources), default=0)
        if largest > self.body_budget_bytes:
            raise ValueError(
                f"body_budget_bytes ({self.body_budget_bytes}) is smaller than the largest "
                f"max_body_bytes of a source ({largest}): such a body could never be accepted"
            )
        seen: set[tuple[str, str]] = set()
        for source in self.sources:
            key = (source.tenant, source.name)
            if key in seen:
                raise ValueError(f"source {source.name!r} of tenant {source.tenant!r} is twice")
            seen.add(key)
        return self


class Watch(_Trigger):
    """One watched folder: files matching `patterns` start `workflow` (or `agent`) for `tenant`."""

    _kind: ClassVar[triggers.Kind] = "file"

    path: Path = pydantic.Field(description="the folder to watch")
    patterns: tuple[str, ...] = pydantic.Field(
        default=("*",), description="fnmatch patterns of file paths relative to the folder"
    )
    workflow: str = pydantic.Field(description="the workflow each settled file starts")
    tenant: str = pydantic.Field(default="default", description="the tenant the tasks belong to")
    recursive: bool = pydantic.Field(default=True, description="watch sub-folders too")
    settle_seconds: float = pydantic.Field(
        default=1.0, gt=0, description="a file fires once it saw no change for this long"
    )
    attach_tokens: int = pydantic.Field(
        default=4000,
        ge=0,
        description="with agent: the file's text given to the prompt (`text`), cut at about "
        "this many tokens (4 characters each)",
    )


class SchedulerSettings(_Section):
    """How every node fires the schedules' slots (`[scheduler]`)."""

    poll_seconds: float = pydantic.Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often a node looks for due slots (and sees schedules a command changed)",
    )
    grace_seconds: float = pydantic.Field(
        default=60.0,
        gt=0,
        description="a slot fired later than this is late: catchup = 'skip' drops it",
    )


class Schedule(_Section):
    """One cron schedule (`[[schedules]]`): at each slot it starts `workflow` with `input`."""

    name: str = pydantic.Field(pattern=_NAME, description="unique within its tenant")
    tenant: str = pydantic.Field(
        default="default", pattern=_NAME, description="the tenant its tasks belong to"
    )
    cron: str = pydantic.Field(
        description="five fields (minute hour day-of-month month day-of-week) or @hourly, "
        "@daily, @weekly, @monthly, @yearly"
    )
    timezone: str = pydantic.Field(
        default="UTC",
        description="the IANA zone the fields are read in; DST as Debian cron handles it",
    )
    workflow: str = pydantic.Field(
        min_length=1, description="the workflow each slot starts (agent.run for an agent)"
    )
    input: dict[str, Any] = pydantic.Field(
        default_factory=dict, description="the task input (agent.run: agent, prompt)"
    )
    catchup: Literal["skip", "latest", "all"] = pydantic.Field(
        default="latest",
        description="slots missed while no node ran: none, the newest, or all up to catchup_limit",
    )
    catchup_limit: int = pydantic.Field(
        default=10, ge=1, le=100, description="most missed slots catchup = 'all' fires"
    )
    overlap: Literal["skip", "allow", "cancel-previous"] = pydantic.Field(
        default="skip",
        description="a slot whose previous task is still running: skip it, start anyway, or "
        "cancel the previous one",
    )

    @pydantic.model_validator(mode="after")
    def _fires(self) -> Schedule:
        try:
            cron.parse(self.cron, self.timezone)
        except errors.InputError as exc:
            raise ValueError(exc.message) from None
        try:
            json.dumps(self.input, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError("input must be JSON (no TOML dates or times)") from None
        if self.catchup == "all" and self.overlap != "allow":
            raise ValueError(
                f"catchup = 'all' starts every missed slot's task at once, so overlap = "
                f"{self.overlap!r} would stop all but one: set overlap = 'allow'"
            )
        return self


class Settings(_Section):
    mode: Literal["edge", "worker", "ingress"] = pydantic.Field(
        default="edge", description="deployment shape (DESIGN.md)"
    )
    state_dir: Path = pydantic.Field(
        default=Path("/var/lib/appliance"),
        description="the daemon's directory (the embedded Postgres cluster lives here)",
    )
    default_tenant: str = pydantic.Field(
        default="default", description="tenant used when a command names none"
    )
    database: DatabaseSettings = pydantic.Field(default_factory=DatabaseSettings)
    engine: EngineSettings = pydantic.Field(default_factory=EngineSettings)
    outbox: OutboxSettings = pydantic.Field(default_factory=OutboxSettings)
    health: HealthSettings = pydantic.Field(default_factory=HealthSettings)
    metrics: MetricsSettings = pydantic.Field(default_factory=MetricsSettings)
    model: ModelSettings = pydantic.Field(default_factory=ModelSettings)
    mesh: MeshSettings = pydantic.Field(default_factory=MeshSettings)
    vault: VaultSettings = pydantic.Field(default_factory=VaultSettings)
    isolation: IsolationSettings = pydantic.Field(default_factory=IsolationSettings)
    approvals: ApprovalSettings = pydantic.Field(default_factory=ApprovalSettings)
    console: ConsoleSettings = pydantic.Field(default_factory=ConsoleSettings)
    provisioning: ProvisioningSettings = pydantic.Field(default_factory=ProvisioningSettings)
    ingress: IngressSettings = pydantic.Field(default_factory=IngressSettings)
    backup: BackupSettings = pydantic.Field(default_factory=BackupSettings)
    watches: tuple[Watch, ...] = pydantic.Field(
        default=(), description="local folders whose new or changed files start tasks"
    )
    scheduler: SchedulerSettings = pydantic.Field(default_factory=SchedulerSettings)
    schedules: tuple[Schedule, ...] = pydantic.Field(
        default=(), description="cron schedules, written into Postgres at every start"
    )
    log: LogSettings = pydantic.Field(default_factory=LogSettings)

    @pydantic.model_validator(mode="after")
    def _worker_listens_privately(self) -> Settings:
        if self.mode == "worker" and self.health.host != TAILNET:
            problem = private_address_problem(self.health.host)
            if problem:
                raise ValueError(f"health.host of a worker: {problem}")
        return self

    @pydantic.model_validator(mode="after")
    def _schedules_once(self) -> Settings:
        seen: set[tuple[str, str]] = set()
        for schedule in self.schedules:
            key = (schedule.tenant, schedule.name)
            if key in seen:
                raise ValueError(
                    f"schedule {schedule.name!r} of tenant {schedule.tenant!r} is twice"
                )
            seen.add(key)
        return self

    @property
    def embedded(self) -> bool:
        """True when the daemon owns its Postgres cluster (no DSN, no socket dir)."""
        return self.database.url is None and self.database.socket_dir is None


def private_address_problem(host: str) -> str:
    """Why `host` is not one address of a private network (loopback, RFC 1918, unique local,
    link-local, the tailnet's), or "" when it is: a wildcard listens on every interface, a
    public one faces the internet."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return f"{host!r} is not an IP address (write the address, such as 10.0.1.5 or 127.0.0.1)"
    if address.is_unspecified:
        return f"{host} listens on every interface; give the one private address to listen on"
    if not (address.is_private or address in _SHARED_ADDRESS_SPACE):
        return f"{host} is not a private address; a worker's health listener stays inside its VPC"
    return ""


_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # the tailnet's (not is_private)


def config_path(explicit: Path | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The file to read and whether it was named (a named file must exist)."""
    if explicit is not None:
        return explicit, True
    if environ.get("APPLIANCE_CONFIG"):
        return Path(environ["APPLIANCE_CONFIG"]), True
    return DEFAULT_CONFIG_PATH, False


def load(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError naming file, key, reason.

    No error message carries a value of a secret field or of an unknown key (a misspelt
    `api_kye = "sk-..."` is a secret all the same), and none chains the parser's own error,
    whose text quotes the input.
    """
    env = os.environ if environ is None else environ
    path, named = config_path(explicit, env)
    data: dict[str, Any] = {}
    if path.exists():
        data = _read_file(path)
    elif named:
        raise errors.ConfigError(f"{path}: the config file does not exist")
    origins, not_json = _apply_env(data, env)
    try:
        return Settings.model_validate(data)
    except pydantic.ValidationError as exc:
        where = path if path.exists() else None
        raise errors.ConfigError(_describe(exc, data, where, origins, not_json)) from None


def _read_file(path: Path) -> dict[str, Any]:
    """The TOML document in `path`; errors give the position and the reason, never the text."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"{path}: not valid TOML {_toml_reason(str(exc))}") from None


# Parser messages whose quoted parts are the parser's own punctuation, not the input's.
_TOML_OWN_WORDS = (
    "Expected '=' after a key",
    "Expected ']' at the end",
    "Expected ']]' at the end",
    "Unescaped '\\' in a string",
)
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_TOML_POSITION = re.compile(
    r"^(?P<reason>.*) \((?P<where>at (?:line \d+, column \d+|end of document))\)$"
)


def _toml_reason(message: str) -> str:
    """`at line L, column C: reason`, with whatever the parser quoted from the input cut out."""
    found = _TOML_POSITION.match(message)
    reason, where = (found["reason"], found["where"] + ": ") if found else (message, "")
    if not reason.startswith(_TOML_OWN_WORDS):
        reason = _QUOTED.sub("(not shown)", reason)
    return f"{where}{reason}"


def _apply_env(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Fold APPLIANCE_* overrides into data.

    Returns {dotted key: env var} and {dotted key: why its JSON does not parse}, for messages.
    """
    origins: dict[str, str] = {}
    not_json: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "APPLIANCE_CONFIG":
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        target = data
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise errors.ConfigError(
                    f"environment variable {name}: {_key_name(part)} is not a section"
                )
            target = child
        dotted = ".".join(parts)
        target[parts[-1]], problem = _env_value(raw)
        origins[dotted] = name
        if problem:
            not_json[dotted] = problem
    return origins, not_json


def _env_value(raw: str) -> tuple[Any, str]:
    """(value, why it is not JSON). Lists and tables are JSON; scalars stay strings for pydantic
    to convert by field type (so a numeric-looking node name stays text); a value that looks
    like JSON but does not parse stays text too, and the reason is kept for the message."""
    if raw.lstrip().startswith(("[", "{")):
        try:
            return json.loads(raw), ""
        except json.JSONDecodeError as exc:
            return raw, f"not valid JSON at column {exc.colno}: {exc.msg}"
        except ValueError:
            return raw, "not valid JSON"
    return raw, ""


def _describe(
    exc: pydantic.ValidationError,
    data: Mapping[str, Any],
    path: Path | None,
    origins: Mapping[str, str],
    not_json: Mapping[str, str],
) -> str:
    """One line per error: where (file or variable), the key, the reason; no secret in any."""
    hidden = _hidden_values(data, Settings)
    lines = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        dotted = ".".join(str(p) for p in err["loc"])
        key = ".".join(_key_name(str(p)) for p in err["loc"]) or "(top level)"
        where = _where(dotted, path, origins)
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        else:
            reason = _withheld(err["msg"].removeprefix("Value error, "), hidden)
        if dotted in not_json:
            reason = f"{reason} ({not_json[dotted]})"
        lines.append(f"{where}: {key}: {reason}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _where(dotted: str, path: Path | None, origins: Mapping[str, str]) -> str:
    """The variables that set the key, a section around it or keys within it; else the file."""
    names = sorted(
        name
        for key, name in origins.items()
        if key == dotted or dotted.startswith(f"{key}.") or key.startswith(f"{dotted}.")
    )
    if len(names) == 1:
        return f"environment variable {names[0]}"
    if names:
        return f"environment variables {', '.join(names)}"
    return f"{path}" if path else "defaults"


# A key as people write them: a lower-case word of at most 32 characters with few digits.
# Anything else in a key's place (a token pasted as a key) is not shown.
_PLAIN_KEY = re.compile(r"[A-Za-z_][a-z0-9_.-]{0,31}|[0-9]{1,4}")
_MOST_DIGITS = 3
_WINDOW = 8  # a reason sharing this many characters in a row with a secret is withheld


def _key_name(part: str) -> str:
    """A key as written, unless it does not look like a key (a value pasted in its place)."""
    if _PLAIN_KEY.fullmatch(part) and (
        part.isdigit() or sum(map(str.isdigit, part)) <= _MOST_DIGITS
    ):
        return part
    return f"(a key of {len(part)} characters, not shown)"


def _withheld(reason: str, hidden: set[str]) -> str:
    """The reason, unless it carries a hidden value or a piece of one."""
    for value in hidden:
        width = min(len(value), _WINDOW)
        if any(value[i : i + width] in reason for i in range(len(value) - width + 1)):
            return "not valid (the reason would show a secret value, so it is not shown)"
    return reason


def _hidden_values(value: Any, model: type[pydantic.BaseModel] | None) -> set[str]:
    """Every scalar (as text, 4 characters or more) given to a secret field or an unknown key,
    or in place of a section that holds secrets."""
    if model is None:
        return {text for text in _scalars(value) if len(text) >= 4}
    if isinstance(value, list | tuple):
        return set().union(*(_hidden_values(item, model) for item in value))
    if not isinstance(value, Mapping):
        return _hidden_values(value, None) if _holds_secrets(model) else set()
    found: set[str] = set()
    for key, item in value.items():
        field = model.model_fields.get(str(key))
        if field is None or _is_secret(field.annotation):
            found |= _hidden_values(item, None)
        elif (section := _section_of(field.annotation)) is not None:
            found |= _hidden_values(item, section)
    return found


def _scalars(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in _scalars(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _scalars(item)]
    return [str(value)]


def _type_arguments(annotation: Any) -> list[Any]:
    """The annotation and every type nested in it (unions, tuples, lists, dicts)."""
    found = [annotation]
    for argument in typing.get_args(annotation):
        found.extend(_type_arguments(argument))
    return found


def _is_secret(annotation: Any) -> bool:
    return any(t is pydantic.SecretStr for t in _type_arguments(annotation))


def _section_of(annotation: Any) -> type[pydantic.BaseModel] | None:
    for candidate in _type_arguments(annotation):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            return candidate
    return None


def _holds_secrets(model: type[pydantic.BaseModel]) -> bool:
    for field in model.model_fields.values():
        section = _section_of(field.annotation)
        if _is_secret(field.annotation) or (section is not None and _holds_secrets(section)):
            return True
    return False


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by '**********'."""
    return settings.model_dump(mode="json")


def template() -> str:
    """A config file with every key, commented out at its default, described."""
    lines = ["# appliance configuration; every key shows its default. See `appliance config show`."]
    sections: list[tuple[str, type[pydantic.BaseModel]]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            sections.append((name, annotation))
            continue
        lines.extend(_template_field(name, field))
    for name, model in sections:
        lines.extend(["", f"[{name}]"])
        for key, field in model.model_fields.items():
            lines.extend(_template_field(key, field))
    return "\n".join(lines) + "\n"


def _template_field(name: str, field: Any) -> list[str]:
    default = field.get_default(call_default_factory=True)
    rendered = "" if default is None else _toml(default)
    return [f"# {field.description}", f"# {name} = {rendered}".rstrip()]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))
