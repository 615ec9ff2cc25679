"""The `tailscale` CLI, wrapped: status, addresses, the first-run join, waiting, whois.

Each call runs the CLI as a subprocess (an argument list, never a shell) under a timeout; a CLI
still running at its deadline is killed with its whole process group. Outcomes are decided by
exit code and parsed JSON, never by the text of a message: that text differs by platform, build
and sandbox (edge.md 1.8). Where the CLI answers several failures with the same exit code 1,
`status --json` is asked afterwards to tell "tailscaled is down" from the rest.

The auth key never appears in an argument list: `up` gets `--auth-key=file:<path>` (edge.md
1.4), so `ps`, logs and the errors below show only the path. A key held elsewhere (the vault)
goes through `auth_key_file`: a private temporary file that is deleted as soon as `up` is done.

`up` runs once, on the first join; later changes go through `set`, because `up` with different
flags on a configured node fails (edge.md T6). `join` picks between them from the current state.

The errors, each also an `errors` class for its exit code and HTTP status:

    TailscaleError                          the CLI failed; .command, .returncode, .stderr
    ├── TailscaleUnavailableError     69    tailscaled is not running, or the CLI is missing
    ├── TailscaleCommandError         69    the CLI failed for another reason
    ├── TailscaleTimeoutError         69    the CLI, or the wait for Running, ran out of time
    ├── TailscaleStateError            1    the node's state does not allow what was asked
    └── PeerNotFoundError              1    whois: no node has that address
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

from appliance import errors

logger = logging.getLogger(__name__)

IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# BackendState values (tailscale ipn/backend.go).
NO_STATE = "NoState"
NEEDS_LOGIN = "NeedsLogin"
NEEDS_MACHINE_AUTH = "NeedsMachineAuth"
STOPPED = "Stopped"
STARTING = "Starting"
RUNNING = "Running"

JOIN_WITH_UP = frozenset({NEEDS_LOGIN, NEEDS_MACHINE_AUTH, STOPPED})
JOIN_WITH_SET = frozenset({RUNNING, STARTING})

CLI_GRACE_SECONDS = 5.0  # beyond a CLI's own --timeout, so the CLI reports its timeout itself
POLL_SECONDS = 0.25  # status polling when the CLI predates `tailscale wait`
STDERR_TAIL_LINES = 12
STDERR_TAIL_CHARS = 2000
TAGGED_DEVICES = "tagged-devices"  # UserProfile.LoginName of every tagged node (edge.md 1.5)
_SECRET = re.compile(r"tskey-[A-Za-z0-9-]+")


class TailscaleError(errors.ApplianceError):
    """The tailscale CLI failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        self.command = tuple(_redact(command))
        self.returncode = returncode
        self.stderr = _tail(stderr)
        text = (message or (type(self).__doc__ or "").strip()).strip()
        if self.command:
            exit_note = "" if returncode is None else f" (exit {returncode})"
            text += f"\ncommand: {shlex.join(self.command)}{exit_note}"
        if self.stderr:
            text += "\nstderr:\n" + self.stderr
        super().__init__(text)


class TailscaleUnavailableError(TailscaleError, errors.DependencyError):
    """tailscaled is not running, or the tailscale CLI is not installed."""


class TailscaleCommandError(TailscaleError, errors.DependencyError):
    """The tailscale CLI failed."""


class TailscaleTimeoutError(TailscaleError, errors.DependencyError):
    """Tailscale did not answer, or did not come up, in time."""


class TailscaleStateError(TailscaleError, errors.StateError):
    """The node's Tailscale state does not allow that."""


class PeerNotFoundError(TailscaleError, errors.NotFoundError):
    """No tailnet node has that address."""


_E = TypeVar("_E", bound=TailscaleError)


