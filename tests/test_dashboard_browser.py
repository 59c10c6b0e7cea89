"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright
(no browser download: ``executable_path`` is the system binary). The daemon runs as
a subprocess with a small simulated fleet; the test logs in with the API token,
sees the fleet, uploads a model and starts a rollout from the Models page, watches
it finish on its page, pauses and resumes a second (following) rollout, opens a
device and reads and observes values, adds and removes a credential, and logs out.

Screenshots go to ``$DASHBOARD_SCREENSHOTS`` (default ``tests/artifacts/dashboard/``,
git-ignored), kept as CI artefacts."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import urllib.request
import json
from pathlib import Path

import pytest

from simulators.client import SimulatedDevice
from test_daemon import Daemon
from test_e2e_deploy import daemon  # noqa: F401 - the fixture: a daemon with quick delivery polls

CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium")
MODEL = Path(__file__).parent / "fixtures" / "models" / "wide_int8.tflite"
SCREENSHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS", Path(__file__).parent / "artifacts" / "dashboard"))
FLEET = {"m4f-00": "cortex-m4f", "m4f-01": "cortex-m4f", "m4f-02": "cortex-m4f",
         "gw-00": "linux-gateway", "gw-01": "linux-gateway", "m0p-00": "cortex-m0plus"}

playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright for Python is not installed "
                                     "(pip install -e '.[dev]')")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


