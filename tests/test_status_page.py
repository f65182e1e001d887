"""The status page (`GET /`) and the /status JSON it is rendered from.

The first tests render the page and the JSON in-process; the last one runs the
real service against the loopback registry and reads the page in headless
Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium): a
failing image shows in red with its error, the running cycle shows its image
and files, and a webhook-triggered publish appears without a reload.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from fixtures.push import FixturePusher
from reconciler.delivery import Delivery
from reconciler.progress import ProgressSnapshot, TerminalProgress
from reconciler.reconcile import Reconciler
from reconciler.service.app import build_app
from reconciler.service.page import PAGE_HEADERS, relative, render_page, short_digest, size
from reconciler.service.scheduler import Service
from reconciler.service.status import iso_utc
from reconciler.state import TagKey
from reconciler.watchlist import load_watchlist
from tests.registry_server import free_port, wait_until
from tests.service_watchlist import write_service_watchlist

ROOT = Path(__file__).resolve().parent.parent
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TIME_KEYS = {"now", "started", "last_cycle", "next_poll", "last_success", "last_changed", "last_failure", "at"}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
HOOK_SECRET = "status-page-hook-secret-0123456789"


def _times(value: Any, key: str = "") -> List[Any]:
    """Every value under a time key, anywhere in the document."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    return [value] if key in TIME_KEYS else []


def _status(**cycle: Any) -> Dict[str, Any]:
    """A /status document as Service.status() makes it, with hostile names."""
    digest = "sha256:" + "ab12" * 16
    return {
        "now": "2024-05-01T12:00:00Z",
        "cycle": {"running": bool(cycle), "started": "2024-05-01T11:59:50Z" if cycle else None,
                  "entries": [f"image[1] (registry.example.org/{HOSTILE})"] if cycle else [],
                  "images": cycle.get("images", [])},
        "last_cycle": "2024-05-01T11:58:00Z", "cycles_done": 3,
        "images": [
            {"entry": "image[1] (registry.example.org/team/app)", "source": "registry.example.org/team/app",
             "dest": "app", "interval_seconds": 900.0, "next_poll": "2024-05-01T12:10:00Z", "error": None,
             "tags": [{"tag": "1", "platform": "linux/amd64", "state": "published", "path": "app:1",
                       "digest": digest, "published": digest, "last_success": "2024-05-01T11:58:00Z",
                       "last_changed": "2024-04-30T12:00:00Z", "last_failure": None, "last_error": None,
                       "failures": 0},
                      {"tag": HOSTILE, "platform": "linux/amd64", "state": "failing", "path": f"app:{HOSTILE}",
                       "digest": None, "published": None, "last_success": None, "last_changed": None,
                       "last_failure": "2024-05-01T11:58:00Z", "last_error": f"manifest unknown: {HOSTILE}",
                       "failures": 2}]},
            {"entry": "image[2] (docker.io/library/alpine)", "source": "docker.io/library/alpine",
             "dest": "alpine", "interval_seconds": 900.0, "next_poll": "2024-05-01T11:59:00Z",
             "error": {"at": "2024-05-01T11:58:00Z", "reason": "tag listing failed: HTTP 500 & <more>"},
             "tags": []},
        ],
    }


def test_page_escapes_everything_from_images_and_registries():
    page = render_page(_status(images=[{"image": f"registry.example.org/{HOSTILE}:1", "phase": "download",
                                        "downloaded": 1_500_000, "to_download": 3_000_000, "files": 0,
                                        "written": 0}]))
    # The only script on the page is its own refresher; no name made markup.
    assert page.count("<script>") == 1 and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "tag listing failed: HTTP 500 &amp; &lt;more&gt;" in page
    assert 'data-path="app:&lt;script&gt;' in page  # attributes too
    # The CSP names that script by hash, so nothing else could run even if escaping failed.
    script = page.split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in PAGE_HEADERS["Content-Security-Policy"]
    # no external assets
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def test_page_shows_failures_in_red_and_the_running_cycle():
    page = render_page(_status(images=[{"image": "registry.example.org/team/app:1", "phase": "apply",
                                        "downloaded": 10, "to_download": 10, "files": 42, "written": 2_000_000}]))
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count('<tr class="tag failing"') == 1 and page.count('<tr class="failing entry"') == 1
    assert 'data-failing="2"' in page and "2 failing" in page
    assert '<td data-label="Error" class="error">manifest unknown:' in page
    assert "2 min ago</time>, 2 in a row)" in page
    assert "sha256:ab12ab12ab12" in page and f'title="sha256:{"ab12" * 16}"' in page
    assert "Running for 10 s (since" in page and "42 files applied" in page and "2.0 MB written" in page
    assert "1 d ago" in page and "in 10 min" in page and "due now" in page  # changed; next polls
    idle = render_page(_status())
    assert "Idle. The last cycle finished <time" in idle and "2 min ago" in idle