@dataclasses.dataclass(frozen=True)
class Status:
    """This node as `tailscale status --json --peers=false` describes it."""

    backend_state: str
    ips: tuple[IP, ...]  # IPv4 first, then IPv6, each in the CLI's order
    dns_name: str  # MagicDNS name without its trailing dot; '' before login
    hostname: str
    online: bool
    tags: tuple[str, ...]
    health: tuple[str, ...]
    auth_url: str
    version: str = ""

    @property
    def ipv4(self) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(ip for ip in self.ips if isinstance(ip, ipaddress.IPv4Address))

    @property
    def ipv6(self) -> tuple[ipaddress.IPv6Address, ...]:
        return tuple(ip for ip in self.ips if isinstance(ip, ipaddress.IPv6Address))

    @property
    def running(self) -> bool:
        return self.backend_state == RUNNING

    @property
    def ready(self) -> bool:
        """Running with an address: what `tailscale wait` waits for (edge.md 1.7)."""
        return self.running and bool(self.ips)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Status:
        """Read the fields we use: unknown keys ignored, lists may be null, newer keys absent."""
        own = document.get("Self")
        own = own if isinstance(own, Mapping) else {}
        addresses = _strings(document.get("TailscaleIPs")) or _strings(own.get("TailscaleIPs"))
        return cls(
            backend_state=_string(document.get("BackendState")),
            ips=_addresses(addresses),
            dns_name=_string(own.get("DNSName")).removesuffix("."),
            hostname=_string(own.get("HostName")),
            online=own.get("Online") is True,
            tags=_strings(own.get("Tags")),
            health=_strings(document.get("Health")),
            auth_url=_string(document.get("AuthURL")),
            version=_string(document.get("Version")),
        )


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who is behind a tailnet address: a person, or a tagged device (then `tags` says what)."""

    login_name: str | None  # None for a tagged device, whose profile is a placeholder
    tags: tuple[str, ...]
    node_name: str  # the node's MagicDNS name without its trailing dot
    display_name: str = ""
    # The peer's app capabilities (`CapMap`): capability name -> the grants' JSON values.
    capabilities: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)

    @property
    def tagged(self) -> bool:
        return bool(self.tags)

    @property
    def principal(self) -> str:
        """The login name, or the node's tags joined by commas for a tagged device."""
        return ",".join(self.tags) if self.tags else self.login_name or ""

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Identity:
        """Read a `WhoIsResponse`; tagged nodes are known by `Node.Tags` (edge.md 1.5)."""
        node = document.get("Node")
        node = node if isinstance(node, Mapping) else {}
        profile = document.get("UserProfile")
        profile = profile if isinstance(profile, Mapping) else {}
        tags = _strings(node.get("Tags"))
        login = _string(profile.get("LoginName"))
        capabilities = document.get("CapMap")
        return cls(
            login_name=None if tags or login in ("", TAGGED_DEVICES) else login,
            tags=tags,
            node_name=_string(node.get("Name")).removesuffix("."),
            display_name=_string(profile.get("DisplayName")),
            capabilities={
                str(name): tuple(values) if isinstance(values, list) else ()
                for name, values in (capabilities or {}).items()
            }
            if isinstance(capabilities, Mapping)
            else {},
        )


