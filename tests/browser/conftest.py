"""The console in a real browser: Debian's Chromium driven by Playwright, one per session.

Playwright cannot download a browser here; it drives /usr/bin/chromium (`scripts/test`
installs the `chromium` package where it is missing). Each person's browser context reaches
the console through a relay from their own address (tests/support/relay.py), so the console
knows them by `tailscale whois`, as on the tailnet. Screenshots go to
`test-output/console/<test>/` (ignored by git), kept after the run.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from appliance.db import pool as dbpool
from tests.support import console, relay

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "console"
SUPPORT_BIN = ROOT / "tests" / "support" / "bin"

Shoot = Callable[[Page, str], Awaitable[Path]]
Open = Callable[..., contextlib.AbstractAsyncContextManager[BrowserContext]]


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium for the whole session."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: scripts/test installs it (apt-get install chromium)")
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield found
        finally:
            await found.close()


@pytest_asyncio.fixture(loop_scope="session")
async def served(
    db: dbpool.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[console.Console]:
    """The console on 127.0.0.1, the stand-in knowing every test person (and on PATH, for
    the box page's tailnet line)."""
    monkeypatch.setenv("FAKE_TAILSCALE_STATE", "Running")
    monkeypatch.setenv("FAKE_TAILSCALE_PEERS_FILE", str(console.write_peers(tmp_path)))
    monkeypatch.delenv("FAKE_TAILSCALE_STATE_FILE", raising=False)
    monkeypatch.setenv("PATH", f"{SUPPORT_BIN}:{Path('/usr/bin')}:{Path('/bin')}")
    async with console.serving(db, tmp_path) as running:
        yield running


@pytest.fixture
def open_as(browser: Browser, served: console.Console) -> Open:
    """A browser context of `who`, on their relay: `async with open_as(who) as context`."""

    @contextlib.asynccontextmanager
    async def opened(
        who: console.Someone, *, javascript: bool = True
    ) -> AsyncIterator[BrowserContext]:
        async with relay.relay(served.port, who.address) as base_url:
            context = await browser.new_context(
                base_url=base_url,
                java_script_enabled=javascript,
                viewport={"width": 1280, "height": 900},
            )
            try:
                yield context
            finally:
                await context.close()

    return opened


@pytest.fixture
def shoot(request: pytest.FixtureRequest) -> Shoot:
    """Save a full-page screenshot as test-output/console/<test>/<nn>-<name>.png."""
    folder = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    taken: list[Path] = []

    async def take(page: Page, name: str) -> Path:
        path = folder / f"{len(taken) + 1:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        taken.append(path)
        return path

    return take
