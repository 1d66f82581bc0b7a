"""The status page in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium; nothing is downloaded): a value changed in the simulator shows on
the page within a bound, a device going down shows as down, markup in a profile is shown
as text, and screenshots are saved in the test's temporary folder.

Skipped, with the reason, where no Chromium is installed; CI (`.ci/run`) installs it and
sets CELLCTL_REQUIRE_BROWSER=1, which turns that skip into a failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus import SimModbusServer

from cellctl.localbroker import Mosquitto
from cellctl.testing import modbus_device, running_daemon, write_config

pytestmark = pytest.mark.timeout(120)

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None
)
VALUE_BOUND = 5.0  # seconds from a change in the device to the page (poll 50 ms + push 250 ms)
DOWN_BOUND = 15.0  # seconds from the device going away to "down" on the page
MARKUP = '<b id="injected">V</b>'


def _missing() -> str | None:
    if CHROMIUM is None:
        return "no Chromium (Debian: apt-get install chromium chromium-driver)"
    if CHROMEDRIVER is None:
        return "no chromedriver (Debian: apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("CELLCTL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CELLCTL_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1024,768", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)  # 1024x768: a tablet beside the machine
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and the browser it started


def meter_profile(folder: Path) -> None:
    """The simulator's meter with markup in a unit: the page must show it as text."""
    source = Path(__file__).resolve().parents[1] / "sim_devices/cellctl_sim/profiles/sim-energy-meter.yaml"
    profile = yaml.safe_load(source.read_text(encoding="utf-8"))
    profile["name"] = "meter-with-markup"
    profile["points"][0]["unit"] = MARKUP
    folder.mkdir()
    (folder / "meter-with-markup.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")


async def until(check: Callable[[], Any], bound: float, what: str) -> tuple[Any, float]:
    """Poll the page (in a thread: Selenium blocks) until `check` is truthy; (value, seconds)."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < bound:
        try:
            last = await asyncio.to_thread(check)
        except Exception as exc:  # the element is being replaced: look again
            last = exc
        if last and not isinstance(last, Exception):
            return last, time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"page did not show {what} within {bound} s; last: {last!r}")


async def test_status_page_in_chromium(browser: Any, tmp_path: Path, broker: Mosquitto, unique: str) -> None:
    from selenium.webdriver.common.by import By

    meter_profile(tmp_path / "profiles")
    async with SimModbusServer({1: "energy-meter"}, tick=1.0, seed=2, auto_tick=False) as sim:
        port = await sim.serve_tcp()
        device = modbus_device("meter", "meter-with-markup", port, 1, availability={"offline_after": 1})
        path = write_config(tmp_path, broker.port, [device], cell=unique, status_page={"port": 0},
                            profile_dirs=[str(tmp_path / "profiles")])  # fmt: skip
        async with running_daemon(path) as daemon:
            assert daemon.status_page is not None
            async with asyncio.timeout(10):
                await daemon.status_page.listening.wait()
            await asyncio.to_thread(browser.get, f"http://127.0.0.1:{daemon.status_page.port}/")
            cell = '[data-device="meter"][data-point="voltage_l1"] td'

            def voltage() -> str:
                return str(browser.find_elements(By.CSS_SELECTOR, cell)[1].text)

            await until(lambda: voltage() and browser.find_element(By.ID, "link").get_attribute("data-state") == "live",
                        20, "the first values, live")  # fmt: skip
            # through `until`: a live update may replace the row between finding and reading it
            unit_text, _ = await until(
                lambda: browser.find_elements(By.CSS_SELECTOR, cell)[2].text, 10, "the unit cell"
            )
            assert unit_text == MARKUP  # shown as text ...
            assert (
                await asyncio.to_thread(browser.find_elements, By.ID, "injected") == []
            )  # ... never as markup

            sim.unit(1).set_value("voltage_l1", 241.5)
            _, took = await until(lambda: voltage() == "241.5", VALUE_BOUND, "the new voltage 241.5")
            assert took < VALUE_BOUND
            await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "status-page-live.png"))

            await sim.close()  # the device goes away: connections closed, nothing listens

            def shown_down() -> bool:
                card = browser.find_element(By.CSS_SELECTOR, 'article[data-device="meter"]')
                return card.get_attribute("data-available") == "false" and "down" in card.text

            await until(shown_down, DOWN_BOUND, "the meter as down")
            shot = tmp_path / "status-page-down.png"
            await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 1000
    assert (tmp_path / "status-page-live.png").stat().st_size > 1000
