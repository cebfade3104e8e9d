"""The simulated day at the door: customers' wishes, refusals, signatures, ID checks, cards.

The world's side is drawn from the seed (simulators.delivery_day.draw_door) and must be what
the depot's import accepts and what the van's screen says; the courier reads the screen's
words (ScreenCare), so a change of those words on the van must fail here. The day itself is
judged by what the depot stored (`lastmile sim --json`): no delivery broke a preference, every
refusal the couriers met reached the depot once, signatures and safe places were delivered,
and customers used their cards' codes on the depot's real card page.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from depot.imports import read_import
from edge.delivery import care_notes
from edge.signature import Signature
from parcel.care import Care
from parcel.identify import s10_check_digit
from simulators.delivery_day import ScreenCare, draw_door, draw_signature
from tests.test_sim_day import simulated_day


def _row(i: int, columns: dict[str, object], *, hooked: bool) -> dict[str, object]:
    serial = f"{i:08d}"
    row: dict[str, object] = {
        "parcel": f"RR{serial}{s10_check_digit(serial)}NL",
        "recipient": "A. Jansen",
        "address": "Damrak 1, Amsterdam",
        "lat": 52.37,
        "lon": 4.89,
        "merchant": "shop-a",
        "webhook": "http://127.0.0.1:9/m",
        **columns,
    }
    if hooked:
        row["customer_webhook"] = "http://127.0.0.1:9/c"
    return row


def test_the_drawn_wishes_have_the_shares_asked_and_the_depot_imports_them_as_drawn() -> None:
    n = 4000
    drawn = [
        draw_door(f"PKG-{i:05d}", 7, "A. Jansen", locker_ok=i % 5 != 0, hooked=i % 7 != 0)
        for i in range(n)
    ]
    wishes = [w for w, _door, _next in drawn]
    share = Counter[str]()
    for w in wishes:
        share["signature"] += w.signature
        share["age"] += w.age_min is not None
        share["neighbour"] += w.neighbour
        share["locker_instead"] += w.locker_instead
    unsigned = [w for w in wishes if not w.signature and w.age_min is None]
    assert 0.36 <= sum(w.safe_place for w in unsigned) / len(unsigned) <= 0.44
    assert 0.06 <= share["signature"] / n <= 0.10
    assert 0.025 <= share["age"] / n <= 0.055
    assert 0.88 <= share["neighbour"] / n <= 0.92
    assert 0 < share["locker_instead"] / n < 0.05
    assert all(w.safe_place_note for w in wishes if w.safe_place)
    # Who opens an age-checked door: mostly an adult with an ID, some without, some under 18.
    at_door = [d for _w, d, _n in drawn]
    assert any(d.id_type is None for d in at_door)
    assert any(d.birth_year >= 2008 and d.id_type is not None for d in at_door)
    # The merchant's file carries them; the depot reads back exactly the care drawn.
    rows = [
        _row(i, w.import_columns(), hooked=i % 7 != 0) | {"locker_ok": i % 5 != 0}
        for i, w in enumerate(wishes)
    ]
    result = read_import(json.dumps({"parcels": rows}).encode(), format="json")
    assert result.errors == []
    for record, w in zip(result.records, wishes, strict=True):
        want = Care(
            safe_place=w.safe_place,
            safe_place_note=w.safe_place_note,
            neighbour=w.neighbour,
            signature=w.signature,
            age_min=w.age_min,
            locker_instead=w.locker_instead,
        )
        assert record.care == want
        assert record.access_code == w.access_code


@pytest.mark.parametrize(
    "care",
    [
        Care(),
        Care(safe_place=True, safe_place_note="behind the blue gate"),
        Care(safe_place=True),
        Care(neighbour=False),
        Care(signature=True),
        Care(age_min=18, neighbour=False),
        Care(locker_instead=True, safe_place=True, safe_place_note="porch"),
    ],
)
def test_the_courier_reads_what_the_van_screen_says(care: Care) -> None:
    seen = ScreenCare.read(care_notes(care))
    for to in ("recipient", "neighbour", "safe_place"):
        # What the courier thinks allowed is what the van allows with the proof given.
        allowed_by_van = care.refusal(to, signed=True, id_check=None, year=2026) in (
            None,
            "id_check_required",
        )
        assert seen.allows(to) == allowed_by_van, to
    assert seen.signature == care.needs_signature
    assert seen.id_check == (care.age_min is not None)
    # A parcel the screen names no care for: everything allowed, as before care existed.
    assert ScreenCare.read(None) == ScreenCare()


def test_a_drawn_signature_is_one_the_van_keeps() -> None:
    rng = random.Random(3)
    for _ in range(200):
        doc = draw_signature(rng)
        signature = Signature.from_doc(doc)
        assert 1 <= len(signature.strokes) <= 3
        assert all(len(stroke) >= 12 for stroke in signature.strokes)


@pytest.mark.slow
def test_a_simulated_day_at_the_door_as_the_depot_recorded_it() -> None:
    # Seed 5, 2 vans of 40 parcels: couriers try forbidden handovers, parcels are signed for
    # and ID-checked, cards are left and some customers choose on the page.
    r = simulated_day("--vans", "2", "--parcels", "40", "--seed", "5", "--speed", "6000")
    door = r["couriers_at_the_door"]
    # Nothing the customer forbade was recorded as delivered.
    assert r["preference_violations"] == 0
    # Every refusal the couriers met at the door reached the depot, once.
    assert r["preference_refusals"] > 0
    assert r["preference_refusals"] == sum(door["refused_by_the_van"].values())
    assert r["tried_forbidden"] > 0
    methods = r["deliveries_by_method"]
    assert set(methods) == {"recipient", "neighbour", "safe_place", "signature", "locker",
                            "counter"}
    assert methods["safe_place"] > 0
    assert methods["signature"] == door["signed"] > 0
    assert door["id_checked"] > 0
    # Every card written reached the depot; customers read its code in their notice, and some
    # used it on the card page to choose what happens next.
    cards, customers = r["cards"], r["card_customers"]
    assert cards["left"] == door["cards_written"] == customers["found"] > 0
    assert customers["code_from_notice"] > 0 and customers["notice_disagreed"] == 0
    assert 0 < cards["used_on_page"] <= sum(customers["chose"].values())
    assert customers["step_errors"] == 0 and customers["gave_up"] == {}
    assert r["ok"] is True