@dataclasses.dataclass(frozen=True)
class _Result:
    command: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Tailscale:
    """The tailscale CLI at `binary`, talking to tailscaled over `socket` (its default if None)."""

    def __init__(
        self, binary: str = "tailscale", *, timeout: float = 10.0, socket: str | None = None
    ) -> None:
        if timeout <= 0:
            raise errors.ConfigError("the tailscale command timeout must be positive")
        self.binary = binary
        self.timeout = timeout
        self.socket = socket
        self._has_wait: bool | None = None

    async def status(self) -> Status:
        """This node's state; TailscaleUnavailableError when tailscaled is not running."""
        result = await self._run("status", "--json", "--peers=false")
        if result.returncode == 1:
            # `status --json` prints its JSON and exits 0 in every backend state (edge.md 1.2),
            # so exit 1 means the CLI could not reach tailscaled's LocalAPI.
            raise self._unavailable(result)
        if result.returncode != 0:
            raise _error(TailscaleCommandError, "`tailscale status` failed", result)
        try:
            document = json.loads(result.stdout)
        except ValueError as exc:
            raise _error(
                TailscaleCommandError, "`tailscale status --json` printed no JSON", result
            ) from exc
        if not isinstance(document, dict) or not isinstance(document.get("BackendState"), str):
            raise _error(
                TailscaleCommandError, "`tailscale status --json` printed no BackendState", result
            )
        return Status.from_json(document)

    async def ips(self, family: Literal[4, 6] | None = None) -> list[IP]:
        """This node's tailnet addresses of one family (both if None); [] when it has none."""
        flags = {None: (), 4: ("-4",), 6: ("-6",)}[family]
        result = await self._run("ip", *flags)
        if result.returncode == 0:
            try:
                return [ipaddress.ip_address(line) for line in result.stdout.split()]
            except ValueError as exc:
                raise _error(
                    TailscaleCommandError, "`tailscale ip` printed no address", result
                ) from exc
        if result.returncode != 1:
            raise _error(TailscaleCommandError, "`tailscale ip` failed", result)
        # Exit 1 is both "no address (of that family)" and "tailscaled is down" (edge.md 1.3,
        # 1.8); status tells them apart, and raises TailscaleUnavailableError for the latter.
        status = await self.status()
        return [ip for ip in status.ips if family is None or ip.version == family]

    async def up(
        self,
        *,
        auth_key_file: Path | str,
        hostname: str,
        advertise_tags: Sequence[str],
        accept_dns: bool = False,
        timeout: float = 60,
    ) -> Status:
        """First join only (use `join`): log in with the key read from `auth_key_file`."""
        key_path = Path(auth_key_file).absolute()
        if not key_path.is_file():
            raise errors.ConfigError(f"the Tailscale auth key file {key_path} does not exist")
        if timeout <= 0:
            raise errors.ConfigError("the `tailscale up` timeout must be positive")
        result = await self._run(
            "up",
            f"--auth-key=file:{key_path}",
            f"--hostname={hostname}",
            f"--advertise-tags={_tag_list(advertise_tags)}",
            f"--accept-dns={'true' if accept_dns else 'false'}",
            f"--timeout={_duration(timeout)}",
            "--json",
            timeout=timeout + CLI_GRACE_SECONDS,
        )
        if result.returncode == 0:
            return await self.status()
        status = await self.status()  # TailscaleUnavailableError if tailscaled is down
        if result.returncode == 1 and status.backend_state == NEEDS_MACHINE_AUTH:
            raise _error(
                TailscaleStateError,
                "this machine has joined the tailnet but waits for a tailnet admin to approve it",
                result,
            )
        raise _error(
            TailscaleCommandError, f"`tailscale up` failed (state {status.backend_state})", result
        )

    async def set(self, *, hostname: str, advertise_tags: Sequence[str]) -> Status:
        """Change the hostname and advertised tags of a node that has joined already."""
        result = await self._run(
            "set", f"--hostname={hostname}", f"--advertise-tags={_tag_list(advertise_tags)}"
        )
        if result.returncode == 0:
            return await self.status()
        status = await self.status()  # TailscaleUnavailableError if tailscaled is down
        raise _error(
            TailscaleCommandError, f"`tailscale set` failed (state {status.backend_state})", result
        )

    async def join(
        self,
        *,
        auth_key_file: Path | str,
        hostname: str,
        advertise_tags: Sequence[str],
        accept_dns: bool = False,
        timeout: float = 60,
    ) -> Status:
        """Bring this node onto the tailnet as wanted: `up` the first time, `set` afterwards."""
        tags = _check_tags(advertise_tags)
        status = await self.status()
        state = status.backend_state
        if state in JOIN_WITH_UP:
            logger.info(
                "joining the tailnet as %s",
                hostname,
                extra={"event": "tailscale.up", "state": state, "hostname": hostname, "tags": tags},
            )
            return await self.up(
                auth_key_file=auth_key_file,
                hostname=hostname,
                advertise_tags=tags,
                accept_dns=accept_dns,
                timeout=timeout,
            )
        if state in JOIN_WITH_SET:
            if status.hostname == hostname and sorted(status.tags) == sorted(tags):
                return status
            logger.info(
                "changing the tailnet hostname or tags to %s %s",
                hostname,
                ",".join(tags),
                extra={
                    "event": "tailscale.set",
                    "state": state,
                    "hostname": hostname,
                    "tags": tags,
                },
            )
            return await self.set(hostname=hostname, advertise_tags=tags)
        raise TailscaleStateError(
            f"cannot join the tailnet while tailscaled is in state {state}; "
            "check it with `tailscale status`"
        )

    async def wait(self, timeout: float) -> Status:
        """Wait until tailscaled is Running with an address; TailscaleTimeoutError at `timeout`."""
        if timeout <= 0:
            raise errors.ConfigError("the wait timeout must be positive")
        if not await self._wait_command_exists():
            return await self._poll_until_ready(timeout)
        result = await self._run(
            "wait", f"--timeout={_duration(timeout)}", timeout=timeout + CLI_GRACE_SECONDS
        )
        status = await self.status()  # TailscaleUnavailableError if tailscaled is (still) down
        if result.returncode == 0:
            return status
        raise _error(
            TailscaleTimeoutError,
            f"Tailscale did not come up within {timeout:g} s (state {status.backend_state})",
            result,
        )

    async def whois(self, ip: str, port: int) -> Identity:
        """Who is behind tailnet address `ip`:`port`; PeerNotFoundError if no node has it."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError as exc:
            raise errors.InputError(f"not an IP address: {ip!r}") from exc
        if not 0 <= port <= 65535:
            raise errors.InputError(f"not a port number: {port}")
        target = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        result = await self._run("whois", "--json", target)
        if result.returncode == 0:
            try:
                document = json.loads(result.stdout)
            except ValueError as exc:
                raise _error(
                    TailscaleCommandError, "`tailscale whois --json` printed no JSON", result
                ) from exc
            if not isinstance(document, dict):
                raise _error(
                    TailscaleCommandError, "`tailscale whois --json` printed no object", result
                )
            return Identity.from_json(document)
        if result.returncode != 1:
            raise _error(TailscaleCommandError, "`tailscale whois` failed", result)
        await self.status()  # TailscaleUnavailableError if tailscaled is down
        # Exit 1 with tailscaled up: whois is a read-level call whose only other failure is the
        # LocalAPI's 404 "peer not found" (edge.md 1.5); the CLI gives no signal but its text.
        raise _error(PeerNotFoundError, f"no tailnet node has the address {target}", result)

    async def _wait_command_exists(self) -> bool:
        """Whether this CLI has `wait` (v1.96+): `wait --help` exits 0 where it does.

        An older CLI answers `tailscale: unknown subcommand: wait` with exit 1, the same code as a
        timed-out wait, so the probe asks for the command's help instead.
        """
        if self._has_wait is None:
            result = await self._run("wait", "--help")
            self._has_wait = result.returncode == 0
        return self._has_wait

    async def _poll_until_ready(self, timeout: float) -> Status:
        """`tailscale wait` for older CLIs: poll status until Running with an address."""
        last: Status | None = None
        down: TailscaleUnavailableError | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        last = await self.status()
                    except TailscaleUnavailableError as exc:
                        down = exc
                    else:
                        down = None
                        if last.ready:
                            return last
                    await asyncio.sleep(POLL_SECONDS)
        except TimeoutError:
            if down is not None:
                raise TailscaleTimeoutError(
                    f"Tailscale did not come up within {timeout:g} s: {down.message}"
                ) from None
            state = "unknown" if last is None else last.backend_state
            raise TailscaleTimeoutError(
                f"Tailscale did not come up within {timeout:g} s (state {state})"
            ) from None

    async def _run(self, *args: str, timeout: float | None = None) -> _Result:
        """Run the CLI with `args`, output captured; killed with its group at the deadline."""
        command = [self.binary, *self._global_flags(), *args]
        limit = self.timeout if timeout is None else timeout
        logger.debug(
            "running %s",
            shlex.join(_redact(command)),
            extra={"event": "tailscale.command", "command": _redact(command)},
        )
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as a whole on timeout
            )
        except OSError as exc:
            raise TailscaleUnavailableError(
                f"cannot run the tailscale CLI {self.binary!r} ({exc.strerror or exc}); "
                "install Tailscale (https://tailscale.com/download) or set its path",
                command=command,
            ) from exc
        try:
            async with asyncio.timeout(limit):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            raise TailscaleTimeoutError(
                f"the tailscale CLI did not answer within {limit:g} s and was killed",
                command=command,
            ) from None
        finally:
            if process.returncode is None:
                _kill_group(process)
                await process.wait()
        returncode = await process.wait()  # at once: communicate() waited for the exit
        return _Result(
            tuple(command),
            returncode,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )

    def _global_flags(self) -> list[str]:
        return [] if self.socket is None else [f"--socket={self.socket}"]

    def _unavailable(self, result: _Result) -> TailscaleUnavailableError:
        socket = self.socket or _default_socket()
        return _error(
            TailscaleUnavailableError,
            f"tailscaled is not running or cannot be reached at {socket}; start it "
            "(Linux: `sudo systemctl enable --now tailscaled`; "
            "macOS: `sudo tailscaled install-system-daemon`)",
            result,
        )


@contextlib.contextmanager
def auth_key_file(key: bytes) -> Iterator[Path]:
    """`key` in a new temporary file of mode 0600 for `join`, deleted when the block ends."""
    fd, name = tempfile.mkstemp(prefix="appliance-tskey-")  # O_EXCL, mode 0600
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _error(cls: type[_E], message: str, result: _Result) -> _E:
    return cls(message, command=result.command, returncode=result.returncode, stderr=result.stderr)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def _default_socket() -> str:
    if sys.platform == "darwin":
        return "/var/run/tailscaled.socket"
    return "/var/run/tailscale/tailscaled.sock"


def _check_tags(tags: Iterable[str]) -> list[str]:
    """The tags, each `tag:<name>` (the prefix is optional only since v1.98: edge.md 1.4)."""
    checked = list(tags)
    for tag in checked:
        name = tag.removeprefix("tag:")
        if not tag.startswith("tag:") or not name or "," in name:
            raise errors.ConfigError(f"a Tailscale tag must look like tag:<name>, not {tag!r}")
    return checked


def _tag_list(tags: Iterable[str]) -> str:
    return ",".join(_check_tags(tags))


def _duration(seconds: float) -> str:
    """A Go duration (`time.ParseDuration`) of at least one millisecond."""
    return f"{max(1, round(seconds * 1000))}ms"


def _redact(command: Iterable[str]) -> list[str]:
    """The command with any inline auth key hidden (ours only ever passes `file:<path>`)."""
    redacted = []
    for arg in command:
        flag, equals, value = arg.partition("=")
        if equals and flag.lstrip("-") in ("auth-key", "authkey") and not value.startswith("file:"):
            redacted.append(f"{flag}=<redacted>")
        else:
            redacted.append(_SECRET.sub("tskey-<redacted>", arg))
    return redacted


def _tail(text: str) -> str:
    lines = _SECRET.sub("tskey-<redacted>", text).strip().splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)[-STDERR_TAIL_CHARS:]


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: object) -> tuple[str, ...]:
    """A JSON list of strings; null, absent or anything else reads as empty."""
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _addresses(values: Iterable[str]) -> tuple[IP, ...]:
    parsed: list[IP] = []
    for value in values:
        with contextlib.suppress(ValueError):  # a prefix or garbage is not an address of ours
            parsed.append(ipaddress.ip_address(value))
    return tuple(sorted(parsed, key=lambda ip: ip.version))  # stable: the CLI's order per family
