"""Where a webhook source's signing secrets come from: the vault, or the config file.

A source with `secret_ref = "webhook/<name>"` keeps its signing secret in the vault, in its own
tenant's scope, integration `webhook`, workflow `*`, under that name:

    appliance secrets set webhook <name> --tenant <tenant> --from-file FILE

The daemon reads every such secret once, at start, before the public port opens (a changed
value takes effect at the next start). A value holds one secret per line; several lines while
the sender's secret is rotated, as `secrets = [new, old]` does in the config file. A secret that
is missing stops the start with MissingSecretError (exit 78), naming the source and the command
above. Each value read is registered for redaction, so no log line can carry it.

Secrets written into the config file (`secrets = [...]`) still work; `appliance doctor` warns
about each source that has them.
"""

from __future__ import annotations

from appliance import errors, redaction, settings, vault
from appliance.db import pool as dbpool
from appliance.ingress import signatures

INTEGRATION = "webhook"

Verifiers = dict[tuple[str, str], signatures.Scheme]


def vault_name(source: settings.Source) -> str:
    """The vault name of the source's secret: its own reference, else (to move it) its name."""
    if source.secret_ref is None:
        return source.name
    return source.secret_ref.removeprefix(INTEGRATION + "/")


def set_command(source: settings.Source) -> str:
    """The command that stores the source's signing secret in the vault."""
    return (
        f"appliance secrets set {INTEGRATION} {vault_name(source)} --tenant {source.tenant}"
        " --from-file FILE"
    )


async def read_verifiers(pool: dbpool.Pool, config: settings.Settings) -> Verifiers:
    """The verifier of each source whose secret is in the vault, by (tenant, source name).

    Opens the vault with the configured master key only when a served source refers to it.
    """
    if not config.ingress.enabled:
        return {}
    referenced = [s for s in config.ingress.sources if s.secret_ref is not None]
    if not referenced:
        return {}
    box = await vault.open_vault(pool, vault.configured_key(config))
    return {(s.tenant, s.name): await _verifier(pool, box, s) for s in referenced}


async def _verifier(
    pool: dbpool.Pool, box: vault.Vault, source: settings.Source
) -> signatures.Scheme:
    where = f"ingress source {source.tenant}/{source.name}"
    name = vault_name(source)
    try:
        value = await vault.read_secret(
            pool,
            box,
            tenant_id=source.tenant,
            integration=INTEGRATION,
            workflow=vault.WILDCARD,
            name=name,
        )
    except errors.NotFoundError as exc:
        raise errors.MissingSecretError(
            f"{where}: its signing secret {source.secret_ref} is not in the vault of tenant "
            f"{source.tenant}; set it with: {set_command(source)}"
        ) from exc
    try:
        lines = [line for line in value.decode("utf-8").splitlines() if line]
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(
            f"{where}: the vault secret {source.secret_ref} is not UTF-8 text"
        ) from exc
    label = f"{source.tenant}/{INTEGRATION}/{name}"
    for line in lines:
        redaction.registry.add(line, label)
    try:
        return signatures.scheme(source.scheme, lines)
    except errors.ConfigError as exc:
        raise errors.ConfigError(
            f"{where}: the vault secret {source.secret_ref} is not a {source.scheme} signing "
            f"secret: {exc.message}"
        ) from exc
