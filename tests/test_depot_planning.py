"""The depot's planning: imports read row by row, routes planned, failures decided by policy."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from depot.errors import DepotError
from depot.imports import (
    ImportProblem,
    ParcelImportError,
    ParcelRecord,
    read_import,
)
from depot.policy import (
    DELIVERED_CODES,
    FAILURE_REASONS,
    LockerSite,
    NextAction,
    PolicyError,
    ReasonCodes,
    decide_after_failure,
    decide_after_hold_expired,
    decide_after_reservation_refused,
    fits,
)
from depot.routing import (
    PlannedStop,
    RoutingError,
    build_manifest,
    group_stops,
    order_stops,
    plan_routes,
    route_length_m,
)
from parcel.geo import distance_m
from parcel.identify import gs1_mod10, s10_check_digit
from parcel.manifest import Manifest

DEPOT = (52.3676, 4.9041)
KM_LAT = 1 / 111.195  # degrees of latitude per km (spherical Earth, IUGG mean radius)


def s10(n: int, service: str = "RR", country: str = "NL") -> str:
    serial = f"{n:08d}"
    return f"{service}{serial}{s10_check_digit(serial)}{country}"


def sscc(n: int) -> str:
    body = f"0{n:016d}"  # extension digit + GS1 company prefix and serial
    return body + str(gs1_mod10(body))


HEADER = "parcel,recipient,address,lat,lon,window_from,window_to,instructions,merchant,webhook"


def row(**overrides: str) -> dict[str, str]:
    base = {
        "parcel": s10(1),
        "recipient": "A. Jansen",
        "address": "Damrak 1, 1012 LG Amsterdam",
        "lat": "52.3702",
        "lon": "4.8952",
        "window_from": "",
        "window_to": "",
        "instructions": "",
        "merchant": "shop-a",
        "webhook": "https://shop-a.example/hooks/parcels",
    }
    base.update(overrides)
    return base


def csv_bytes(*rows: dict[str, str], header: str = HEADER, sep: str = ",") -> bytes:
    names = header.split(",")
    lines = [sep.join(names)]
    for r in rows:
        cells = []
        for name in names:
            cell = r.get(name, "")
            cells.append(f'"{cell}"' if any(c in cell for c in ',;"\n') else cell)
        lines.append(sep.join(cells))
    return ("\n".join(lines) + "\n").encode()


def record(n: int, lat: float, lon: float, **kw: Any) -> ParcelRecord:
    fields: dict[str, Any] = {
        "id": s10(n),
        "raw": s10(n),
        "kind": "s10",
        "recipient": f"R{n}",
        "address": f"Street {n}",
        "lat": lat,
        "lon": lon,
        "merchant": "shop-a",
        "webhook": "https://shop-a.example/h",
    }
    fields.update(kw)
    return ParcelRecord(**fields)


# --- imports: CSV -----------------------------------------------------------------------------


def test_csv_valid_rows_become_records() -> None:
    result = read_import(
        csv_bytes(
            row(window_from="9:00", window_to="12:00", instructions="ring twice"),
            row(parcel=sscc(7), address="Dam 2", lat="52.373", lon="4.8925"),
        )
    )
    assert result.errors == [] and result.format == "csv"
    first, second = result.records
    assert first == ParcelRecord(
        id=s10(1),
        raw=s10(1),
        kind="s10",
        recipient="A. Jansen",
        address="Damrak 1, 1012 LG Amsterdam",
        lat=52.3702,
        lon=4.8952,
        merchant="shop-a",
        webhook="https://shop-a.example/hooks/parcels",
        window=("09:00", "12:00"),
        instructions="ring twice",
    )
    assert first.size == "S" and first.locker_ok is True and first.customer_webhook is None
    assert (second.id, second.kind, second.window) == (sscc(7), "sscc", None)


def test_csv_aliases_semicolons_and_optional_columns() -> None:
    header = (
        "Parcel ID,Name,Delivery Address,Latitude,Lng,Window,Notes,Shipper,Webhook URL,"
        "Customer Webhook,Locker Size,Accepts Locker,Weight"
    )
    r = {
        "Parcel ID": s10(2).lower(),
        "Name": "B. de Vries",
        "Delivery Address": "Keizersgracht 10",
        "Latitude": "52.38",
        "Lng": "4.88",
        "Window": "14:00-17:30",
        "Notes": "leave with neighbour",
        "Shipper": "shop-b",
        "Webhook URL": "http://shop-b.example:8080/h",
        "Customer Webhook": "https://customer.example/n",
        "Locker Size": "m",
        "Accepts Locker": "no",
        "Weight": "2.5",
    }
    result = read_import(csv_bytes(r, header=header, sep=";"))
    assert result.errors == []
    (rec,) = result.records
    assert rec.id == s10(2)  # canonical: upper case
    assert rec.window == ("14:00", "17:30")
    assert (rec.size, rec.locker_ok) == ("M", False)
    assert rec.customer_webhook == "https://customer.example/n"
    assert result.warnings == [ImportProblem(1, "Weight", "unknown column, ignored")]


def test_csv_with_bom_crlf_and_utf8_text() -> None:
    data = csv_bytes(row(recipient="Zoë Straße", address="Çarşı 3")).replace(b"\n", b"\r\n")
    result = read_import(b"\xef\xbb\xbf" + data)
    assert result.errors == []
    assert result.records[0].recipient == "Zoë Straße"
    utf16 = read_import(("\ufeff" + data.decode()).encode("utf-16-le"), format="csv")
    assert utf16.records == result.records


def test_gs1_codes_with_gs_written_three_ways() -> None:
    result = read_import(
        csv_bytes(
            row(parcel=f"]C100{sscc(1)}<GS>42012345", address="A 1"),
            row(parcel=f"00{sscc(2)}\\x1d42012345", address="A 2"),
            row(parcel=f"00{sscc(3)}\x1d42012345", address="A 3"),
        )
    )
    assert result.errors == []
    assert [r.id for r in result.records] == [sscc(1), sscc(2), sscc(3)]
    assert result.records[0].raw == f"]C100{sscc(1)}\x1d42012345"
    assert {r.kind for r in result.records} == {"sscc"}


BAD_ROWS = [
    ({"parcel": ""}, "parcel", "missing parcel id"),
    ({"parcel": s10(3)[:-3] + "0NL"}, "parcel", "S10 check digit is 0, expected"),
    ({"parcel": "HELLO"}, "parcel", "not a parcel identifier we know"),
    ({"parcel": "1.23457E+17"}, "parcel", "scientific notation"),
    ({"recipient": " "}, "recipient", "missing recipient"),
    ({"address": ""}, "address", "missing address"),
    ({"lat": "north"}, "lat", "is not a number"),
    ({"lat": "52,37"}, "lat", "use a point as the decimal separator"),
    ({"lat": "91"}, "lat", "within ±90"),
    ({"lon": "nan"}, "lon", "within ±180"),
    ({"lon": "-180.5"}, "lon", "within ±180"),
    ({"lat": "0", "lon": "0.0"}, "lat", "not a geocoded address"),
    ({"window_from": "09:00"}, "window_to", "needs both"),
    ({"window_to": "12:00"}, "window_from", "needs both"),
    ({"window_from": "9", "window_to": "12:00"}, "window_from", "HH:MM"),
    ({"window_from": "09:00", "window_to": "24:30"}, "window_to", "HH:MM"),
    ({"window_from": "13:00", "window_to": "12:00"}, "window_to", "ends (12:00) before"),
    ({"instructions": "ring\x07twice"}, "instructions", "control characters"),
    ({"recipient": "A\x00B"}, "recipient", "control characters"),
    ({"merchant": ""}, "merchant", "missing merchant"),
    ({"webhook": ""}, "webhook", "missing webhook"),
    ({"webhook": "ftp://shop.example/x"}, "webhook", "http:// or https://"),
    ({"webhook": "https:///no-host"}, "webhook", "with a host"),
    ({"webhook": "https://[::1/x"}, "webhook", "not a valid URL"),
    ({"webhook": "https://shop.example/a b"}, "webhook", "spaces"),
]


@pytest.mark.parametrize(("change", "field", "reason"), BAD_ROWS)
def test_a_bad_csv_row_is_reported_and_the_others_kept(
    change: dict[str, str], field: str, reason: str
) -> None:
    bad = row(**{"parcel": s10(5), "address": "Bad 1", **change})
    good = row(parcel=s10(6), address="Good 1")
    result = read_import(csv_bytes(row(), bad, good))
    assert [r.id for r in result.records] == [s10(1), s10(6)]
    assert len(result.errors) == 1, result.errors
    (problem,) = result.errors
    assert (problem.line_or_index, problem.field) == (3, field)
    assert reason in problem.reason


def test_optional_columns_validated_too() -> None:
    header = HEADER + ",customer_webhook,size,locker_ok"
    result = read_import(
        csv_bytes(
            row(parcel=s10(1), customer_webhook="mailto:x@y.z"),
            row(parcel=s10(2), size="XL"),
            row(parcel=s10(3), locker_ok="maybe"),
            header=header,
        )
    )
    assert result.records == []
    assert [(p.line_or_index, p.field) for p in result.errors] == [
        (2, "customer_webhook"),
        (3, "size"),
        (4, "locker_ok"),
    ]


def test_every_problem_of_a_row_is_reported() -> None:
    result = read_import(csv_bytes(row(parcel="X", lat="", webhook="nope")))
    assert [p.field for p in result.errors] == ["parcel", "lat", "webhook"]
    assert {p.parcel for p in result.errors} == {"X"}


def test_duplicates_are_an_error_on_the_second_occurrence() -> None:
    result = read_import(
        csv_bytes(
            row(parcel=sscc(9), address="First"),
            row(parcel=s10(2), address="Other"),
            row(parcel=f"]C100{sscc(9)}", address="Second"),  # the same SSCC, scanned as GS1
            row(parcel=s10(2).lower(), address="Third"),
        )
    )
    assert [(r.id, r.address) for r in result.records] == [(sscc(9), "First"), (s10(2), "Other")]
    assert [(p.line_or_index, p.field) for p in result.errors] == [(4, "parcel"), (5, "parcel")]
    assert f"parcel {sscc(9)} is already on line 2" == result.errors[0].reason


def test_a_duplicate_of_a_rejected_row_is_still_a_duplicate() -> None:
    result = read_import(csv_bytes(row(lat="x"), row(address="Fixed")))
    assert result.records == []
    assert [p.field for p in result.errors] == ["lat", "parcel"]


def test_csv_shapes_blank_rows_multiline_cells_and_extra_fields() -> None:
    text = (
        HEADER + "\n\n"
        f'{s10(1)},A,"Line one\nline two",52.1,4.1,,,,m,https://m.example/h\n'
        ",,,,,,,,,\n"
        f"{s10(2)},B,Addr,52.2,4.2,,,,m,https://m.example/h,surplus\n"
        f"{s10(3)},C,Addr 3,52.3,4.3,,,,m,https://m.example/h,,\n"
        f"{s10(4)},D,Addr 4,52.4\n"
    )
    result = read_import(text.encode())
    assert [r.id for r in result.records] == [s10(1), s10(3)]
    assert result.records[0].address == "Line one\nline two"
    assert [(p.line_or_index, p.field) for p in result.errors] == [
        (6, "row"),
        (8, "lon"),
        (8, "merchant"),
        (8, "webhook"),
    ]
    assert "11 fields, the header has 10" in result.errors[0].reason


def test_a_row_that_is_not_utf8_is_rejected_alone() -> None:
    data = csv_bytes(row(), row(parcel=s10(2), recipient="Ren\xe9"))
    data = data.replace("René".encode(), b"Ren\xe9")  # cp1252, as some spreadsheets save
    result = read_import(data)
    assert [r.id for r in result.records] == [s10(1)]
    assert result.errors == [
        ImportProblem(3, "row", "the row is not UTF-8 text (save the file as UTF-8)")
    ]


def test_a_missing_required_column_refuses_the_file_once() -> None:
    result = read_import(b"barcode,recipient,address,lat,lon,merchant\nx,y,z,1,2,m\n")
    assert result.records == []
    assert len(result.errors) == 1
    assert result.errors[0].line_or_index == 1
    assert result.errors[0].field == "webhook"
    assert "accepted names: webhook, webhook_url" in result.errors[0].reason


def test_a_file_without_a_header_row_is_told_so() -> None:
    result = read_import(csv_bytes(row()).split(b"\n", 1)[1])
    assert result.records == []
    assert [(p.line_or_index, p.field) for p in result.errors] == [(1, "file")]
    assert "needs a header row" in result.errors[0].reason


def test_two_columns_for_one_field_refuse_the_file() -> None:
    result = read_import(csv_bytes(row(), header=HEADER + ",barcode"))
    assert result.records == []
    assert result.errors[0].reason == "columns 'parcel' and 'barcode' both mean parcel"


def test_empty_file() -> None:
    assert read_import(b"", format="csv").errors == [
        ImportProblem(None, "file", "the file is empty")
    ]


# --- imports: JSON ----------------------------------------------------------------------------


def json_row(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "parcel": s10(1),
        "recipient": "A. Jansen",
        "address": "Damrak 1",
        "lat": 52.3702,
        "lon": 4.8952,
        "merchant": "shop-a",
        "webhook": "https://shop-a.example/h",
    }
    doc.update(overrides)
    return doc


def test_json_list_and_parcels_object() -> None:
    rows = [
        json_row(window=["09:00", "12:00"], size="L", locker_ok=False),
        json_row(
            parcel=sscc(4),
            address="Dam 2",
            lat="52.37",
            window_from="13:00",
            window_to="15:00",
            customer_webhook=None,
        ),
    ]
    as_list = read_import(json.dumps(rows).encode())
    as_object = read_import(json.dumps({"parcels": rows}).encode())
    assert as_list.format == "json" and as_list.errors == []
    assert as_list.records == as_object.records
    first, second = as_list.records
    assert (first.window, first.size, first.locker_ok) == (("09:00", "12:00"), "L", False)
    assert (second.id, second.lat, second.window) == (sscc(4), 52.37, ("13:00", "15:00"))


def test_json_bad_items_are_reported_by_index() -> None:
    rows: list[Any] = [
        json_row(),
        "not an object",
        json_row(parcel=123456789012, address="B"),
        json_row(parcel=s10(3), lat=True),
        json_row(parcel=s10(4), barcode=s10(5)),
        json_row(parcel=s10(6), window=["09:00"]),
        json_row(parcel=s10(7), locker_ok="sometimes"),
        json_row(),  # duplicate of index 0
        json_row(parcel=s10(8), colour="red"),
    ]
    result = read_import(json.dumps(rows).encode())
    assert [r.id for r in result.records] == [s10(1), s10(8)]
    assert [(p.line_or_index, p.field) for p in result.errors] == [
        (1, "row"),
        (2, "parcel"),
        (3, "lat"),
        (4, "parcel"),
        (5, "window"),
        (6, "locker_ok"),
        (7, "parcel"),
    ]
    reasons = [p.reason for p in result.errors]
    assert "leading zeros" in reasons[1]
    assert reasons[3] == "two keys of this object mean parcel"
    assert reasons[6] == f"parcel {s10(1)} is already on index 0"
    assert result.warnings == [ImportProblem(8, "colour", "unknown key, ignored")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[{", "not JSON"),
        (b'{"items": []}', "expected a list of parcels"),
        (b'["\xff"]', "not UTF-8"),
    ],
)
def test_json_file_problems(data: bytes, reason: str) -> None:
    result = read_import(data, format="json")
    assert result.records == []
    assert result.errors[0].line_or_index is None
    assert reason in result.errors[0].reason


def test_sources_paths_and_format_detection(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_bytes(csv_bytes(row()))
    (tmp_path / "in.json").write_text(json.dumps([json_row()]))
    (tmp_path / "in.txt").write_text(json.dumps([json_row()]))
    assert read_import(tmp_path / "in.csv").format == "csv"
    assert read_import(str(tmp_path / "in.json")).format == "json"
    sniffed = read_import(tmp_path / "in.txt")
    assert sniffed.format == "json" and len(sniffed.records) == 1
    with pytest.raises(ParcelImportError, match="cannot read"):
        read_import(tmp_path / "missing.csv")
    with pytest.raises(ParcelImportError, match="pass the file's contents as bytes"):
        read_import(csv_bytes(row()).decode())
    with pytest.raises(ParcelImportError, match="unknown import format"):
        read_import(b"", format="xml")  # type: ignore[arg-type]
    assert issubclass(ParcelImportError, DepotError)


def test_record_to_doc_and_back() -> None:
    rec = record(
        1,
        52.1,
        4.1,
        window=("09:00", "12:00"),
        size="M",
        locker_ok=False,
        customer_webhook="https://c.example/x",
        instructions="side door",
    )
    doc = json.loads(json.dumps(rec.to_doc()))
    assert ParcelRecord.from_doc(doc) == rec
    with pytest.raises(ParcelImportError, match="lat must be a number"):
        ParcelRecord.from_doc({**doc, "lat": "52"})
    with pytest.raises(ParcelImportError, match="unknown kind"):
        ParcelRecord.from_doc({**doc, "kind": "fax"})


# --- routing ----------------------------------------------------------------------------------


def scattered(n: int, seed: int = 1, *, km: float = 8.0) -> list[ParcelRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        dlat = rng.uniform(-km, km) * KM_LAT
        dlon = rng.uniform(-km, km) * KM_LAT / math.cos(math.radians(DEPOT[0]))
        out.append(record(i + 1, DEPOT[0] + dlat, DEPOT[1] + dlon))
    return out


def parcels_of(plan: Mapping[str, list[PlannedStop]]) -> list[str]:
    return [p for stops in plan.values() for s in stops for p in s.parcels]


def test_every_parcel_on_exactly_one_van_and_stop_counts_balanced() -> None:
    records = scattered(101)
    plan = plan_routes(records, ["van-1", "van-2", "van-3"], DEPOT)
    assert list(plan) == ["van-1", "van-2", "van-3"]
    assigned = parcels_of(plan)
    assert sorted(assigned) == sorted(r.id for r in records)
    assert Counter(assigned).most_common(1)[0][1] == 1
    assert sorted(len(stops) for stops in plan.values()) == [33, 34, 34]


def test_stops_group_parcels_at_one_door() -> None:
    lat, lon = 52.37, 4.89
    records = [
        record(1, lat, lon, address="Damrak 1", window=("13:00", "17:00"), instructions="A"),
        record(
            2,
            lat + 2e-6,
            lon - 2e-6,
            address=" damrak  1 ",
            recipient="R1",
            window=("09:00", "12:00"),
        ),
        record(3, lat, lon, address="Damrak 1", recipient="Other", instructions="B"),
        record(4, lat, lon, address="Damrak 1A"),  # same point, another door
        record(5, lat + 5e-5, lon, address="Damrak 1"),  # same address, 5 m away
    ]
    stops = group_stops(records)
    assert sorted(len(s.records) for s in stops) == [1, 1, 3]
    door = next(s for s in stops if len(s.records) == 3)
    assert door.parcels == (s10(1), s10(2), s10(3))
    assert door.recipient == "R1; Other"
    assert door.window == ("09:00", "12:00")
    assert door.instructions == "A / B"


def test_the_plan_is_deterministic_whatever_the_record_order() -> None:
    records = scattered(60, seed=3)
    vans = ["van-1", "van-2"]
    first = plan_routes(records, vans, DEPOT)
    shuffled = list(records)
    random.Random(9).shuffle(shuffled)
    assert plan_routes(records, vans, DEPOT) == first
    assert plan_routes(shuffled, vans, DEPOT) == first


@pytest.mark.parametrize("seed", range(8))
def test_two_opt_is_never_longer_than_nearest_neighbour(seed: int) -> None:
    stops = group_stops(scattered(40, seed=seed))
    greedy = order_stops(DEPOT, stops, improve=False)
    improved = order_stops(DEPOT, stops)
    assert sorted(s.key for s in improved) == sorted(s.key for s in stops)
    assert route_length_m(DEPOT, improved) <= route_length_m(DEPOT, greedy)
    if seed == 0:
        assert route_length_m(DEPOT, improved) < route_length_m(DEPOT, greedy)


def test_the_sweep_starts_at_the_widest_gap() -> None:
    # Two clusters, around north and around south: a sweep cut at north (0°) would split the
    # northern cluster over both vans.
    records = []
    for i, bearing in enumerate([-20, -10, 5, 15, 160, 170, 185, 195]):
        rad = math.radians(bearing)
        records.append(
            record(
                i + 1,
                DEPOT[0] + 3 * KM_LAT * math.cos(rad),
                DEPOT[1] + 3 * KM_LAT * math.sin(rad) / math.cos(math.radians(DEPOT[0])),
            )
        )
    plan = plan_routes(records, ["van-1", "van-2"], DEPOT)
    north = {s10(1), s10(2), s10(3), s10(4)}
    vans_north = [
        van for van, stops in plan.items() if {p for s in stops for p in s.parcels} == north
    ]
    assert len(vans_north) == 1


def test_capacity_in_parcels() -> None:
    records = scattered(30, seed=5)
    plan = plan_routes(records, ["a", "b", "c"], DEPOT, capacity=12)
    loads = [sum(len(s.records) for s in stops) for stops in plan.values()]
    assert sum(loads) == 30 and max(loads) <= 12
    # Too many for the vans: the rest waits for another day, each parcel with its reason.
    full = plan_routes(records, ["a", "b", "c"], DEPOT, capacity=9)
    loads = [sum(len(s.records) for s in stops) for stops in full.values()]
    assert loads == [9, 9, 9]
    assert {d.reason for d in full.deferred} == {"vehicle_full"} and len(full.deferred) == 3
    assert sorted([*parcels_of(full), *(d.parcel for d in full.deferred)]) == sorted(
        r.id for r in records
    )
    # One door with more than a van holds: what fits goes, the rest follows.
    same_door = [record(i, 52.4, 4.9, address="Depot Street 1") for i in range(1, 6)]
    split = plan_routes(same_door, ["a", "b"], DEPOT, capacity=4)
    assert parcels_of(split) == [s10(i) for i in range(1, 5)]
    assert [(d.parcel, d.reason) for d in split.deferred] == [(s10(5), "stop_too_big")]


def test_capacity_pushes_stops_to_later_vans_and_back() -> None:
    # Stop sizes 5,1,1,1,1,1 in sweep order: balanced counts would give 3+3, but the first van
    # holds only 6 parcels; the second takes the rest.
    records = [record(1, DEPOT[0] + KM_LAT, DEPOT[1], address="Big")]
    records += [record(10 + i, DEPOT[0] + KM_LAT, DEPOT[1], address="Big") for i in range(4)]
    for i in range(5):
        rad = math.radians(10 + 10 * i)
        records.append(
            record(20 + i, DEPOT[0] + 2 * KM_LAT * math.cos(rad), DEPOT[1] + 0.03 * math.sin(rad))
        )
    plan = plan_routes(records, ["a", "b"], DEPOT, capacity=6)
    assert sorted(parcels_of(plan)) == sorted(r.id for r in records)
    assert all(sum(len(s.records) for s in stops) <= 6 for stops in plan.values())


def test_more_vans_than_stops_and_bad_arguments() -> None:
    plan = plan_routes(scattered(2), ["a", "b", "c"], DEPOT)
    assert sorted(len(v) for v in plan.values()) == [0, 1, 1]
    assert plan_routes([], ["a"], DEPOT) == {"a": []}
    with pytest.raises(RoutingError, match="no vans"):
        plan_routes(scattered(2), [], DEPOT)
    with pytest.raises(RoutingError, match="listed twice"):
        plan_routes(scattered(2), ["a", "a"], DEPOT)
    with pytest.raises(RoutingError, match="twice"):
        plan_routes([*scattered(2), scattered(2)[0]], ["a"], DEPOT)


def test_an_early_window_breaks_a_distance_tie() -> None:
    west = record(1, DEPOT[0], DEPOT[1] - 0.01)  # sorts first on position
    east = record(2, DEPOT[0], DEPOT[1] + 0.01, window=("09:00", "11:00"))
    (route,) = plan_routes([west, east], ["a"], DEPOT).values()
    assert [s.parcels for s in route] == [(s10(2),), (s10(1),)]
    # Any window ends before a stop without one; between windows, the earlier end goes first.
    late = record(2, DEPOT[0], DEPOT[1] + 0.01, window=("15:00", "17:00"))
    (route,) = plan_routes([west, late], ["a"], DEPOT).values()
    assert [s.parcels for s in route] == [(s10(2),), (s10(1),)]
    noon = record(1, DEPOT[0], DEPOT[1] - 0.01, window=("12:00", "14:00"))
    (route,) = plan_routes([noon, late], ["a"], DEPOT).values()
    assert [s.parcels for s in route] == [(s10(1),), (s10(2),)]
    no_window = record(2, DEPOT[0], DEPOT[1] + 0.01)
    (route,) = plan_routes([west, no_window], ["a"], DEPOT).values()
    assert [s.parcels for s in route] == [(s10(1),), (s10(2),)]  # a true tie: by position


def test_route_length_is_haversine_and_closes_the_round() -> None:
    one_degree = distance_m(52.0, 4.0, 53.0, 4.0)
    assert one_degree == pytest.approx(111_195, rel=1e-4)
    stop = group_stops([record(1, 53.0, 4.0)])
    assert route_length_m((52.0, 4.0), stop) == pytest.approx(2 * one_degree)
    assert route_length_m((52.0, 4.0), stop, return_to_depot=False) == pytest.approx(one_degree)
    assert route_length_m((52.0, 4.0), []) == 0.0


def test_manifest_round_trip_and_shelves() -> None:
    records = scattered(12, seed=2)
    records.append(
        record(
            99,
            records[0].lat,
            records[0].lon,
            address=records[0].address,
            window=("08:00", "10:00"),
            instructions="gate code 12",
        )
    )
    plan = plan_routes(records, ["van-1"], DEPOT)
    manifest = build_manifest(
        "van-1", 3, "2026-11-21", plan["van-1"], depot=DEPOT, issued_at=1795000000.0
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert [s.stop for s in manifest.stops] == list(range(1, len(manifest.stops) + 1))
    assert sorted(manifest.parcels) == sorted(r.id for r in records)
    shared_stop = manifest.stop_of(s10(99))
    assert shared_stop is not None
    shared = manifest.stops[shared_stop - 1]
    assert shared.window == ("08:00", "10:00")
    assert shared.instructions == "gate code 12"
    assert shared.parcels == tuple(sorted(shared.parcels))
    for planned, stop in zip(plan["van-1"], manifest.stops, strict=True):
        assert (stop.address, stop.recipient, stop.lat, stop.lon) == (
            planned.address,
            planned.recipient,
            planned.lat,
            planned.lon,
        )
    # Shelves run in reverse stop order: the last stop's parcels are loaded first (shelf 1).
    shelves = [manifest.shelf_of(p) for s in reversed(manifest.stops) for p in s.parcels]
    assert shelves == list(range(1, len(records) + 1))
    assert manifest.shelf_of(manifest.stops[-1].parcels[0]) == 1
    with pytest.raises(RoutingError, match="YYYY-MM-DD"):
        build_manifest("van-1", 1, "21/11/2026", plan["van-1"], depot=DEPOT, issued_at=0.0)
    with pytest.raises(RoutingError, match="version"):
        build_manifest("van-1", 0, "2026-11-21", plan["van-1"], depot=DEPOT, issued_at=0.0)


def test_an_imported_file_plans_end_to_end() -> None:
    rows = [
        row(
            parcel=s10(i),
            address=f"Street {i}",
            lat=f"{52.36 + i * 0.001:.4f}",
            lon=f"{4.89 + (i % 3) * 0.002:.4f}",
        )
        for i in range(1, 21)
    ]
    result = read_import(csv_bytes(*rows))
    assert result.errors == []
    plan = plan_routes(result.records, ["van-1", "van-2"], DEPOT)
    for van, stops in plan.items():
        manifest = build_manifest(van, 1, "2026-11-21", stops, depot=DEPOT, issued_at=0.0)
        assert Manifest.from_json(manifest.to_json()) == manifest
    assert sorted(parcels_of(plan)) == sorted(r.id for r in result.records)


# --- policy -----------------------------------------------------------------------------------

STOP = (52.37, 4.89)


def site(name: str, km_north: float, **free: int) -> LockerSite:
    return LockerSite(name, STOP[0] + km_north * KM_LAT, STOP[1], free)


def decide(reason: str, attempts: int = 1, **kw: Any) -> NextAction:
    args: dict[str, Any] = {
        "reason": reason,
        "attempts": attempts,
        "locker_ok": True,
        "size": "S",
        "stop_lat": STOP[0],
        "stop_lon": STOP[1],
        "lockers": [site("near", 1.0, S=1), site("far", 2.5, S=3)],
    }
    args.update(kw)
    return decide_after_failure(**args)


@pytest.mark.parametrize("reason", ["refused", "damaged", "address_not_found"])
def test_refused_damaged_and_unfindable_go_back_at_once(reason: str) -> None:
    action = decide(reason, attempts=1)
    assert (action.kind, action.locker) == ("return_to_sender", None)
    assert FAILURE_REASONS[reason].text in action.reason


@pytest.mark.parametrize("reason", ["not_at_home", "no_access", "business_closed"])
def test_nobody_to_take_it_goes_to_the_nearest_fitting_locker(reason: str) -> None:
    action = decide(reason)
    assert (action.kind, action.locker) == ("locker", "near")
    assert "1.0 km" in action.reason
    # Even with every attempt used: a locker near home is still a delivery.
    assert decide(reason, attempts=2).kind == "locker"


@pytest.mark.parametrize("reason", ["not_at_home", "no_access", "business_closed"])
def test_without_a_locker_a_second_attempt_then_the_return(reason: str) -> None:
    no_lockers: list[LockerSite] = []
    assert decide(reason, attempts=1, lockers=no_lockers).kind == "second_attempt"
    final = decide(reason, attempts=2, lockers=no_lockers)
    assert final.kind == "return_to_sender" and "all 2 attempts are used" in final.reason
    assert decide(reason, attempts=2, lockers=no_lockers, max_attempts=3).kind == ("second_attempt")


def test_no_locker_within_reach() -> None:
    far = [site("away", 3.5, S=5)]
    action = decide("not_at_home", lockers=far)
    assert action.kind == "second_attempt"
    assert "no locker within 3 km" in action.reason
    assert decide("not_at_home", lockers=far, max_locker_km=4.0).locker == "away"


def test_the_recipient_refuses_lockers() -> None:
    action = decide("not_at_home", locker_ok=False)
    assert action.kind == "second_attempt"
    assert "does not accept a locker" in action.reason
    assert decide("not_at_home", attempts=2, locker_ok=False).kind == "return_to_sender"


def test_a_full_locker_is_passed_over() -> None:
    lockers = [site("near", 1.0, S=0, M=0), site("far", 2.5, S=1)]
    assert decide("not_at_home", lockers=lockers).locker == "far"
    assert decide("not_at_home", lockers=[site("near", 1.0, S=0)]).kind == "second_attempt"


def test_sizes_a_bigger_compartment_fits_a_smaller_parcel() -> None:
    lockers = [site("small", 0.5, S=4, M=2), site("large", 2.0, L=1)]
    assert decide("not_at_home", size="L", lockers=lockers).locker == "large"
    assert decide("not_at_home", size="M", lockers=lockers).locker == "small"
    too_big = decide("not_at_home", size="L", lockers=[site("small", 0.5, S=4, M=2)])
    assert too_big.kind == "second_attempt"
    # Sizes the policy does not know are not compartments it can use.
    assert decide("not_at_home", lockers=[site("odd", 0.5, XL=3)]).kind == "second_attempt"
    assert fits("S", "L") and fits("M", "M") and not fits("L", "M") and not fits("S", "XL")


def test_tried_lockers_are_skipped() -> None:
    action = decide("not_at_home", tried_lockers=("near",))
    assert action.locker == "far"
    assert decide("not_at_home", tried_lockers=["near", "far"]).kind == "second_attempt"


def test_equally_near_lockers_are_chosen_by_name() -> None:
    lockers = [site("b", 1.0, S=1), site("a", 1.0, S=1)]
    assert decide("not_at_home", lockers=lockers).locker == "a"


def test_a_refused_reservation_tries_the_next_locker_then_the_rules() -> None:
    common: dict[str, Any] = {
        "reason": "not_at_home",
        "locker_ok": True,
        "size": "S",
        "stop_lat": STOP[0],
        "stop_lon": STOP[1],
        "lockers": [site("near", 1.0, S=1), site("far", 2.5, S=3)],
    }
    nxt = decide_after_reservation_refused(refused_locker="near", attempts=1, **common)
    assert nxt.locker == "far"
    after_both = decide_after_reservation_refused(
        refused_locker="far", tried_lockers=["near"], attempts=1, **common
    )
    assert after_both.kind == "second_attempt"
    final = decide_after_reservation_refused(
        refused_locker="far", tried_lockers=["near"], attempts=2, **common
    )
    assert final.kind == "return_to_sender"


def test_an_expired_hold_goes_back_to_the_sender() -> None:
    action = decide_after_hold_expired("locker-1")
    assert action == NextAction(
        "return_to_sender",
        None,
        "hold expired at locker-1: the recipient did not collect it in time",
    )


def test_the_policy_refuses_to_guess() -> None:
    with pytest.raises(PolicyError, match="unknown failure reason 'dog'"):
        decide("dog")
    with pytest.raises(PolicyError, match="parcel size 'XL'"):
        decide("not_at_home", size="XL")
    with pytest.raises(PolicyError, match="negative"):
        decide("not_at_home", attempts=-1)
    with pytest.raises(PolicyError, match="max_attempts"):
        decide("not_at_home", max_attempts=0)
    assert issubclass(PolicyError, DepotError)


def test_reason_codes_follow_the_delivery_contract() -> None:
    # (INOVERT, X12 214 status reason) of each failure, as docs/DELIVERY.md's table says.
    table = {
        "not_at_home": ("REN|DAF", "AQ"),
        "no_access": (None, "AG"),
        "address_not_found": ("REN|CAD", "A5"),
        "refused": ("REN|SNC", "BS"),
        "damaged": (None, "BG"),
        "business_closed": (None, "B1"),
        "no_safe_place": ("REN|DAF", "AG"),
        "age_check_failed": (None, "AG"),
        "reschedule_requested": (None, "AD"),
        "card_left": ("REN|DAF", "A1"),
    }
    assert list(FAILURE_REASONS) == list(table)
    for reason, codes in FAILURE_REASONS.items():
        got = (codes.upu, codes.x12, codes.inovert, codes.x12_reason)
        assert got == ("EMH", "AH", *table[reason])
        assert codes.text
    assert ReasonCodes("EMI", "D", "LIV|CFM", "delivered") == DELIVERED_CODES
    assert DELIVERED_CODES.x12_reason == "NS"
    with pytest.raises(TypeError):
        FAILURE_REASONS["lost"] = DELIVERED_CODES  # type: ignore[index]
