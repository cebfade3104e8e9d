"""Vehicles of different sizes: `[[vehicles]]` in depot.toml, planning within each one's load
and shift, what waits for another day and why, and the depot's day plan on a real SQLite book.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from depot.config import DepotConfig, DepotConfigError, load_depot_config
from depot.customer import _words
from depot.imports import ParcelRecord
from depot.routing import DEFERRAL_REASONS, RoutePlan, plan_routes, route_length_m
from depot.service import DepotService
from depot.vehicles import TYPES, Load, Vehicle, round_hours
from parcel.geo import distance_m
from parcel.identify import s10_check_digit

DEPOT = (52.3676, 4.9041)
KM_LAT = 1 / 111.195  # degrees of latitude in a kilometre (haversine, as parcel.geo)
KM_LON = KM_LAT / math.cos(math.radians(DEPOT[0]))
DAY, NEXT_DAY = "2026-11-21", "2026-11-22"
T0 = 1_795_046_400 * 10**9 + 6 * 3600 * 10**9


def s10(n: int) -> str:
    serial = f"{n:08d}"
    return f"RR{serial}{s10_check_digit(serial)}NL"


def record(n: int, km_north: float, km_east: float = 0.0, **kw: Any) -> ParcelRecord:
    fields: dict[str, Any] = {
        "id": s10(n),
        "raw": s10(n),
        "kind": "s10",
        "recipient": f"R{n}",
        "address": f"Street {n}",
        "lat": DEPOT[0] + km_north * KM_LAT,
        "lon": DEPOT[1] + km_east * KM_LON,
        "merchant": "shop-a",
        "webhook": "https://shop-a.example/h",
    }
    fields.update(kw)
    return ParcelRecord(**fields)


def accounted(plan: RoutePlan, records: list[ParcelRecord]) -> None:
    """Every record on exactly one stop of one round or deferred, once; nothing else."""
    seen = Counter(p for stops in plan.values() for s in stops for p in s.parcels)
    seen.update(d.parcel for d in plan.deferred)
    assert sorted(seen) == sorted(r.id for r in records)
    assert set(seen.values()) == {1}
    assert all(d.reason in DEFERRAL_REASONS for d in plan.deferred)


def within_limits(plan: RoutePlan) -> None:
    for name, stops in plan.items():
        v = plan.vehicles[name]
        records = [r for s in stops for r in s.records]
        assert v.holds(Load.of(records)), name
        assert all(v.lifts(r) for r in records), name
        hours = v.hours(route_length_m(DEPOT, stops), len(stops))
        assert v.within_shift(hours), (name, hours)


# --- depot.toml ---------------------------------------------------------------------------------


def write_config(tmp_path: Path, vehicles: str) -> Path:
    path = tmp_path / "depot.toml"
    path.write_text(
        f'[depot]\nlat = 52.3676\nlon = 4.9041\nvans = ["van-1", "van-2"]\n\n{vehicles}',
        encoding="utf-8",
    )
    return path


def test_vehicles_in_the_config_and_vans_without_an_entry(tmp_path: Path) -> None:
    config = load_depot_config(
        write_config(
            tmp_path,
            '[[vehicles]]\nname = "van-2"\nshift_h = 6\nstop_min = 3\n\n'
            '[[vehicles]]\nname = "bike-1"\ntype = "cargo_bike"\nvolume_l = 1500\n',
        )
    )
    assert config.vans == ["van-1", "van-2", "bike-1"]  # a vehicle entry joins the fleet
    van_1, van_2, bike = config.fleet()
    assert van_1 == Vehicle("van-1", "van", 150, 800.0, 8000.0, 8.0, 25.0, 2.5, None)
    assert (van_2.type, van_2.shift_h, van_2.stop_min, van_2.parcels) == ("van", 6.0, 3.0, 150)
    assert bike == Vehicle("bike-1", "cargo_bike", 40, 150.0, 1500.0, 6.0, 15.0, 2.0, 25.0)
    assert config.fleet(["van-9"]) == [Vehicle.of_type("van-9", "van")]
    # No [[vehicles]] at all: as before, the vans of depot.vans, each a van with the defaults.
    plain = load_depot_config(write_config(tmp_path, ""))
    assert plain.vans == ["van-1", "van-2"] and plain.vehicles == {}
    assert [v.type for v in plain.fleet()] == ["van", "van"]


@pytest.mark.parametrize(
    ("vehicles", "message"),
    [
        ('[[vehicles]]\nname = "v"\ntype = "truck"', r"vehicles\[0\]\.type must be one of"),
        ('[[vehicles]]\nname = "v"\nparcels = 0', r"vehicles\[0\]\.parcels must be a whole"),
        ('[[vehicles]]\nname = "v"\nparcels = 12.5', r"vehicles\[0\]\.parcels must be a whole"),
        ('[[vehicles]]\nname = "v"\nweight_kg = "heavy"', r"vehicles\[0\]\.weight_kg must be"),
        ('[[vehicles]]\nname = "v"\nshift_h = 25', r"vehicles\[0\]\.shift_h .* at most 24"),
        ('[[vehicles]]\nname = "v"\nspeed_kmh = -3', r"vehicles\[0\]\.speed_kmh must be"),
        ('[[vehicles]]\nname = "v"\nstop_min = true', r"vehicles\[0\]\.stop_min must be"),
        ('[[vehicles]]\nname = "v"\ncolour = "red"', r"vehicles\[0\]\.colour is not a vehicle"),
        ('[[vehicles]]\ntype = "van"', r"vehicles\[0\]\.name must be"),
        (
            '[[vehicles]]\nname = "v"\n[[vehicles]]\nname = "w"\n[[vehicles]]\nname = "v"',
            r"vehicles\[2\]\.name 'v' has an entry already",
        ),
        ('[vehicles]\nname = "v"', r"\[\[vehicles\]\] must be an array of tables"),
    ],
)
def test_a_bad_vehicle_setting_is_one_error_naming_it(
    tmp_path: Path, vehicles: str, message: str
) -> None:
    with pytest.raises(DepotConfigError, match=message):
        load_depot_config(write_config(tmp_path, vehicles))


def test_round_hours_are_straight_line_km_over_speed_plus_stop_time() -> None:
    van = Vehicle.of_type("van-1")
    five_km_north = (DEPOT[0] + 5 * KM_LAT, DEPOT[1])
    # 10 km there and back at 25 km/h, and one stop of 2.5 minutes.
    assert round_hours(van, DEPOT, [five_km_north]) == pytest.approx(0.4 + 2.5 / 60, rel=1e-3)
    assert round_hours(van, DEPOT, []) == 0.0


# --- planning within limits ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_a_bike_never_gets_a_parcel_over_its_weight_while_a_van_takes_it(seed: int) -> None:
    rng = random.Random(seed)
    records = []
    for i in range(60):
        b, r = math.radians(rng.uniform(0, 360)), rng.uniform(0.3, 3.0)
        heavy = i % 4 == 0
        kg = rng.uniform(26.0, 40.0) if heavy else rng.uniform(0.5, 12.0)
        records.append(record(i + 1, r * math.cos(b), r * math.sin(b), weight_kg=round(kg, 1)))
    fleet = [
        Vehicle.of_type("bike-1", "cargo_bike"),
        Vehicle.of_type("van-1"),
        Vehicle.of_type("bike-2", "cargo_bike", weight_kg=60.0),  # a small one: soon full
    ]
    plan = plan_routes(records, fleet, DEPOT)
    accounted(plan, records)
    within_limits(plan)
    for name in ("bike-1", "bike-2"):
        on_bike = [r for s in plan[name] for r in s.records]
        assert on_bike, "the bikes have their share of the doors"
        assert max(r.weight_kg for r in on_bike) <= 25.0
        assert sum(r.weight_kg for r in on_bike) <= (plan.vehicles[name].weight_kg or 0.0)
    heavy_ids = {r.id for r in records if r.weight_kg > 25.0}
    assert heavy_ids <= {p for s in plan["van-1"] for p in s.parcels}  # none waits for it
    assert plan.deferred == ()


def test_a_day_too_big_defers_whole_stops_with_reasons_and_drops_nothing() -> None:
    rng = random.Random(5)
    records: list[ParcelRecord] = []
    n = 0
    for door in range(40):
        b, km = math.radians(rng.uniform(0, 360)), rng.uniform(0.5, 6.0)
        for _ in range(1 + door % 3):  # doors of 1, 2 and 3 parcels
            n += 1
            records.append(record(n, km * math.cos(b), km * math.sin(b), address=f"Door {door}"))
    vans = [Vehicle.of_type(f"van-{i}", parcels=25) for i in (1, 2)]
    plan = plan_routes(records, vans, DEPOT)
    accounted(plan, records)
    within_limits(plan)
    assert {plan.load(v).parcels for v in ("van-1", "van-2")} <= set(range(20, 26))
    assert len(records) == 79 and len(plan.deferred) >= 79 - 50
    assert {d.reason for d in plan.deferred} == {"vehicle_full"}
    assert plan.deferred_by_reason() == {"vehicle_full": len(plan.deferred)}
    # Whole doors wait, never part of one.
    by_door: dict[str, set[str]] = {}
    for r in records:
        by_door.setdefault(r.address, set()).add(r.id)
    waiting = {d.parcel for d in plan.deferred}
    for address, parcels in by_door.items():
        assert parcels <= waiting or not parcels & waiting, address


def test_the_shift_limit_defers_the_farthest_stops() -> None:
    # Ten doors due north, 0.5 km apart; a 30-minute shift at 25 km/h and 2.5 min a stop
    # holds the six nearest (2 x 3 km / 25 + 6 x 2.5 min = 0.49 h; seven would be 0.57 h).
    records = [record(i, 0.5 * i) for i in range(1, 11)]
    records.append(record(11, 7.0))  # 2 x 7 km at 25 km/h alone is over half an hour
    van = Vehicle.of_type("van-1", shift_h=0.5)
    plan = plan_routes(records, [van], DEPOT)
    accounted(plan, records)
    within_limits(plan)
    assert [s.parcels[0] for s in plan["van-1"]] == [s10(i) for i in range(1, 7)]
    reasons = {d.parcel: d.reason for d in plan.deferred}
    assert reasons == {
        **{s10(i): "shift_full" for i in range(7, 11)},
        s10(11): "too_far_for_any_shift",
    }
    assert plan.hours("van-1") <= 0.5
    # A parcel that already waited a day is kept; a nearer one that did not waits instead.
    again = plan_routes(records, [van], DEPOT, waited={s10(9): 1})
    kept = {p for s in again["van-1"] for p in s.parcels}
    assert s10(9) in kept and s10(6) not in kept
    within_limits(again)


def test_a_full_sector_hands_stops_to_a_round_with_room() -> None:
    # All doors lie east, 8 kg each; the sweep gives each van half of them, but van-1 takes
    # only 20 kg: the doors it gives up go on van-2's round rather than wait.
    records = [record(i, 0.2 * (i % 3), 0.4 * i, weight_kg=8.0) for i in range(1, 17)]
    small = Vehicle.of_type("van-1", weight_kg=20.0)
    plan = plan_routes(records, [small, Vehicle.of_type("van-2")], DEPOT)
    accounted(plan, records)
    within_limits(plan)
    assert plan.load("van-1") == Load(2, 16.0, 20.0)
    assert plan.load("van-2").parcels == 14
    assert plan.deferred == ()


def test_what_no_vehicle_can_carry_waits_with_its_own_reason() -> None:
    van = Vehicle.of_type("van-1", parcels=3)
    records = [
        record(1, 1.0, weight_kg=900.0),  # over the van's 800 kg
        record(2, 1.2, volume_l=9000.0),  # over its 8000 l
        record(3, 3.0),  # farther than the flats: it gives way when the van is full
        *(record(n, 2.0, address="Flats 1") for n in range(4, 9)),  # 5 parcels, one door
    ]
    plan = plan_routes(records, [van], DEPOT)
    accounted(plan, records)
    within_limits(plan)
    reasons = {d.parcel: d.reason for d in plan.deferred}
    assert reasons[s10(1)] == "too_heavy_for_any_vehicle"
    assert reasons[s10(2)] == "too_big_for_any_vehicle"
    # The door with more than the van holds is split: three go, two follow the next day;
    # the single door then has no room left.
    at_flats = [p for s in plan["van-1"] for p in s.parcels if p in {s10(n) for n in range(4, 9)}]
    assert len(at_flats) == 3
    assert sorted(p for p, why in reasons.items() if why == "stop_too_big") == sorted(
        {s10(n) for n in range(4, 9)} - set(at_flats)
    )
    assert reasons[s10(3)] == "vehicle_full"


def test_a_plan_within_limits_is_the_same_whatever_the_record_order() -> None:
    rng = random.Random(8)
    records = [
        record(i, rng.uniform(-9, 9), rng.uniform(-9, 9), weight_kg=rng.choice([1.0, 30.0]))
        for i in range(1, 301)
    ]
    fleet = [Vehicle.of_type("van-1"), Vehicle.of_type("bike-1", "cargo_bike")]
    first = plan_routes(records, fleet, DEPOT)
    shuffled = list(records)
    random.Random(2).shuffle(shuffled)
    again = plan_routes(shuffled, fleet, DEPOT)
    assert again == first and again.deferred == first.deferred and first.deferred
    accounted(first, records)
    within_limits(first)


def test_plans_with_bare_names_and_no_limits_are_as_before() -> None:
    records = [record(i, (i % 7) - 3.0, (i % 5) - 2.0) for i in range(1, 41)]
    plan = plan_routes(records, ["a", "b"], DEPOT)
    accounted(plan, records)
    assert plan.deferred == () and sorted(len(s) for s in plan.values()) == [20, 20]
    assert plan == {name: plan[name] for name in ("a", "b")}  # still a mapping of rounds
    assert all(v.shift_h is None for v in plan.vehicles.values())
    assert set(TYPES) == {"van", "cargo_bike", "on_foot"}
    far = record(99, 300.0)  # 600 km there and back: no shift, so it goes
    assert plan_routes([far], ["a"], DEPOT)["a"][0].parcels == (s10(99),)
    assert distance_m(*DEPOT, far.lat, far.lon) > 299_000


# --- the depot's day plan -------------------------------------------------------------------


class StepClock:
    """A synchronised wall clock that moves one second per reading."""

    def __init__(self, wall: int = T0) -> None:
        self.wall = wall
        self.boot_id = "test-boot"

    def monotonic_ns(self) -> int:
        return self.wall - T0

    def wall_ns(self) -> int:
        self.wall += 10**9
        return self.wall

    def wall_synced(self) -> bool:
        return True


@pytest.fixture
def service(tmp_path: Path) -> Iterator[DepotService]:
    config = DepotConfig(
        database=tmp_path / "depot.db",
        lat=DEPOT[0],
        lon=DEPOT[1],
        vans=["van-1"],
        vehicles={"van-1": Vehicle.of_type("van-1", parcels=5)},
    )
    s = DepotService(config, clock=StepClock())
    yield s
    s.stop()


def receive(s: DepotService, r: ParcelRecord) -> None:
    s.book.receive(r.to_doc(), now_ns=T0, source="import")


def test_the_day_plan_leaves_what_does_not_fit_at_the_depot_and_plans_it_next(
    service: DepotService,
) -> None:
    first = [record(i, 0.5 * i, weight_kg=3.0) for i in range(1, 9)]
    for r in first:
        receive(service, r)
    plan = service.plan_day(DAY)
    (manifest,) = plan.manifests.values()
    assert sorted(manifest.parcels) == [s10(i) for i in range(1, 6)]
    assert plan.deferred == {s10(i): "vehicle_full" for i in range(6, 9)}  # the farthest
    assert plan.deferred_by_reason() == {"vehicle_full": 3}
    for i in range(6, 9):
        track = service.book.track(s10(i))
        assert track["state"] == "received" and track["van"] is None
        (entry,) = [e for e in track["timeline"] if e["step"] == "deferred"]
        assert entry["details"] == {
            "day": DAY,
            "reason": "vehicle_full",
            "reason_text": DEFERRAL_REASONS["vehicle_full"],
        }
        assert entry["device"] == "depot"
    # The customer's page says it waits, in words (the reason is for the operator).
    assert _words("deferred", {"reason": "vehicle_full"}, {}) == (
        "Waiting at the depot for a later round"
    )
    # Planned again the same day: one entry a day, whatever the number of plans.
    service.plan_day(DAY)
    steps = [e["step"] for e in service.book.track(s10(8))["timeline"]]
    assert steps.count("deferred") == 1
    # The next day, with new parcels nearer the depot than any of them: the three that
    # waited go first. (Today's five stay `received` here, as no van scanned them.)
    for r in [record(20 + i, 0.1 * i, weight_kg=3.0) for i in range(1, 6)]:
        receive(service, r)
    nxt = service.plan_day(NEXT_DAY)
    assert {s10(i) for i in range(6, 9)} <= set(nxt.manifests["van-1"].parcels)
    assert len(nxt.manifests["van-1"].parcels) == 5 and len(nxt.deferred) == 8


# --- bench route ------------------------------------------------------------------------------


def test_bench_route_reports_each_round_against_its_limits() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "route", "--json", "--repeat", "1"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["fleet"] == {"van": 3, "cargo_bike": 1, "on_foot": 0}
    bike = r["rounds"]["bike-1"]
    assert bike["type"] == "cargo_bike" and 0 < bike["parcels"] <= bike["parcels_max"] == 40
    assert bike["heaviest_parcel_kg"] <= bike["parcel_kg_max"] == 25.0
    assert all(f["hours"] <= f["shift_h"] for f in r["rounds"].values())
    assert r["parcels_planned"] + r["parcels_deferred"] == r["parcels"] == 400
    assert sum(r["deferred_by_reason"].values()) == r["parcels_deferred"]
    assert r["km_planned"] <= r["km_nearest_neighbour_only"] < r["km_import_order"]
    assert set(r["baseline_rounds_over_shift"]) == {"nearest_neighbour_only", "import_order"}
    assert r["targets_met"]["all"] is True
