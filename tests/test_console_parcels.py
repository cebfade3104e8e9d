"""The console's Parcels pages over real HTTP on each depot database: the search box (id,
recipient, postcode, merchant), the state filter and pages, and one parcel's page with its
timeline, proof of delivery, webhooks and EPCIS export.

The depot is tests/test_console_lockers.py's (a real service, devices' journals synced as the
wire carries them)."""

from __future__ import annotations

import html
import json
import re

from depot.store import outbox
from depot.store.search import MAX_PAGE
from tests.test_console_lockers import Site
from tests.test_console_lockers import site as site  # the fixture
from tests.web import Console, signed_in

JANSEN = "RB123456785GB"
DE_VRIES = "RR123456785NL"
PHOTO = "ab" * 32


def _text(fragment: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", " ", fragment)).replace("\u202f", " ")
    return re.sub(r"\s+", " ", text).strip()


def found(page: str) -> tuple[str, list[str]]:
    """The "n parcels" line and the parcel ids listed, in order."""
    line = re.search(r'<p class="muted" id="found">(.*?)</p>', page, re.S)
    assert line, page
    return _text(line.group(1)), re.findall(r'<tr id="parcel-([^"]+)">', page)


def a_delivery(s: Site) -> None:
    """JANSEN waits at the depot; DE_VRIES is delivered by van-1 with a proof and a photo."""
    s.receive(JANSEN)
    s.receive(DE_VRIES, recipient="B. de Vries", address="Keizersgracht 12, 1015 CX Amsterdam",
              merchant="Boekhandel-Spui", lat=52.3760, lon=4.8880)
    s.service.book.assign(DE_VRIES, "van-1", 1, 1)
    s.service.process()
    s.emit("van-1", "parcel_loaded", parcel=DE_VRIES, stop=1, shelf=1, raw=DE_VRIES)
    s.emit("van-1", "departed", version=1, loaded=[DE_VRIES], missing=[])
    pod = {
        "scan": DE_VRIES, "scanned_at_ns": 1, "no_fix": False, "distance_m": 12.5, "far": False,
        "fix": {"lat": 52.37611, "lon": 4.88812, "accuracy_m": 4.0, "utc": "09:40:00"},
        "at_ns": 1, "photo": {"sha256": PHOTO, "bytes": 1234, "type": "image/jpeg"},
    }
    s.emit("van-1", "parcel_delivered", parcel=DE_VRIES, stop=1, to="recipient",
           name="B. de Vries", neighbour_address=None, photo=pod["photo"], pod=pod)


def test_one_box_finds_by_id_recipient_postcode_and_merchant(site: Site) -> None:
    a_delivery(site)
    kim = signed_in(site.url, site.service.database, "viewer")
    for query, expected in (
        ("", [DE_VRIES, JANSEN]),  # the most recently changed first
        ("6785gb", [JANSEN]),
        ("jansen", [JANSEN]),
        ("DE VRIES", [DE_VRIES]),
        ("1015 CX", [DE_VRIES]),
        ("1015cx", [DE_VRIES]),  # a postcode typed without its space
        ("boekhandel", [DE_VRIES]),
        ("amsterdam", [DE_VRIES, JANSEN]),
        ("%", []),  # the box's text is text, not a pattern
        ("_", []),
    ):
        status, page = kim.get("/console/parcels?q=" + query.replace(" ", "+").replace("%", "%25"))
        assert status == 200
        assert found(page)[1] == expected, query
    _, page = kim.get("/console/parcels?q=amsterdam&state=delivered")
    line, ids = found(page)
    assert ids == [DE_VRIES] and "1 parcel matching" in line and "delivered" in line
    _, page = kim.get("/console/parcels?state=no_such_state")
    assert "no state" in page and found(page)[1] == [DE_VRIES, JANSEN]


def test_the_list_comes_in_pages(site: Site) -> None:
    from parcel.identify import s10_check_digit

    for n in range(MAX_PAGE + 20):
        serial = f"{n:08d}"
        site.receive(f"RR{serial}{s10_check_digit(serial)}NL", recipient=f"Person {n}")
    kim = signed_in(site.url, site.service.database, "viewer")
    _, first = kim.get("/console/parcels")
    line, ids = found(first)
    assert len(ids) == MAX_PAGE and "120 parcels" in line and "page 1 of 2" in line
    assert len(first.encode()) < 200_000
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert nxt
    _, second = kim.get(html.unescape(nxt.group(1)))
    assert len(found(second)[1]) == 20 and not set(found(second)[1]) & set(ids)


def test_a_parcel_s_page_has_its_timeline_proof_webhooks_and_export(site: Site) -> None:
    a_delivery(site)
    with site.service.database.transaction() as conn:  # the merchant's delivered notice died
        (newest,) = conn.execute(
            "SELECT max(id) FROM webhook_outbox WHERE event_id LIKE ?", ("%:merchant",)
        ).fetchone()
        outbox.mark_dead(conn, int(newest), attempts=12, now_ns=site.clock.wall_ns(),
                         error="HTTP 500 from the receiver", status=500)
    kim = signed_in(site.url, site.service.database, "viewer")
    status, page = kim.get(f"/console/parcels/{DE_VRIES}")
    assert status == 200
    state = re.search(r'id="card-state">(.*?)</div>\s*</div>', page, re.S)
    assert state, page
    assert _text(state[1]).startswith("delivered")
    assert "Keizersgracht 12, 1015 CX Amsterdam" in page and "09:00–12:00" in page
    pod = _text(page[page.index('id="pod-1"'):page.index('data-live="parcel-timeline"')])
    assert "B. de Vries" in pod and "52.37611, 4.88812" in pod
    assert "12.5 m from the stop" in pod and "m from the address" in pod
    assert f'<img class="pod-photo" src="/photos/{PHOTO}"' in page
    timeline = page[page.index('data-live="parcel-timeline"'):]
    for step in ("received", "loaded", "out for delivery", "delivered"):
        assert step in timeline
    hooks = page[page.index('data-live="parcel-webhooks"'):]
    rows = re.findall(r'<tr id="webhook-\d+">(.*?)</tr>', hooks, re.S)
    assert len(rows) == 6  # received, out for delivery, delivered: to merchant and customer
    assert any("dead" in _text(r) and "HTTP 500 from the receiver" in _text(r) for r in rows)
    assert "shop.example" not in page and "notify.example" not in page  # no webhook URLs
    assert f'href="/parcels/{DE_VRIES}/epcis"' in page

    status, _, body = kim.request(f"/parcels/{DE_VRIES}/epcis")  # on the session cookie
    assert status == 200 and DE_VRIES in json.dumps(json.loads(body))

    status, page = kim.get("/console/parcels/RR999999990NL")
    assert status == 404
    status, headers, _ = Console(site.url).request(f"/console/parcels/{DE_VRIES}")
    assert status == 303 and headers["location"].startswith("/signin")
