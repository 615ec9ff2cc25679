"""Leases: a tool gets one secret for one call, once, for at most 60 seconds.

The control plane starts each tool call with a `Binding` that it alone fixes: tenant, task,
step, workflow, the integrations the tool declares, and the worker that holds the task. A
tool's process asks for a lease by integration and name; the lease is granted only inside that
binding and only for a secret that exists in the binding's scope, and its grant is an audit
entry committed before anything else happens. Redeeming it hands the value over once: a second
redemption, a redemption after expiry, or one from another call is refused, and every refusal
is an audit entry too. The value goes to the tool's process only; the control plane registers
it with `redaction.registry`, so it is scrubbed from everything written afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any, NoReturn

from appliance import errors, redaction, vault
from appliance.db import isolation as dbisolation
from appliance.db import pool as dbpool

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 60.0
# The box's own credentials (the tailnet auth key, webhook signing secrets): the daemon reads
# them itself; no tool may lease them, whatever it declares.
RESERVED_INTEGRATIONS = frozenset({"tailscale", "webhook"})


class LeaseRefusedError(errors.NotAllowedError):
    """The lease cannot be granted or redeemed here: spent, expired, or outside its scope."""


@dataclasses.dataclass(frozen=True, slots=True)
class Binding:
    """The one tool call a process serves, as the control plane started it."""

    tenant_id: str
    task_id: int
    workflow: str
    step_key: str
    tool: str
    integrations: tuple[str, ...]
    worker: str
    attempt: int


class Leases:
    """Grants and redeems leases against the vault, auditing each decision."""

    def __init__(
        self,
        pool: dbpool.Pool,
        opened: vault.Vault | None,
        *,
        ttl_seconds: float = 30.0,
    ) -> None:
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise errors.ConfigError(
                f"lease ttl must be more than 0 and at most {MAX_TTL_SECONDS:g} s, "
                f"not {ttl_seconds:g}"
            )
        self._pool = pool
        self._vault = opened
        self._ttl = ttl_seconds

    async def refuse(self, binding: Binding, what: str, reason: str, **detail: Any) -> NoReturn:
        """Audit a refused request of a tool process and raise LeaseRefusedError (what the
        process asked for is scrubbed first: it may hold a secret it was given)."""
        what, reason = redaction.registry.scrub_text(what), redaction.registry.scrub_text(reason)
        await dbisolation.append_task_audit(
            self._pool,
            task_id=binding.task_id,
            worker=binding.worker,
            attempt=binding.attempt,
            action="isolation.refused",
            detail=redaction.registry.scrub(
                {
                    "step": binding.step_key,
                    "tool": binding.tool,
                    "request": what,
                    "reason": reason,
                    **detail,
                }
            ),
        )
        log.warning(
            "refused %s from tool %s of task %d: %s",
            what,
            binding.tool,
            binding.task_id,
            reason,
            extra={"event": "isolation.refused", "task_id": binding.task_id},
        )
        raise LeaseRefusedError(f"{what} refused: {reason}")

    def _opened(self) -> vault.Vault:
        if self._vault is None:
            raise errors.ConfigError(
                "the vault is not open in this daemon: run `appliance init` to create its key"
            )
        return self._vault

    async def grant(self, binding: Binding, integration: str, name: str) -> dbisolation.Grant:
        """An audited lease on `integration`/`name` in the binding's scope."""
        if integration in RESERVED_INTEGRATIONS:
            await self.refuse(
                binding,
                "lease",
                f"integration {integration!r} holds the appliance's own credentials",
                integration=integration,
                name=name,
            )
        if integration not in binding.integrations:
            await self.refuse(
                binding,
                "lease",
                f"tool {binding.tool!r} declares integrations {list(binding.integrations)}, "
                f"not {integration!r}",
                integration=integration,
                name=name,
            )
        try:
            await vault.read_secret(
                self._pool,
                self._opened(),
                tenant_id=binding.tenant_id,
                integration=integration,
                workflow=binding.workflow,
                name=name,
            )
        except errors.NotFoundError:
            await self.refuse(
                binding,
                "lease",
                f"no secret {name!r} of integration {integration!r} in the scope of tenant "
                f"{binding.tenant_id!r}, workflow {binding.workflow!r}",
                integration=integration,
                name=name,
            )
        return await dbisolation.grant_lease(
            self._pool,
            tenant_id=binding.tenant_id,
            task_id=binding.task_id,
            step_key=binding.step_key,
            workflow=binding.workflow,
            integration=integration,
            name=name,
            worker=binding.worker,
            attempt=binding.attempt,
            ttl_seconds=self._ttl,
        )

    async def redeem(self, binding: Binding, lease_id: str) -> str:
        """The leased value, once, for the call it was granted to."""
        try:
            parsed = uuid.UUID(lease_id)
        except (ValueError, TypeError, AttributeError):
            shown = redaction.registry.clip(str(lease_id), 64)
            await self.refuse(binding, "redeem", "not a lease id", lease_id=shown)
        spent = await dbisolation.redeem_lease(
            self._pool,
            lease_id=parsed,
            tenant_id=binding.tenant_id,
            task_id=binding.task_id,
            step_key=binding.step_key,
            workflow=binding.workflow,
        )
        if spent is None:
            await self.refuse(
                binding, "redeem", await self._why_not(binding, parsed), lease_id=str(parsed)
            )
        integration, name = spent
        value = await vault.read_secret(
            self._pool,
            self._opened(),
            tenant_id=binding.tenant_id,
            integration=integration,
            workflow=binding.workflow,
            name=name,
        )
        text = value.decode("utf-8", "replace")
        redaction.registry.add(text, f"{binding.tenant_id}/{integration}/{name}")
        return text

    async def _why_not(self, binding: Binding, lease_id: uuid.UUID) -> str:
        row = await dbisolation.get_lease(self._pool, lease_id)
        if row is None:
            return f"lease {lease_id} does not exist"
        if (row.tenant_id, row.task_id, row.step_key, row.workflow) != (
            binding.tenant_id,
            binding.task_id,
            binding.step_key,
            binding.workflow,
        ):
            return f"lease {lease_id} was granted to another call"
        if row.redeemed_at is not None:
            return f"lease {lease_id} was already used at {row.redeemed_at.isoformat()}"
        return f"lease {lease_id} expired at {row.expires_at.isoformat()}"
