"""The benchmarks still run and report every figure they promise (small sizes, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(tmp_path: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def number(value: object) -> float:
    """A figure of the report; fails the test if it is not a number."""
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    return value


def section(value: object) -> dict[str, object]:
    """A nested object of the report; fails the test if it is not one."""
    assert isinstance(value, dict), value
    return value


def listing(value: object) -> list[object]:
    """An array of the report; fails the test if it is not one."""
    assert isinstance(value, list), value
    return value


@pytest.mark.slow
def test_bench_sync_reports_ours_against_the_baseline(tmp_path: Path) -> None:
    r = bench(tmp_path, "sync", "--events", "3000", "--baseline-events", "300")
    assert r["events"] == 3000 and r["baseline_events"] == 300
    assert r["depot_verified"] is True
    for key in (
        "events_per_s",
        "wire_bytes_per_event",
        "baseline_events_per_s",
        "baseline_wire_bytes_per_event",
        "ratio",
        "targets_met",
    ):
        assert key in r


@pytest.mark.slow
def test_bench_scan_reports_latency_against_a_bare_commit(tmp_path: Path) -> None:
    r = bench(tmp_path, "scan", "--scans", "20", "--warmup", "2")
    assert r["n"] == 20
    for key in ("p50_ms", "p99_ms", "baseline_p99_ms", "ratio_p99", "targets_met"):
        assert key in r


@pytest.mark.slow
def test_bench_idle_reports_cpu_and_memory(tmp_path: Path) -> None:
    r = bench(tmp_path, "idle", "--window", "2", "--settle", "0.5")
    assert r["van_alive_through_window"] is True
    for key in ("cpu_percent", "rss_mb", "baseline_cpu_percent", "baseline_rss_mb", "targets_met"):
        assert key in r


@pytest.mark.slow
def test_bench_locker_reports_unlock_latency_and_polling_cpu(tmp_path: Path) -> None:
    r = bench(tmp_path, "locker", "--n", "2", "--parcels", "3", "--warmup", "0",
              "--window", "1", "--settle", "0.2")
    assert r["n"] == 2 and r["n_1_parcel"] == 2 and r["stored_parcels"] == 3
    assert r["compartments"] == 3 and r["lock_boards"] == 1
    by_stored = r["unlock_p99_ms_by_stored"]
    assert isinstance(by_stored, dict) and set(by_stored) == {"1", "3"}  # 40 would not fit
    assert by_stored["3"] == r["unlock_p99_ms"] and by_stored["1"] == r["unlock_p99_ms_1_parcel"]
    met = r["targets_met"]
    assert isinstance(met, dict) and met["unlock_p99_under_50ms_at_200"] is None  # not judged
    assert met["all"] is False and isinstance(met["poll_cpu_under_1_percent"], bool)
    assert r["locker_alive_through_window"] is True
    for key in ("unlock_p99_ms", "unlock_p99_ms_1_parcel", "baseline_unlock_p99_ms",
                "poll_cpu_percent", "poll_hz", "baseline_cpu_percent", "targets_met"):
        assert key in r


def test_bench_route_reports_plan_length_against_its_baselines(tmp_path: Path) -> None:
    r = bench(tmp_path, "route", "--parcels", "60", "--vans", "2", "--repeat", "1")
    stops_per_van = [number(n) for n in listing(r["stops_per_van"])]  # 2 vans and 1 bike
    assert r["parcels"] == 60 and sum(stops_per_van) <= 60 and len(stops_per_van) == 3
    assert 0 < number(r["km_planned"]) <= number(r["km_nearest_neighbour_only"])
    assert number(r["ratio_planned_vs_nearest_neighbour"]) <= 1.0
    assert number(r["ratio_planned_vs_import_order"]) < 1.0
    rounds = section(r["rounds"])
    assert sorted(rounds) == ["bike-1", "van-1", "van-2"]
    for figures in rounds.values():
        f = section(figures)
        assert number(f["parcels"]) <= number(f["parcels_max"])
        assert number(f["kg"]) <= number(f["kg_max"])
        assert number(f["hours"]) <= number(f["shift_h"])
    assert number(r["parcels_planned"]) + number(r["parcels_deferred"]) == 60
    met = section(r["targets_met"])
    assert met["capacity_respected"] is True and met["shift_respected"] is True
    assert met["nothing_dropped"] is True


def test_bench_photo_reports_sizes_against_the_camera_app_s_jpeg(tmp_path: Path) -> None:
    # No real photos here (a clone has no ../shared): the rendered scenes alone.
    r = bench(tmp_path, "photo", "--scenes", "3", "--images", str(tmp_path / "none"))
    scenes = r["doorstep_scenes"]
    assert isinstance(scenes, dict) and scenes["images"] == 3
    assert 0 < scenes["ours_bytes_max"] <= 100_000 and scenes["over_100kb"] == 0
    assert scenes["ours_bytes_median"] < scenes["baseline_bytes_median"]
    assert scenes["ratio_ours_vs_baseline_median"] < 1.0
    sides = scenes["q75_bytes_median_by_long_side"]
    assert sides["640"] < sides["960"] < sides["1280"]
    assert r["real_photos"] is None and r["targets_met"] is True


def test_bench_camera_reports_an_idle_camera_against_decoding_every_frame(
    tmp_path: Path,
) -> None:
    r = bench(tmp_path, "camera", "--window", "3", "--fps", "10", "--frames", "5",
              "--reps", "2", "--still-s", "1")
    # Frame counts, not timings: ours looked at some frames and decoded fewer, the baseline
    # decoded all it saw; every label held up was read, by both.
    ours_seen, ours_looked = r["ours_frames_seen"], r["ours_frames_looked"]
    ours_decoded = r["ours_frames_decoded"]
    assert isinstance(ours_seen, int) and isinstance(ours_looked, int)
    assert isinstance(ours_decoded, int)
    assert 0 <= ours_decoded < ours_looked < ours_seen  # a refresh may fall outside 3 s
    assert r["baseline_frames_decoded"] == r["baseline_frames_seen"]
    assert r["react_missed"] == 0 and r["react_baseline_missed"] == 0
    react = section(r["react_ms"])
    assert number(react["median"]) <= number(react["max"])
    for key in ("still_cpu_percent", "gate_only_cpu_percent", "baseline_cpu_percent",
                "capture_only_cpu_percent", "capture_packets_cpu_percent",
                "ratio_ours_vs_baseline", "ratio_ours_vs_capture_only"):
        number(r[key])
    met = section(r["targets_met"])
    assert set(met) == {"still_cpu_under_3pct", "react_within_300ms", "all"}


@pytest.mark.slow
def test_bench_fleet_reports_every_figure(tmp_path: Path) -> None:
    # Two set-ups, both the whole depot service: the SQLite baseline and PostgreSQL with two
    # workers sharing the batches (only the first when PostgreSQL is not installed).
    from simulators.postgres import find_postgres

    r = bench(tmp_path, "fleet", "--devices", "30", "--backlog-events", "20", "--steady-s", "2",
              "--reconnect-jitter-s", "1", "--setups", "sqlite:1,postgresql:2")
    steady = r["steady_events_per_device"]
    assert r["backlog_events_per_device"] == 20 and isinstance(steady, int) and steady >= 1
    assert r["devices"] == 30 and r["events"] == 30 * (20 + steady)
    assert r["lost"] == r["duplicates"] == r["gaps"] == r["chain_breaks"] == 0
    runs = r["runs"]
    assert isinstance(runs, list)
    asked = [("sqlite", 1), ("postgresql", 2)]
    ran = asked if find_postgres() is not None else asked[:1]
    assert [(x["backend"], x["workers"]) for x in runs] == ran
    not_run = r["setups_not_run"]
    assert isinstance(not_run, list)
    assert [(x["backend"], x["workers"]) for x in not_run] == asked[len(ran):]
    for x in runs:
        assert x["events_stored"] == r["events"]
        assert x["lost"] == x["duplicates"] == x["gaps"] == x["chain_breaks"] == 0
        assert x["depot_worker_restarts"] == 0
        assert x["depot_processes"] == (1 if x["workers"] == 1 else 1 + x["workers"])
        for key in ("events_per_s", "drain_s", "ack_p50_ms", "ack_p99_ms", "depot_cpu_pct",
                    "depot_rss_mb", "database_cpu_pct", "broker_cpu_pct", "bench_cpu_pct",
                    "resends", "ratios_to_baseline"):
            assert key in x
        assert (x["database_cpu_pct"] is None) == (x["backend"] == "sqlite")
    ratios = r["ratios"]  # every run against the first
    assert isinstance(ratios, list) and ratios[0]["backend"] == "sqlite"
    targets = r["targets_met"]
    assert isinstance(targets, dict)
    assert set(targets) == {"events_per_s_postgresql_10000", "drain_under_60s",
                            "ack_p99_under_250ms"}


def test_bench_console_reports_every_page_against_health(tmp_path: Path) -> None:
    r = bench(tmp_path, "console", "--parcels", "300", "--vans", "3", "--lockers", "2",
              "--n", "2", "--warmup", "0")
    assert r["parcels"] == 300 and r["targets"] == {"p95_ms_max": 300.0, "bytes_max": 204800}
    (only_run,) = listing(r["runs"])
    run = section(only_run)
    by_state = section(run["by_state"])
    assert run["backend"] == "sqlite" and sum(number(n) for n in by_state.values()) == 300
    # The day's states, each with the timeline the product wrote for it.
    assert {"received", "out_for_delivery", "delivered", "attempted", "in_locker"} <= set(
        by_state
    )
    assert number(run["timeline_entries"]) > 300 and number(run["events"]) > 0
    health = section(run["health"])
    assert set(health) == {"status", "p50_ms", "p95_ms", "bytes"}
    assert health["status"] in (200, 503)  # 503: the bench's depot has no broker
    pages = {name: section(page) for name, page in section(run["pages"]).items()}
    assert {"today", "fleet", "parcels", "parcels_search", "parcel", "lockers", "exceptions",
            "customer"} == set(pages)
    for name, page in pages.items():
        assert page["missing"] == (page["status"] == 404), name
        if page["status"] is not None:
            for key in ("path", "p50_ms", "p95_ms", "bytes", "ratio_p95_vs_health", "met"):
                assert key in page, (name, key)
    assert pages["today"]["status"] == 200 and number(pages["today"]["bytes"]) > 0
    assert run["missing_pages"] == [n for n, p in pages.items() if p["missing"]]
    assert run["targets_met"] == all(p["met"] for p in pages.values())
    assert r["targets_met"] == run["targets_met"]
