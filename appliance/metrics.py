"""Prometheus metrics at `/metrics`, named by Prometheus conventions (base units, `_total`).

Two sources, one page:

- **The database**, read at scrape time in one statement (`db/metrics.py`): tasks by tenant,
  workflow and state; task durations (first claim to end) as a histogram; queue depth and
  oldest age per tenant and workflow; claims, lease takeovers and crash recoveries; the
  outbox backlog; model calls, tokens by category, cost and cache saving; monthly budgets and
  what is left; approvals waiting. These are the same in every process that serves them
  (sum them with `max without (instance)`). The query gets `metrics.query_timeout_seconds`;
  concurrent scrapes share one query. When Postgres does not answer, the page still answers
  200 with `appliance_postgres_up 0` and these families left out.
- **This process**, instruments the code updates as things happen: step durations (the
  worker), webhook requests by HTTP status (the public port), exposure violations (the
  recheck), plus the client library's `process_*` and `python_*` collectors. They start at
  zero with the process, as Prometheus counters do.

Who may read: loopback always; a tailnet peer when its node's MagicDNS name or one of its tags
is in `metrics.readers` (resolved with `tailscale whois`, kept `metrics.whois_cache_seconds`).
Anyone else gets 403 naming who they are and the setting; 503 when tailscaled cannot say.
`routes(exporter)` adds `/metrics` (and nothing else) to an app; its rule covers only it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

import prometheus_client
from aiohttp import hdrs, web
from prometheus_client import exposition
from prometheus_client import metrics_core as core

from appliance import errors, settings
from appliance.db import metrics as dbmetrics
from appliance.db import pool as dbpool
from appliance.mesh import peers, tailscale

log = logging.getLogger(__name__)

# No `_created` series beside each counter and histogram: nothing here reads them. (The
# client's own function, untyped.)
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = prometheus_client.CollectorRegistry()
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)
prometheus_client.GCCollector(registry=REGISTRY)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TASK_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

STEP_DURATION = prometheus_client.Histogram(
    "appliance_step_duration_seconds",
    "Time a step ran, observed by this process's worker when its checkpoint is written.",
    ["workflow"],
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_REQUESTS = prometheus_client.Counter(
    "appliance_webhook_requests",
    "Requests this process's public webhook port answered, by HTTP status code.",
    ["code"],
    registry=REGISTRY,
)
EXPOSURE_VIOLATIONS = prometheus_client.Counter(
    "appliance_exposure_violations",
    "Listening sockets found facing outside the tailnet by this process's recheck, counted "
    "when each appears; holder: daemon (its own, its children's) or other.",
    ["holder"],
    registry=REGISTRY,
)
EXPOSED_SOCKETS = prometheus_client.Gauge(
    "appliance_exposure_violating_sockets",
    "Listening sockets facing outside the tailnet at this process's last recheck, by holder.",
    ["holder"],
    registry=REGISTRY,
)
BUILD = prometheus_client.Info("appliance_build", "The appliance's version.", registry=REGISTRY)
BUILD.info({"version": importlib.metadata.version("appliance")})

TOKEN_CATEGORIES = ("input", "cache_write", "cache_read", "output")


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """One scrape's look at the database: the snapshot (None: Postgres did not answer) and how
    long the query took."""

    snapshot: dbmetrics.Snapshot | None
    seconds: float


class Exporter:
    """Serves `/metrics`: the database's families read at scrape time, and this process's.

    The pool can come after the listener (`reading`): until then the page says
    `appliance_postgres_up 0`."""

    def __init__(
        self,
        config: settings.MetricsSettings,
        *,
        mesh: tailscale.Tailscale | None,
        pool: dbpool.Pool | None = None,
    ) -> None:
        self.pool = pool
        self._timeout = config.query_timeout_seconds
        self._readers = Readers(config, mesh)
        self._current: asyncio.Future[Reading] | None = None
        self._down = False

    @contextlib.asynccontextmanager
    async def reading(self, pool: dbpool.Pool) -> AsyncIterator[Exporter]:
        """Read from `pool` for as long as the block runs."""
        self.pool = pool
        try:
            yield self
        finally:
            self.pool = None

    async def read(self) -> Reading:
        """The database's part of a scrape; concurrent scrapes share one query."""
        if self._current is None:
            self._current = asyncio.ensure_future(self._read())
            self._current.add_done_callback(self._read_done)
        return await asyncio.shield(self._current)

    def _read_done(self, _: asyncio.Future[Reading]) -> None:
        self._current = None

    async def _read(self) -> Reading:
        started = time.perf_counter()
        snapshot: dbmetrics.Snapshot | None = None
        reason = "no database yet"
        if self.pool is not None:
            try:
                snapshot = await dbmetrics.read_metrics(
                    self.pool, duration_bounds=TASK_BUCKETS, timeout=self._timeout
                )
            except errors.ApplianceError as exc:
                reason = exc.message
        self._log_change(snapshot is None, reason)
        return Reading(snapshot, time.perf_counter() - started)

    def _log_change(self, down: bool, reason: str) -> None:
        if down and not self._down:
            log.warning(
                "metrics: the database's series are left out: %s",
                reason,
                extra={"event": "metrics.database_unavailable"},
            )
        elif self._down and not down:
            log.info("metrics: the database answers again", extra={"event": "metrics.database"})
        self._down = down

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /metrics: the exposition, for a reader; 403 or 503 for anyone else."""
        refusal = await self._readers.refusal(request)
        if refusal is not None:
            return refusal
        reading = await self.read()
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        encoder, content_type = exposition.choose_encoder(accept)
        body = encoder(_Scrape(reading))
        response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()
        return response


def routes(exporter: Exporter) -> list[web.RouteDef]:
    """`/metrics`, to add to the listener's app."""
    return [web.get("/metrics", exporter.handle, allow_head=False)]