def api_call(daemon: Daemon, token: str, method: str, path: str, body=None):
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.api_port}/api/v1{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def test_dashboard_in_chromium(daemon):
    await asyncio.to_thread(daemon.start)
    token = (daemon.folder / "data" / "api-token").read_text().strip()
    anchor = daemon.folder / "data" / "keys" / "signing-es256.pub.pem"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    devices = []
    try:
        for i, (endpoint, profile) in enumerate(FLEET.items()):
            device = SimulatedDevice(endpoint, profile, f"coap://127.0.0.1:{daemon.coap_port}",
                                     seed=i, sensor_interval=3600, trust_anchors=[anchor])
            await device.start()
            devices.append(device)

        async def discovered() -> bool:
            fleet = await asyncio.to_thread(api_call, daemon, token, "GET", "/fleet")
            return len(fleet) == len(FLEET) and all(d["device_class"] for d in fleet)

        async with asyncio.timeout(60):
            while not await discovered():
                await asyncio.sleep(0.3)
        await drive_the_browser(daemon, token)
    finally:
        for device in devices:
            await device.stop(deregister=False)
    shots = sorted(p.name for p in SCREENSHOTS.glob("*.png"))
    assert len(shots) >= 8 and all((SCREENSHOTS / name).stat().st_size > 1000 for name in shots), shots
    assert not [line for line in daemon.lines if "Traceback" in line]
    assert token not in "".join(daemon.lines)


async def drive_the_browser(daemon: Daemon, token: str) -> None:
    expect = playwright_api.expect
    base = f"http://127.0.0.1:{daemon.api_port}"
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            shot = lambda name: page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # noqa: E731

            # log in: a wrong token first
            await page.goto(base + "/")
            await expect(page.locator("#login")).to_be_visible()
            await page.fill("#token", "not-the-token")
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#login-error")).to_have_text("Wrong token.")
            await shot("01-login-refused")
            await page.fill("#token", token)
            await page.click("#login-form button[type=submit]")

            # the fleet, its counts and a filter
            rows = page.locator("#page table tbody tr")
            await expect(rows).to_have_count(len(FLEET))
            await expect(page.locator("#live")).to_have_text("live")
            await shot("02-fleet")
            m4f_class = await page.locator("tr[data-endpoint=m4f-00] td").nth(1).text_content()
            await page.select_option("#filter-device_class", m4f_class)
            await expect(rows).to_have_count(3)
            await expect(page.locator("#fleet-counts .count").first).to_contain_text(f"of {len(FLEET)} devices")
            await shot("03-fleet-filtered")

            # upload a model and start a rollout from the Models page
            await page.click("#nav a[data-page=models]")
            await page.set_input_files("#model-file", str(MODEL))
            await page.fill("#model-name", "wide")
            await page.fill("#model-version", "1.0.0")
            await page.click("#model-upload button[type=submit]")
            await expect(page.locator("tr[data-model='wide@1.0.0']")).to_be_visible()
            await expect(page.locator("#rollout-model")).to_have_value("wide@1.0.0")
            await page.fill("#rollout-in-flight", "2")
            await page.click("#rollout-start button[type=submit]")
            await expect(page).to_have_url(re.compile(r"#/rollouts/r-[0-9a-f]+$"))

            # watch it finish: live counts, the chart, each device's status and reason
            state = page.locator("#rollout-state")
            await expect(state).to_have_attribute("data-state", "complete", timeout=120_000)
            counts = page.locator("#rollout-counts")
            await expect(counts.locator("[data-count=done] b")).to_have_text("5")
            await expect(counts.locator("[data-count=incompatible] b")).to_have_text("1")
            await expect(page.locator("tr[data-endpoint=m0p-00]")).to_contain_text("arena")
            assert await page.locator("#rollout-chart polyline[data-series=done]").count() == 1
            await shot("04-rollout-complete")

            # the model's compiled modules per class, and why m0+ is incompatible
            await page.click("#nav a[data-page=models]")
            await page.click("tr[data-model='wide@1.0.0'] button.show-modules")
            modules = page.locator("tr[data-modules='wide@1.0.0']")
            await expect(modules).to_contain_text("Incompatible classes")
            await expect(modules).to_contain_text("arena")
            await shot("05-model-modules")

            # a following rollout never ends by itself: pause and resume it in the page
            follow = await asyncio.to_thread(api_call, daemon, token, "POST", "/rollouts",
                                             {"model": "wide@1.0.0", "follow": True, "selector": {"endpoints": ["gw-*"]}})
            await page.goto(f"{base}/#/rollouts")
            await expect(page.locator(f"tr[data-rollout='{follow['id']}']")).to_be_visible()
            await shot("06-rollouts")
            await page.click(f"tr[data-rollout='{follow['id']}'] a")
            await expect(state).to_have_attribute("data-state", "running")
            await page.click("#rollout-pause")
            await expect(state).to_have_attribute("data-state", "paused")
            await expect(page.locator("#rollout-resume")).to_be_enabled()
            await shot("07-rollout-paused")
            await page.click("#rollout-resume")
            await expect(state).to_have_attribute("data-state", "running")
            await shot("08-rollout-resumed")

            # a device: its objects by name, a read, an observation
            await page.click("#nav a[data-page=fleet]")
            await page.click("tr[data-endpoint=m4f-01] a")
            await expect(page.locator("#page h1")).to_have_text("m4f-01")
            await expect(page.locator("#page")).to_contain_text("wide@1.0.0")  # the installed model
            await page.click("button.read-object[data-path='/3/0']")
            result = page.locator("#device-result")
            await expect(result).to_contain_text("Manufacturer")
            await page.fill("#op-path", "/26241/0/18")
            await page.click("#op-execute")  # run an inference
            await expect(page.locator("#flash")).to_contain_text("execute /26241/0/18: ok")
            await page.click("#read-inference")
            await expect(result).to_contain_text("/26241/0/14")  # the inference results resource
            await page.fill("#op-path", "/3/0/13")
            await page.click("#op-observe")
            await expect(page.locator("#live-values tr[data-path='/3/0/13']")).to_be_visible()
            await shot("09-device")

            # credentials: add one, see it listed without its key, remove it
            await page.click("#nav a[data-page=credentials]")
            key = "00112233445566778899aabbccddeeff"
            await page.fill("#cred-endpoint", "new-dev")
            await page.fill("#cred-key", key)
            await page.click("#cred-add button[type=submit]")
            listed = page.locator("tr[data-endpoint=new-dev]")
            await expect(listed).to_be_visible()
            assert key not in await page.content()
            await shot("10-credentials")
            await listed.locator("button").click()
            await expect(listed).to_have_count(0)

            # log out: back to the form, and the API refuses the old session
            await page.click("#logout")
            await expect(page.locator("#login")).to_be_visible()
            await shot("11-logged-out")
            answer = await page.evaluate("fetch('/api/v1/devices').then(r => r.status)")
            assert answer == 401
            assert not problems, problems
        finally:
            await browser.close()
