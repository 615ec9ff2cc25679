"""Webhook signing secrets kept in the vault: the daemon reads them at start and verifies with
them; a missing one stops the start with 78 and the command that sets it; an inline one works
but doctor warns about it."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import standardwebhooks

from appliance import vault
from appliance.db import pool as dbpool
from appliance.ingress import signatures
from tests.support import daemon, workflows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
OLD_SECRET = "whsec_LXAo3dbN1zsGeyZ4AqM2Zvy8Ud5bpSUD"
FORGED = "whsec_Zm9yZ2VkLWJ5LXNvbWVvbmUtZWxzZQ=="
SET_COMMAND = "appliance secrets set webhook shop --tenant default --from-file FILE"


@pytest_asyncio.fixture(loop_scope="session")
async def key_file(db: dbpool.Pool, tmp_path: Path) -> Path:
    """A vault key file (0600) whose key the emptied database's vault is initialised with."""
    path = tmp_path / "vault.key"
    await vault.open_vault(db, vault.create_key_file(path), initialise=True)
    return path


def overrides(key_file: Path, **source: Any) -> dict[str, Any]:
    """The public port on 127.0.0.1 with one source `shop` of tenant default (vault-held secret
    unless `source` says otherwise)."""
    return {
        "vault.key_file": str(key_file),
        "ingress.enabled": True,
        "ingress.host": "127.0.0.1",
        "ingress.port": 0,
        "ingress.sources": [
            {
                "tenant": "default",
                "name": "shop",
                "workflow": workflows.COUNTED,
                **(source or {"secret_ref": "webhook/shop"}),
            }
        ],
    }


async def store(tmp_path: Path, key_file: Path, dsn: str, value: str) -> None:
    """`appliance secrets set webhook shop --tenant default --from-file F`, as an operator would."""
    value_file = tmp_path / "signing-secret"
    value_file.write_text(value)
    result = await daemon.cli(
        *SET_COMMAND.removeprefix("appliance ").replace("FILE", str(value_file)).split(),
        folder=tmp_path,
        dsn=dsn,
        overrides={"vault.key_file": str(key_file)},
    )
    assert result.code == 0, result.stderr


async def deliver(port: int, secret: str, delivery_id: str) -> int:
    """POST a Standard Webhooks delivery signed with `secret`; the answer's status."""
    body = json.dumps({"order": delivery_id}).encode()
    now = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signatures.sign_standard(secret, delivery_id, now, body),
    }
    url = f"http://127.0.0.1:{port}/hooks/default/shop"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as got:
        return got.status


class TestVaultSecret:
    async def test_deliveries_verify_against_the_vault_secret(
        self, db: dbpool.Pool, key_file: Path, database_dsn: str, tmp_path: Path
    ) -> None:
        """A delivery signed with the vault-held secret is 202; one signed otherwise is 401."""
        await workflows.create_step_runs(db)
        await store(tmp_path, key_file, database_dsn, SECRET + "\n")
        async with daemon.running(database_dsn, tmp_path, overrides=overrides(key_file)) as edge:
            port = int(edge.ready["ingress_port"])
            assert await deliver(port, SECRET, "msg_1") == 202
            assert await deliver(port, FORGED, "msg_2") == 401
        assert SECRET not in "\n".join(edge.lines)

    async def test_each_line_of_the_value_is_a_secret(
        self, db: dbpool.Pool, key_file: Path, database_dsn: str, tmp_path: Path
    ) -> None:
        """A value of two lines (new and old, during a rotation) verifies deliveries of both."""
        await workflows.create_step_runs(db)
        await store(tmp_path, key_file, database_dsn, f"{SECRET}\n{OLD_SECRET}\n")
        async with daemon.running(database_dsn, tmp_path, overrides=overrides(key_file)) as edge:
            port = int(edge.ready["ingress_port"])
            assert await deliver(port, SECRET, "msg_new") == 202
            assert await deliver(port, OLD_SECRET, "msg_old") == 202

    async def test_an_unpadded_secret_is_accepted(
        self, db: dbpool.Pool, key_file: Path, database_dsn: str, tmp_path: Path
    ) -> None:
        """`whsec_` + base64 without its `=` padding (valid for the reference library) starts
        the daemon, and a delivery the reference library signs with it is 202."""
        unpadded = FORGED.rstrip("=")
        await workflows.create_step_runs(db)
        await store(tmp_path, key_file, database_dsn, unpadded + "\n")
        async with daemon.running(database_dsn, tmp_path, overrides=overrides(key_file)) as edge:
            port = int(edge.ready["ingress_port"])
            now = dt.datetime.now(dt.UTC)
            body = b'{"order": 1}'
            signer = standardwebhooks.Webhook(unpadded)
            headers = {
                "webhook-id": "msg_u",
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign("msg_u", now, body),
            }
            url = f"http://127.0.0.1:{port}/hooks/default/shop"
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, data=body, headers=headers) as got,
            ):
                assert got.status == 202

    async def test_a_missing_secret_stops_the_start_with_78(
        self, db: dbpool.Pool, key_file: Path, database_dsn: str, tmp_path: Path
    ) -> None:
        """No secret in the vault: exit 78 before ready, naming the source and the command."""
        local = {"health.host": "127.0.0.1", "health.port": 0, **overrides(key_file)}
        result = await daemon.cli("run", folder=tmp_path, dsn=database_dsn, overrides=local)
        assert result.code == 78
        assert "ingress source default/shop" in result.stderr
        assert SET_COMMAND in result.stderr
        assert "Traceback" not in result.stderr
        assert "daemon.ready" not in result.stderr


class TestInlineSecret:
    async def test_doctor_warns_about_a_secret_in_the_config_file(
        self, db: dbpool.Pool, key_file: Path, database_dsn: str, tmp_path: Path
    ) -> None:
        """`doctor` shows a warning with the command that moves the secret into the vault."""
        result = await daemon.cli(
            "doctor",
            "--json",
            folder=tmp_path,
            dsn=database_dsn,
            overrides=overrides(key_file, secrets=[SECRET]),
        )
        [check] = [c for c in result.json() if c["name"] == "webhook secret default/shop"]
        assert (check["ok"], check["severity"]) == (False, "warn")
        assert check["detail"] == "signing secret in the config file"
        assert SET_COMMAND in check["fix"]
        assert SECRET not in result.stdout
