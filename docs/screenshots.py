"""Make the README's screenshots of the console and a customer's page.

    .venv/bin/python docs/screenshots.py        # about a minute: a simulated day, then Chromium

Runs the simulated days (3 vans, 2 lockers, a 72-hour locker hold so that parcels still wait
in lockers at the end), keeps the depot up as `lastmile sim --ui` does, signs in through the
real form in Debian's Chromium and saves docs/screenshots/{today,fleet,lockers,customer}.png.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))


def shoot(report: dict[str, Any], service: Any) -> None:
    from playwright.sync_api import sync_playwright

    from depot.web.auth import add_user
    from tests.browser import CHROMIUM, CHROMIUM_ARGS, sign_in

    password = secrets.token_urlsafe(12)
    add_user(service.database, "operator", "operator", password)
    base = service.api.url
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        desk = browser.new_page(viewport={"width": 1400, "height": 1000})
        sign_in(desk, base, "operator", password)
        for name, path in (("today", "/console"), ("fleet", "/console/fleet"),
                           ("lockers", "/console/lockers")):
            desk.goto(base + path)
            desk.wait_for_timeout(500)
            desk.screenshot(path=str(OUT / f"{name}.png"), full_page=False)
        waiting = service.book.parcels("in_locker")
        if waiting:
            link = service.tracking_link(str(waiting[0]["parcel"]))
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(base + link[link.index("/t/"):])
            phone.screenshot(path=str(OUT / "customer.png"), full_page=True)
        browser.close()
    print("screenshots in", OUT)


def main() -> None:
    from simulators.day import DayPlan, run_day

    run_day(DayPlan(seed=4, locker_hold_h=72.0), linger=shoot)


if __name__ == "__main__":
    main()