def test_relative_times_and_short_digests():
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert relative("2024-05-01T11:59:30Z", now) == "30 s ago"
    assert relative("2024-05-01T14:00:00Z", now) == "in 2 h"
    assert relative("2024-05-01T12:00:00Z", now) == "just now"
    assert relative(None, now) == "—" and relative("not a time", now) == "—"
    assert short_digest("sha256:" + "0123456789abcdef" * 4) == "sha256:0123456789ab"
    assert [size(n) for n in (512, 3_400, 1_250_000, 2_000_000_000)] == ["512 B", "3.4 kB", "1.2 MB", "2.0 GB"]


def test_progress_snapshot_is_a_copy_and_reset_forgets():
    progress = TerminalProgress()
    progress.expect("r/a:1", 100)
    progress.downloaded("r/a:1", 40)
    progress.applied("r/b:2", 3, 300)
    snap = progress.snapshot()
    assert snap == [ProgressSnapshot("r/a:1", "download", 40, 100, 0, 0),
                    ProgressSnapshot("r/b:2", "apply", 0, 0, 3, 300)]
    progress.downloaded("r/a:1", 60)
    assert snap[0].downloaded == 40  # taken under the lock, not a live view
    progress.reset()
    assert progress.snapshot() == []


def test_status_json_uses_iso_utc_times_and_lists_every_watched_tag(tmp_path):
    (tmp_path / "watchlist.toml").write_text('''
[publish]
root = "publish"
[state]
dir = "state"
[[image]]
source = "registry.example.org/team/app"
tags = ["1", "2", "3"]
dest = "app"
platforms = ["linux/amd64", "linux/arm64"]
[[image]]
source = "registry.example.org/team/app"
tags = ["1"]
dest = "other"
''')
    watchlist = load_watchlist(tmp_path / "watchlist.toml")
    reconciler = Reconciler(watchlist)
    try:
        state, digest = reconciler.state, "sha256:" + "1" * 64
        state.record_success(TagKey("app", "1", "linux/amd64", "registry.example.org/team/app", "app:1"),
                             digest, digest, now=1_714_564_800.0)
        state.record_success(TagKey("app", "2", "linux/amd64", "registry.example.org/team/app", "app:2"),
                             digest, digest, now=1_714_564_800.0)
        state.record_failure(TagKey("app", "2", "linux/amd64", "registry.example.org/team/app", "app:2"),
                             "manifest unknown", now=1_714_564_900.0)
        os.symlink(".images/11/" + "1" * 62, tmp_path / "publish" / "app:1")
        os.utime(tmp_path / "publish" / "app:1", (1_714_500_000, 1_714_500_000), follow_symlinks=False)
        # A delivery recorded before a restart: the service reads it from the target's state.
        state.record_delivery(Delivery("app:1", "registry.example.org/team/app:1", digest, None, 1_714_564_790.0,
                                       1_714_564_800.0, None))
        status = Service(watchlist, reconciler).status()
    finally:
        reconciler.close()
    json.dumps(status)  # it is what /status sends
    times = _times(status)
    assert times and all(t is None or ISO.match(t) for t in times), times
    assert status["cycle"] == {"running": False, "started": None, "entries": [], "images": []}
    assert [(d["path"], d["published"]) for d in status["delivery"]["images"]] == [("app:1", "2024-05-01T12:00:00Z")]
    app, other = status["images"]
    rows = {(t["tag"], t["platform"]): t for t in app["tags"]}
    assert len(rows) == 6 and other["tags"][0]["state"] == "waiting"  # no row of dest "app" under "other"
    one, two = rows[("1", "linux/amd64")], rows[("2", "linux/amd64")]
    assert one["state"] == "published" and one["last_success"] == "2024-05-01T12:00:00Z"
    assert one["last_changed"] == iso_utc(1_714_500_000) == "2024-04-30T18:00:00Z"
    assert two["state"] == "failing" and two["last_error"] == "manifest unknown"
    assert two["last_failure"] == "2024-05-01T12:01:40Z" and two["published"] == digest
    assert rows[("3", "linux/arm64")] == {**rows[("3", "linux/arm64")], "state": "waiting",
                                          "path": "app:3@linux-arm64", "published": None}


