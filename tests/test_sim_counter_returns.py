"""The simulated day's staffed counter and customers' returns, read back from the depot.

A short simulated day on real parts (a real broker, the depot on a SQLite file, the van,
locker and counter software on pseudo-terminals): the depot's policy sends some failed parcels
to the counter, the courier hands them over there (the staff's check-in scan), customers
collect with their notice's code or QR or the card and their name, one never comes and a
courier takes it back; some customers book a return (tracking page or the shop's API), drop it
at a locker with the code of their notice or hand it to the courier at their door, a van
collects it and scans it back at the depot.
The figures asserted are the depot's own (its events, its book, `customer_returns`).
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import pytest

from simulators.counter_day import (
    CollectionPoints,
    cards_told,
    signature_strokes,
)
from simulators.day import DayPlan, _print_summary, run_day
from simulators.locker_day import SiteKeys
from simulators.parcels import Label
from simulators.webhooks import WebhookReceiver


@pytest.mark.slow
def test_a_counter_checks_in_and_hands_out_and_a_return_goes_back_to_the_depot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Seed 2 of this plan (about 35 s): five parcels go to the counter, three are collected
    # (card, QR), two expire and a courier takes one; six returns are booked and come back.
    plan = DayPlan(
        vans=3, lockers=2, parcels_per_van=25, days=2, speed=8000, seed=2, return_share=0.1
    )
    seen: dict[str, Any] = {}

    def keep(_report: dict[str, Any], depot: Any) -> None:
        returns = depot.store.query(
            "SELECT return_id, handover, locker FROM customer_returns "
            "WHERE at_depot_ns IS NOT NULL"
        )
        seen["returns"] = {
            str(rid): (str(how), str(locker), depot.book.parcel(str(rid)))
            for rid, how, locker in returns
        }
        picked = depot.store.query(
            "SELECT payload FROM events WHERE device='counter-1' AND kind='parcel_picked_up'"
        )
        seen["picked"] = [json.loads(str(p)) for (p,) in picked]
        seen["states"] = {p["parcel"]: depot.book.parcel(p["parcel"]) for p in seen["picked"]}
        seen["methods"] = depot.book.outcome_counts(counters=["counter-1"])
        seen["counter_site"] = [
            (s.kind, s.capacity) for s in depot.config.lockers if s.name == "counter-1"
        ]

    report = run_day(plan, linger=keep)
    assert report["ok"] is True and report["unaccounted_parcels"] == 0

    # The depot lists the counter as a site of its own kind, with its shelves as capacity.
    assert seen["counter_site"] == [("counter", 30)]

    # The counter: checked in by the staff's scan, handed out, and what expired went back.
    counter = report["counter"]["counter-1"]
    assert counter["checked_in"] >= 2 and counter["handed_out"] >= 1, counter
    assert counter["checked_in"] >= counter["handed_out"] + counter["expired"]
    assert counter["expired"] >= counter["returned"] >= 1, counter
    assert counter["gave_up"] == {} and counter["step_errors"] == 0, counter
    assert len(seen["picked"]) == counter["handed_out"]
    for doc in seen["picked"]:
        # Handed out against a credential and the name the staff typed.
        assert doc["method"] in ("code", "qr", "card") and doc["name"], doc
        assert seen["states"][doc["parcel"]]["state"] == "picked_up"
    assert seen["methods"]["deliveries_by_method"]["counter"] == counter["handed_out"]

    # Customers' returns, as the depot counts them: every step reached, in order.
    # Dropped into a locker, or handed to a courier at the door (which is its collection).
    returns = report["customer_returns"]
    assert returns["booked"] >= returns["dropped"] + returns["at_door"], returns
    assert returns["dropped"] + returns["at_door"] >= returns["collected"] >= returns["at_door"]
    assert returns["collected"] >= returns["at_depot"] >= 1, returns
    assert returns["at_door"] >= 1, returns
    assert len(seen["returns"]) == returns["at_depot"]
    for rid, (how, locker, info) in seen["returns"].items():
        assert rid.startswith("RT")
        assert (how, locker[:7]) in (("locker", "locker-"), ("door", "")), (how, locker)
        assert info["state"] == "returned_to_sender", info
    assert {how for how, _, _ in seen["returns"].values()} == {"locker", "door"}
    customers = report["returning_customers"]
    told = customers["told_code"] + customers["for_the_door"]
    assert told == customers["booked_on_page"] + customers["booked_by_shop"], customers
    assert customers["booked_on_page"] >= 1 and customers["booked_by_shop"] >= 1, customers
    assert customers["step_errors"] == 0
    # Each door return the customer had ready was scanned at the door by a courier.
    couriers = report["couriers_at_the_door"]
    assert couriers["returns_picked_up"] == returns["at_door"], couriers

    # The summary says both in words, within 100 columns.
    _print_summary(report)
    out = capsys.readouterr().out
    assert f"customers' returns: {returns['booked']} booked" in out
    assert f"counter-1: {counter['checked_in']} parcels checked in" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_a_run_without_lockers_or_counters_has_no_collection_points() -> None:
    # The same day without any site: no counter figures, and no customer can book a return
    # to drop (the defaults stay as they were for a day without lockers).
    report = run_day(DayPlan(vans=1, lockers=0, parcels_per_van=8, days=1, speed=8000, seed=3))
    assert report["ok"] is True
    assert report["counter"] == {} and report["returning_customers"] is None
    assert report["customer_returns"] == {
        "booked": 0, "dropped": 0, "at_door": 0, "collected": 0, "at_depot": 0
    }


def test_couriers_bring_to_the_kind_of_site_the_manifest_names() -> None:
    class Site:
        def __init__(self, names: list[str]) -> None:
            self.names = names
            self.brought: list[str] = []

        def bring(self, van: str, label: Any, parcel: str, site: str, at_h: float) -> bool:
            self.brought.append(site)
            return True

        def collect(self, van: str, site: str, at_h: float) -> list[str]:
            return [f"{site}-parcel"]

    label = Label("RR123456785NL", "]C0", "post")
    lockers, counters = Site(["locker-1"]), Site(["counter-1"])
    points = CollectionPoints(lockers, counters)  # type: ignore[arg-type]
    assert points.bring("van-1", label, "P1", "counter-1", 9.0)
    assert points.bring("van-1", label, "P2", "locker-1", 9.0)
    assert counters.brought == ["counter-1"] and lockers.brought == ["locker-1"]
    assert points.collect("van-1", "counter-1", 10.0) == ["counter-1-parcel"]
    only_counters = CollectionPoints(None, counters)  # type: ignore[arg-type]
    assert only_counters.bring("van-1", label, "P3", "locker-9", 9.0) is False


def test_a_counter_without_lockers_gets_keys_of_its_own() -> None:
    keys = SiteKeys.of(None)
    assert keys.command_signing_pem != keys.sealing_pem
    assert keys.command_public and keys.sealing_public


def test_a_customer_reads_the_card_code_only_from_a_verified_notice() -> None:
    import hashlib
    import hmac
    import time
    import urllib.error
    import urllib.request

    secret = b"whsec-customer"
    with WebhookReceiver({"customer": secret}) as receiver:
        for parcel, body, sign in (
            ("P1", {"parcel": "P1", "details": {"card": "ABCD-2345"}}, True),
            ("P2", {"parcel": "P2", "details": {"card": "WXYZ-6789"}}, False),
            ("P3", {"parcel": "P3", "details": {}}, True),
        ):
            raw = json.dumps(body).encode()
            stamp = str(int(time.time()))
            mac = hmac.new(secret, stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
            request = urllib.request.Request(receiver.url("/customer"), data=raw, method="POST")
            request.add_header("X-Lastmile-Signature", f"t={stamp},v1={mac if sign else '0'}")
            request.add_header("X-Lastmile-Key-Id", "customer")
            request.add_header("X-Lastmile-Event-Id", parcel)
            with contextlib.suppress(urllib.error.HTTPError):  # the unsigned one: 401
                urllib.request.urlopen(request, timeout=5).close()
        assert cards_told(receiver) == {"P1": "ABCD-2345"}


def test_a_signature_drawn_at_the_desk_is_one_the_counter_keeps() -> None:
    from edge.signature import Signature

    for seed in range(20):
        doc = signature_strokes(random.Random(seed))
        Signature.from_doc(doc)  # raises on any bound the van and the counter enforce