class _Scrape:
    """One scrape's families: the database's, then this process's registry."""

    def __init__(self, reading: Reading) -> None:
        self._reading = reading

    def collect(self) -> Iterable[core.Metric]:
        yield from database_families(self._reading)
        yield from REGISTRY.collect()


def database_families(reading: Reading) -> Iterator[core.Metric]:
    """The families read from the database (only `appliance_postgres_up` when it is away)."""
    snapshot = reading.snapshot
    yield core.GaugeMetricFamily(
        "appliance_postgres_up",
        "1 when Postgres answered this scrape's query in time, else 0.",
        value=0 if snapshot is None else 1,
    )
    if snapshot is None:
        return
    yield core.GaugeMetricFamily(
        "appliance_metrics_query_seconds",
        "Time the database query of this scrape took.",
        value=reading.seconds,
    )
    yield from _task_families(snapshot.tasks)
    yield from _queue_families(snapshot.queue)
    yield from _attempt_families(snapshot.attempts)
    yield from _outbox_families(snapshot.outbox)
    yield from _model_families(snapshot.calls)
    yield from _budget_families(snapshot.budgets)
    yield from _approval_families(snapshot.approvals)
    yield from _webhook_families(snapshot.webhooks)


def _task_families(rows: Sequence[dbmetrics.TaskCount]) -> Iterator[core.Metric]:
    tasks = core.GaugeMetricFamily(
        "appliance_tasks",
        "Tasks by tenant, workflow and state (queued, running, waiting, succeeded, failed, "
        "cancelled).",
        labels=["tenant", "workflow", "state"],
    )
    counts: dict[tuple[str, str, str], int] = {}
    buckets: dict[tuple[str, str], list[int]] = {}
    sums: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row.tenant_id, row.workflow, row.state)
        counts[key] = counts.get(key, 0) + row.tasks
        if row.bucket is not None:
            by = (row.workflow, row.state)
            buckets.setdefault(by, [0] * (len(TASK_BUCKETS) + 1))[row.bucket] += row.tasks
            sums[by] = sums.get(by, 0.0) + row.seconds
    for key, count in sorted(counts.items()):
        tasks.add_metric(list(key), count)
    yield tasks
    durations = core.HistogramMetricFamily(
        "appliance_task_duration_seconds",
        "Time from a task's first claim to its end, of the tasks that ended (succeeded, "
        "failed, cancelled) after a claim, by workflow and state.",
        labels=["workflow", "state"],
    )
    for by, counted in sorted(buckets.items()):
        durations.add_metric(list(by), _cumulative(TASK_BUCKETS, counted), sum_value=sums[by])
    yield durations