class _FakeService:
    def __init__(self, watchlist) -> None:
        from reconciler.service.delivery import DeliveryTracker
        from reconciler.service.metrics import Metrics
        self.watchlist, self.metrics, self.healthy = watchlist, Metrics(), True
        self.delivery = DeliveryTracker(watchlist, self.metrics.registry)

    def status(self) -> Dict[str, Any]:
        return _status()


def test_the_app_serves_the_page_at_the_root(tmp_path):
    (tmp_path / "watchlist.toml").write_text('[[image]]\nsource = "registry.example.org/team/app"\ntags = ["1"]\n')
    app = build_app(_FakeService(load_watchlist(tmp_path / "watchlist.toml")), {})

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
            return await client.get(path)

    page = asyncio.run(get("/"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "reconciler" in page.text and 'data-path="app:1"' in page.text
    assert asyncio.run(get("/status")).json() == _status()


# -- in a real browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

# Read the rows in one script: the page swaps its <main> every few seconds, so
# element handles kept across calls could go stale.
ROWS_JS = """
return Array.from(document.querySelectorAll("tr.tag")).map(function (r) {
  var err = r.querySelector("td.error"), digest = r.querySelector(".digest");
  return {path: r.dataset.path, failing: r.classList.contains("failing"),
          digest: digest ? digest.title : null, shown: digest ? digest.textContent : null,
          error: err ? err.textContent : "", color: err ? getComputedStyle(err).color : null,
          background: getComputedStyle(r.querySelector("td")).backgroundColor};
});
"""


def _rgb(css: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # Both paths are given, so Selenium Manager never tries to download a driver or a browser.
    driver = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


def _emulate(driver, width: int, height: int, mobile: bool) -> None:
    """A phone (which honours the viewport meta tag) or a desktop window."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1,
                            "mobile": mobile})


def _screenshot(driver, path: Path) -> Path:
    """The whole page, not only the viewport."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _push(host: str, image, repository: str, tag: str) -> str:
    FixturePusher(host).push(type(image)(image.name, repository, image.blobs, image.manifests, [tag],
                                         image.layer_tars))
    return image.top.digest


def _generic_hook(url: str, body: bytes, secret: str) -> httpx.Response:
    stamp = str(int(time.time()))
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return httpx.post(url, content=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Reconciler-Timestamp": stamp,
        "X-Reconciler-Signature": f"sha256={signature}"})


@pytest.mark.registry
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="headless browser test: Debian's chromium and chromium-driver are not installed "
                           "(apt-get install chromium chromium-driver; .ci/setup installs them)")
def test_status_page_in_a_real_browser(tmp_path, fixture_registry, fixture_images, capsys):
    host = fixture_registry.host
    first = _push(host, fixture_images["basic"], "statuspage/app", "stable")
    port = free_port()
    wl = write_service_watchlist(tmp_path / "watchlist.toml", host, [("statuspage/app", "stable", "app"),
                                                                     ("fixtures/broken-diffid", "latest", "broken")],
                                 listen=f"127.0.0.1:{port}", webhook="generic")
    # The real `reconcile` service, paused inside its first layer (tests/pause_runner.py)
    # so that the page can be seen in the middle of a cycle.
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, "HOOK_TOKEN": HOOK_SECRET, "PYTHONPATH": str(ROOT), "PAUSE_DIR": str(pause),
           "PAUSE_AFTER_ENTRIES": "3"}
    log_path = tmp_path / "service.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "pause_runner.py"), "--watchlist", str(wl),
                             "--log-format", "json"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    driver = None
    shots: List[Path] = []
    try:
        def listening() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(listening, timeout=30, what="the service to listen")
        wait_until((pause / "paused").exists, timeout=60, what="the first cycle to reach its first layer")
        driver = _browser()
        _emulate(driver, 390, 844, mobile=True)
        driver.get(f"{base}/")
        assert driver.title.endswith("reconciler status")
        # A phone: the viewport meta tag is honoured and nothing scrolls sideways.
        assert driver.execute_script("return window.innerWidth") == 390
        cycle = driver.find_element("id", "cycle").text
        assert "Running for" in cycle and "statuspage/app:stable" in cycle, cycle
        assert re.search(r"applying: [1-9]\d* files applied", cycle), cycle
        shots.append(_screenshot(driver, tmp_path / "status-page-cycle-phone.png"))
        (pause / "resume").touch()

        def rows() -> Dict[str, Dict[str, Any]]:
            return {r["path"]: r for r in driver.execute_script(ROWS_JS)}

        # No reload from here on: the page refreshes itself.
        wait_until(lambda: rows().get("broken:latest", {}).get("failing") is True and
                   rows().get("app:stable", {}).get("digest") == first, timeout=60,
                   what="the page to show the failing image and the first publish")
        broken = rows()["broken:latest"]
        # the error as the JSON has it: the layer's content does not match the config's diff_id
        (reason,) = [t["last_error"] for i in httpx.get(f"{base}/status").json()["images"] for t in i["tags"]
                     if t["path"] == "broken:latest"]
        assert "image config says sha256:0000" in reason and broken["error"].startswith(reason), broken
        r, g, b = _rgb(broken["color"])
        assert r >= 150 and g <= 80 and b <= 80, broken["color"]  # the error is red
        assert _rgb(broken["background"])[0] > _rgb(broken["background"])[1], broken["background"]  # so is its row
        app = rows()["app:stable"]
        assert not app["failing"] and app["error"] == "" and app["shown"] == first[:19]
        assert "1 failing" in driver.find_element("tag name", "header").text
        assert "Idle." in driver.find_element("id", "cycle").text

        new = _push(host, fixture_images["edges"], "statuspage/app", "stable")
        assert new != first
        hook = _generic_hook(f"{base}/hooks/generic", json.dumps({"image": f"{host}/statuspage/app:stable"}).encode(),
                             HOOK_SECRET)
        assert hook.status_code == 202, hook.text
        wait_until(lambda: rows().get("app:stable", {}).get("digest") == new, timeout=60,
                   what="the page to show the digest the webhook had published")
        assert rows()["app:stable"]["shown"] == new[:19] and rows()["broken:latest"]["failing"]
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        shots.append(_screenshot(driver, tmp_path / "status-page-phone.png"))
        _emulate(driver, 1280, 800, mobile=False)
        shots.append(_screenshot(driver, tmp_path / "status-page-desktop.png"))
    except Exception as exc:
        # Say what the browser showed and what the service logged, not only "timed out".
        shown = driver.find_element("tag name", "body").text if driver is not None else "(no browser)"
        raise AssertionError(f"{exc}\n--- the page ---\n{shown}\n--- the service log ---\n"
                             f"{log_path.read_text(errors='replace')[-4000:]}") from exc
    finally:
        if driver is not None:
            driver.quit()
        (pause / "resume").touch()  # never leave the service waiting inside a layer
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        finally:
            log.close()
        with capsys.disabled():
            for shot in shots:
                print(f"\nstatus page screenshot: {shot}")
    assert code == 0, log_path.read_text()[-3000:]
