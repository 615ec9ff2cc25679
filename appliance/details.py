"""The console's `details` service on the database: what its pages show beyond the API.

Built by the daemon on its pool, beside `operations`; the box's state comes from the same
checks `appliance doctor` makes (Postgres, tailnet, exposure of the whole box, vault, outbox),
made again at each look.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import resource
import time
from collections.abc import Sequence

import appliance
from appliance import doctor, errors, settings
from appliance.console import details
from appliance.db import agents as dbagents
from appliance.db import console as dbconsole
from appliance.db import health as dbhealth
from appliance.db import outbox as dboutbox
from appliance.db import pool as dbpool
from appliance.mesh import exposure, listeners, tailscale

TAKEOVER_WINDOW = dt.timedelta(days=1)


def build(pool: dbpool.Pool, config: settings.Settings) -> details.Details:
    return Details(pool, config)


class Details:
    def __init__(self, pool: dbpool.Pool, config: settings.Settings) -> None:
        self._pool = pool
        self._config = config
        self._started_at = dt.datetime.now(dt.UTC)
        self._schemes = {(s.tenant, s.name): s.scheme for s in config.ingress.sources}

    async def trace(self, task_id: int, tenant_id: str) -> details.TaskTrace:
        calls, leases, delivery, chain = await asyncio.gather(
            dbconsole.list_task_model_calls(self._pool, task_id),
            dbconsole.list_task_leases(self._pool, task_id),
            dbconsole.get_task_delivery(self._pool, task_id),
            dbconsole.find_task_chain_breaks(self._pool, task_id),
        )
        return details.TaskTrace(
            model_calls=[
                details.ModelCallView(
                    position=c.position,
                    model=c.model,
                    started_at=c.started_at,
                    latency_ms=c.latency_ms,
                    input_tokens=c.input_tokens,
                    cache_creation_input_tokens=c.cache_creation_input_tokens,
                    cache_read_input_tokens=c.cache_read_input_tokens,
                    output_tokens=c.output_tokens,
                    cost_usd=str(c.cost_usd),
                    uncached_cost_usd=str(c.uncached_cost_usd),
                )
                for c in calls
            ],
            leases=[
                details.LeaseView(
                    step_key=lease.step_key,
                    integration=lease.integration,
                    name=lease.name,
                    granted_at=lease.granted_at,
                    expires_at=lease.expires_at,
                    redeemed_at=lease.redeemed_at,
                )
                for lease in leases
            ],
            delivery=None
            if delivery is None
            else details.DeliveryView(
                source=delivery.source,
                scheme=self._schemes.get((tenant_id, delivery.source)),
                delivery_id=delivery.delivery_id,
                received_at=delivery.received_at,
            ),
            chain=details.ChainView(
                entries=chain.entries,
                verified=chain.broken_seq is None,
                broken_seq=chain.broken_seq,
                reason=chain.reason,
            ),
        )

    async def agent_version(
        self, tenant_id: str, name: str, version: int
    ) -> details.AgentVersionView | None:
        try:
            found = await dbagents.get_agent(
                self._pool, tenant_id=tenant_id, name=name, version=version
            )
        except errors.NotFoundError:
            return None
        return details.AgentVersionView(
            tenant_id=found.tenant_id,
            name=found.name,
            version=found.version,
            model=found.model,
            persona=found.persona,
            tools=list(found.tools),
            max_tokens=found.max_tokens,
            max_turns=found.max_turns,
            created_by=found.created_by,
            created_at=found.created_at,
        )

    async def node_load(self) -> list[details.NodeLoadView]:
        since = dt.datetime.now(dt.UTC) - TAKEOVER_WINDOW
        return [
            details.NodeLoadView(node=n.node, tasks_held=n.tasks_held, takeovers=n.takeovers)
            for n in await dbconsole.count_node_load(self._pool, since=since)
        ]

    def this_process(self) -> details.ProcessView:
        return details.ProcessView(
            node=self._config.engine.node_name,
            mode=self._config.mode,
            pid=os.getpid(),
            started_at=self._started_at,
            memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            slots=self._config.engine.concurrency,
        )

    async def hourly_load(
        self, tenants: Sequence[str], *, hours: int
    ) -> list[details.HourLoadView]:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours - 1)
        return [
            details.HourLoadView(
                hour=h.hour, attempts=h.attempts, busy_seconds=h.busy_seconds, ended=h.ended
            )
            for h in await dbconsole.list_hourly_load(self._pool, tenants, since=since)
        ]

    async def cost_cells(
        self, tenants: Sequence[str], *, since: dt.date
    ) -> list[details.CostCellView]:
        return [
            details.CostCellView(
                tenant_id=c.tenant_id,
                agent=c.agent,
                agent_version=c.agent_version,
                model=c.model,
                day=c.day,
                calls=c.calls,
                input_tokens=c.input_tokens,
                cache_creation_input_tokens=c.cache_creation_input_tokens,
                cache_read_input_tokens=c.cache_read_input_tokens,
                output_tokens=c.output_tokens,
                cost_usd=str(c.cost_usd),
                uncached_cost_usd=str(c.uncached_cost_usd),
            )
            for c in await dbconsole.report_cost_cells(self._pool, tenants, since=since)
        ]

    async def box(self) -> details.BoxStatus:
        checks = [await self._database()]
        checks.append(await self._tailnet())
        checks.append(await asyncio.to_thread(self._exposure))
        if checks[0].ok:
            checks.append(_view(await doctor.check_vault(self._config, self._pool)))
            checks.append(await self._outbox())
        return details.BoxStatus(
            version=appliance.__version__,
            mode=self._config.mode,
            node=self._config.engine.node_name,
            checks=checks,
        )

    async def _database(self) -> details.CheckView:
        began = time.monotonic()
        try:
            await dbhealth.ping(self._pool)
        except errors.ApplianceError as exc:
            return _check("postgres", False, exc.message.splitlines()[0], "see `appliance doctor`")
        took = (time.monotonic() - began) * 1000
        return _check("postgres", True, f"reachable, answered in {took:.1f} ms")

    async def _tailnet(self) -> details.CheckView:
        if self._config.health.host != settings.TAILNET:
            where = self._config.health.host
            return _check("tailnet", True, f"not used: the console listens on {where}")
        mesh = tailscale.Tailscale(
            self._config.mesh.tailscale, timeout=self._config.mesh.command_timeout_seconds
        )
        try:
            status = await mesh.status()
        except errors.ApplianceError as exc:
            return _check("tailnet", False, exc.message.splitlines()[0], "start tailscaled")
        addresses = ", ".join(str(ip) for ip in status.ips) or "no address"
        name = status.dns_name or status.hostname
        return _check(
            "tailnet",
            status.ready,
            f"{status.backend_state}: {name} at {addresses}",
            "" if status.ready else "appliance init (joins the tailnet)",
        )

    def _exposure(self) -> details.CheckView:
        policy, notes = listeners.configured_policy(self._config)
        try:
            result = exposure.run_check(policy, box_wide=True, notes=notes)
        except errors.ApplianceError as exc:
            return _check("exposure", False, exc.message.splitlines()[0], "")
        if result.passed:
            return _check(
                "exposure",
                True,
                f"re-checked now: {len(result.sockets)} listening sockets, none faces outside "
                "the tailnet but the webhook ingress and the allow-listed",
            )
        offenders = "; ".join(item.describe() for item in result.violations)
        return _check(
            "exposure",
            False,
            f"re-checked now: reachable from outside the tailnet: {offenders}",
            "bind each to the tailnet address or 127.0.0.1, or stop it; or allow it as "
            "mesh.allowed protocol/port@process",
        )

    async def _outbox(self) -> details.CheckView:
        backlog = await dboutbox.count_pending_events(self._pool)
        text = f"{backlog.pending} undelivered, {backlog.failing} failing"
        if backlog.pending:
            text += f", oldest {backlog.oldest_seconds:.0f} s"
        fix = "deliveries retry by themselves; last_error says why" if backlog.failing else ""
        return _check("outbox", not backlog.failing, text, fix)


def _check(name: str, ok: bool, detail: str, fix: str = "") -> details.CheckView:
    return details.CheckView(name=name, ok=ok, detail=detail, fix=fix, severity="fail")


def _view(check: doctor.Check) -> details.CheckView:
    return details.CheckView(
        name=check.name, ok=check.ok, detail=check.detail, fix=check.fix, severity=check.severity
    )