def _cumulative(bounds: Sequence[float], counted: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets from per-bucket counts (`counted[i]`: values above i bounds)."""
    total = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, float("inf")), counted, strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return buckets


def _queue_families(rows: Sequence[dbmetrics.QueueDepth]) -> Iterator[core.Metric]:
    depth = core.GaugeMetricFamily(
        "appliance_queue_depth",
        "Tasks ready to run now (queued, not delayed), by tenant and workflow.",
        labels=["tenant", "workflow"],
    )
    oldest = core.GaugeMetricFamily(
        "appliance_queue_oldest_age_seconds",
        "How long the longest-waiting ready task has been ready, by tenant and workflow.",
        labels=["tenant", "workflow"],
    )
    for row in rows:
        depth.add_metric([row.tenant_id, row.workflow], row.tasks)
        oldest.add_metric([row.tenant_id, row.workflow], row.oldest_seconds)
    yield depth
    yield oldest


def _attempt_families(rows: Sequence[dbmetrics.AttemptCounts]) -> Iterator[core.Metric]:
    claims = core.CounterMetricFamily(
        "appliance_task_claims",
        "Claims of tasks by workers (each starts an attempt), by tenant.",
        labels=["tenant"],
    )
    takeovers = core.CounterMetricFamily(
        "appliance_lease_takeovers",
        "Attempts whose lease expired with nobody renewing it, the task taken over by another "
        "worker, by tenant.",
        labels=["tenant"],
    )
    recoveries = core.CounterMetricFamily(
        "appliance_crash_recoveries",
        "Attempts a node took back at its restart after a crash, by tenant.",
        labels=["tenant"],
    )
    for row in rows:
        claims.add_metric([row.tenant_id], row.claims)
        takeovers.add_metric([row.tenant_id], row.takeovers)
        recoveries.add_metric([row.tenant_id], row.recoveries)
    yield claims
    yield takeovers
    yield recoveries


def _outbox_families(backlog: dbmetrics.OutboxBacklog) -> Iterator[core.Metric]:
    yield core.GaugeMetricFamily(
        "appliance_outbox_backlog_events",
        "Outbox events not delivered yet.",
        value=backlog.pending,
    )
    yield core.GaugeMetricFamily(
        "appliance_outbox_failing_events",
        "Outbox events not delivered yet whose delivery failed at least once.",
        value=backlog.failing,
    )
    yield core.GaugeMetricFamily(
        "appliance_outbox_oldest_age_seconds",
        "Age of the oldest outbox event not delivered yet (0 when there is none).",
        value=backlog.oldest_seconds,
    )


def _model_families(rows: Sequence[dbmetrics.CallTotals]) -> Iterator[core.Metric]:
    labels = ["tenant", "agent", "model"]
    calls = core.CounterMetricFamily(
        "appliance_llm_calls", "Model calls in the cost ledger.", labels=labels
    )
    tokens = core.CounterMetricFamily(
        "appliance_llm_tokens",
        "Tokens of model calls by category: input (uncached), cache_write, cache_read, output.",
        labels=[*labels, "category"],
    )
    cost = core.CounterMetricFamily(
        "appliance_llm_cost_usd", "What model calls cost, in US dollars.", labels=labels
    )
    saving = core.GaugeMetricFamily(
        "appliance_llm_cache_savings_usd",
        "What prompt caching saved in US dollars: the calls' cost uncached minus their cost "
        "(negative while cache writes were not read back).",
        labels=labels,
    )
    for row in rows:
        key = [row.tenant_id, row.agent, row.model]
        calls.add_metric(key, row.calls)
        counted = (row.input_tokens, row.cache_write_tokens, row.cache_read_tokens)
        for category, count in zip(TOKEN_CATEGORIES, (*counted, row.output_tokens), strict=True):
            tokens.add_metric([*key, category], count)
        cost.add_metric(key, float(row.cost_usd))
        saving.add_metric(key, float(row.saving_usd))
    yield calls
    yield tokens
    yield cost
    yield saving


def _budget_families(rows: Sequence[dbmetrics.MonthBudget]) -> Iterator[core.Metric]:
    limit = core.GaugeMetricFamily(
        "appliance_budget_limit_usd", "A tenant's monthly budget in US dollars.", labels=["tenant"]
    )
    left = core.GaugeMetricFamily(
        "appliance_budget_remaining_usd",
        "What is left of a tenant's monthly budget this UTC month, in US dollars.",
        labels=["tenant"],
    )
    for row in rows:
        limit.add_metric([row.tenant_id], float(row.usd_limit))
        left.add_metric([row.tenant_id], float(row.usd_limit - row.spent_usd))
    yield limit
    yield left


def _approval_families(rows: Sequence[dbmetrics.PendingApprovals]) -> Iterator[core.Metric]:
    pending = core.GaugeMetricFamily(
        "appliance_approvals_pending",
        "Approval requests waiting for people, by tenant.",
        labels=["tenant"],
    )
    oldest = core.GaugeMetricFamily(
        "appliance_approvals_oldest_age_seconds",
        "How long the oldest approval request waiting for people has waited, by tenant.",
        labels=["tenant"],
    )
    for row in rows:
        pending.add_metric([row.tenant_id], row.pending)
        oldest.add_metric([row.tenant_id], row.oldest_seconds)
    yield pending
    yield oldest


def _webhook_families(rows: Sequence[dbmetrics.WebhookBacklog]) -> Iterator[core.Metric]:
    families = [
        core.GaugeMetricFamily(
            f"appliance_outgoing_webhook_{name}",
            f"{what}, by endpoint (outbox.webhooks).",
            labels=["endpoint"],
        )
        for name, what in (
            ("backlog_events", "Outgoing webhook deliveries not made yet"),
            (
                "failing_events",
                "Outgoing webhook deliveries not made yet that failed at least once",
            ),
            ("oldest_age_seconds", "Age of the oldest outgoing webhook delivery not made yet"),
        )
    ]
    for row in rows:
        for family, value in zip(
            families, (row.pending, row.failing, row.oldest_seconds), strict=True
        ):
            family.add_metric([row.endpoint], value)
    yield from families


class Readers:
    """Who may read `/metrics`: loopback, and the tailnet devices or tags of `metrics.readers`."""

    def __init__(self, config: settings.MetricsSettings, mesh: tailscale.Tailscale | None) -> None:
        self._tags = frozenset(entry for entry in config.readers if entry.startswith("tag:"))
        self._devices = frozenset(
            _device_name(entry) for entry in config.readers if not entry.startswith("tag:")
        )
        self._peers = (
            peers.Peers(mesh, ttl=config.whois_cache_seconds)
            if mesh is not None and config.readers
            else None
        )
        self._told: set[str] = set()

    async def refusal(self, request: web.Request) -> web.Response | None:
        """None when the request's peer may read; else the answer that refuses it."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not isinstance(peer, tuple) or len(peer) < 2:  # a unix socket: no address to ask about
            return self._refuse("a peer without an address")
        host, port = str(peer[0]).partition("%")[0], int(peer[1])
        address = ipaddress.ip_address(host)
        if _loopback(address):
            return None
        if self._peers is None:
            return self._refuse(f"{address} (metrics.readers names nobody)")
        try:
            identity = await self._peers.identify(host, port)
        except tailscale.TailscaleError as exc:
            log.warning(
                "metrics: cannot tell who %s is: %s",
                address,
                exc.message.splitlines()[0],
                extra={"event": "metrics.whois_failed"},
            )
            return web.Response(
                status=503,
                text="cannot tell who is asking (tailscale whois failed); try again\n",
                headers={"Retry-After": "5"},
            )
        if identity is None:
            return self._refuse(f"{address} (no tailnet node has that address)")
        if self._tags.intersection(identity.tags) or identity.node_name.lower() in self._devices:
            return None
        who = identity.node_name or str(address)
        owner = ", ".join(identity.tags) if identity.tagged else identity.login_name or ""
        return self._refuse(f"{who} ({owner})" if owner else who)

    def _refuse(self, who: str) -> web.Response:
        if who not in self._told and len(self._told) < 1024:
            self._told.add(who)
            log.info("metrics: refused %s", who, extra={"event": "metrics.refused", "peer": who})
        return web.Response(
            status=403,
            text=f"{who} may not read /metrics: name the device (its MagicDNS name) or one of "
            "its tags in metrics.readers\n",
        )


def _device_name(entry: str) -> str:
    return entry.lower().removesuffix(".")


def _loopback(address: tailscale.IP) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
