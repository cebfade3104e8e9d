"""The `lastmile` command: one entry point for the devices, the depot and the simulated day.

Each subcommand imports what it needs when it runs, so `lastmile identify` does not load
paho and no subcommand but the camera's would ever load OpenCV.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from lastmile.service import Device as _Device


def _identify(args: argparse.Namespace) -> int:
    from parcel.identify import ParcelId, Rejection, identify, parse_cli_code, to_json

    result: ParcelId | Rejection
    try:
        result = identify(parse_cli_code(args.code))
    except Rejection as rejection:
        result = rejection
    doc = to_json(result)
    if args.json:
        print(json.dumps(doc))
    elif doc["valid"]:
        facts = doc.get("details")
        details = " ".join(f"{k}={v}" for k, v in facts.items()) if isinstance(facts, dict) else ""
        print(f"{doc['kind']} {doc['id']}" + (f"  ({details})" if details else ""))
    else:
        print(f"rejected: {doc['error']}")
    return 0 if doc["valid"] else 1


_CONTROL_NAMES = {
    0x04: "EOT",
    0x09: "HT",
    0x0A: "LF",
    0x0D: "CR",
    0x1C: "FS",
    0x1D: "GS",
    0x1E: "RS",
    0x1F: "US",
}


def _printable(text: str) -> str:
    """Control characters as ``<GS>``, ``<CR>``... (``<0x07>`` for unnamed ones); `lastmile
    identify` takes ``<GS>``, ``<RS>`` and ``<EOT>`` back."""
    return "".join(
        f"<{_CONTROL_NAMES.get(ord(c), f'0x{ord(c):02x}')}>"
        if ord(c) < 0x20 or ord(c) == 0x7F
        else c
        for c in text
    )


def _decode(args: argparse.Namespace) -> int:
    """Decode barcodes in image files as the camera would: one result per image.

    A file is not a live frame: by default there is no time budget, so the answer is the
    same whatever the machine's load, and the same as `bench decode`'s on the same file.
    ``--budget-ms`` sets one, as on the camera (0: none).

    Exit status: 2 if any file could not be read as an image (its line says so), else 1 if
    any image held no symbol, else 0.
    """
    import time

    import cv2
    import numpy as np

    from drivers.camera import Decoder

    budget = args.budget_ms if args.budget_ms is not None else 0.0
    if not 0 <= budget < float("inf"):  # NaN and infinity fail this too
        print(
            f"lastmile decode: --budget-ms must be 0 (no budget) or a positive number of "
            f"milliseconds, not {args.budget_ms:g}",
            file=sys.stderr,
        )
        return 2
    decoder = Decoder(budget_ms=budget or None)
    decoder.warm_up()  # the first image is not charged for loading the decoders
    unreadable = empty = 0
    for path in args.images:
        reason = "not an image (PNG, JPEG, BMP, TIFF...)"
        try:
            image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
        except OSError as exc:
            image, reason = None, exc.strerror or str(exc)
        except cv2.error:  # an empty file
            image = None
        if image is None:
            unreadable += 1
            if args.json:
                doc = {"path": path, "symbols": [], "ms": None, "error": reason}
                print(json.dumps(doc), flush=True)
            else:
                print(f"{path}: error: {reason}", file=sys.stderr, flush=True)
            continue
        started = time.perf_counter()
        symbols = decoder.decode(image)
        ms = round((time.perf_counter() - started) * 1000, 2)
        empty += not symbols
        if args.json:
            doc = {
                "path": path,
                "symbols": [
                    {
                        "text": s.text,
                        "format": s.format,
                        "aim": s.aim,
                        "corners": [list(p) for p in s.corners],
                    }
                    for s in symbols
                ],
                "ms": ms,
            }
            print(json.dumps(doc), flush=True)
            continue
        print(f"{path}: {len(symbols)} symbol{'' if len(symbols) == 1 else 's'} in {ms} ms")
        for s in symbols:
            corners = " ".join(f"({x:g},{y:g})" for x, y in s.corners)
            print(f"  {s.format} {s.aim or '-'} {_printable(s.text)}  at {corners}")
    return 2 if unreadable else 1 if empty else 0


def _wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT without polling."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


COMMAND_POLL_S = 0.5  # how often `depot command` looks for the locker's answer


def _usage_error(message: str) -> NoReturn:
    """A usage or configuration error: one line on stderr, exit status 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().strip()
    password = os.environ.get("LASTMILE_MQTT_PASSWORD")
    if not password:
        raise SystemExit("lastmile: give --password-file or set LASTMILE_MQTT_PASSWORD")
    return password


def _run_device(name: str, make: Callable[[], _Device]) -> int:
    """Build and start a device, serve it as a systemd service (`lastmile.service`: READY,
    STATUS, the watchdog, SIGHUP's reload) until SIGTERM/SIGINT, stop it; exit 2 if it cannot
    start. The signals are caught from before the start, so one sent while it starts is not
    lost (the device starts, then stops)."""
    from depot.errors import DepotError
    from edge.errors import EdgeError
    from lastmile.service import Control, serve
    from parcel.errors import ParcelError
    from sync.errors import SyncError

    control = Control()
    control.install_signal_handlers()
    try:
        device = make()
        device.start()
    except (DepotError, EdgeError, ParcelError, SyncError, OSError) as exc:
        control.close()
        print(f"lastmile {name}: {exc}", file=sys.stderr)
        return 2
    return serve(device, control)


def _van(args: argparse.Namespace) -> int:
    from edge.van import JsonLinesFeedback, Van, load_config

    def make() -> Van:
        from lastmile import logs

        feedback = JsonLinesFeedback()
        config = load_config(args.config)
        logs.for_device(config.device_id, config.log_level)
        van = Van(config, feedback)
        # With [round] enabled: courier commands as JSON lines on stdin, a reply line each.
        # End of stdin only ends the input; the van runs until SIGTERM/SIGINT as before.
        if sys.stdin is not None:  # None when started without any stdin at all
            van.take_courier_input(sys.stdin.fileno(), feedback.reply)
        return van

    return _run_device("van", make)


def _locker(args: argparse.Namespace) -> int:
    from edge.locker import JsonLinesDisplay
    from edge.locker_config import load_locker_config
    from edge.locker_device import LockerDevice
    from lastmile import logs

    def make() -> LockerDevice:
        config = load_locker_config(args.config)
        logs.for_device(config.device_id, config.log_level)
        return LockerDevice(config, JsonLinesDisplay())

    return _run_device("locker", make)


def _counter(args: argparse.Namespace) -> int:
    from edge.counter import CounterDevice
    from edge.counter_config import load_counter_config
    from edge.locker import JsonLinesDisplay
    from lastmile import logs

    def make() -> CounterDevice:
        config = load_counter_config(args.config)
        logs.for_device(config.device_id, config.log_level)
        device = CounterDevice(config, JsonLinesDisplay())
        # The staff's screen: the config's unix socket (a service's stdin is /dev/null), else
        # JSON lines on stdin; an answer line each on stdout (and the socket's screens).
        if config.staff_socket is None and sys.stdin is not None:
            device.take_staff_input(sys.stdin.fileno())
        return device

    return _run_device("counter", make)


def _check(args: argparse.Namespace) -> int:
    from lastmile.check import run_from_args

    return run_from_args(args)


def _install(args: argparse.Namespace) -> int:
    from lastmile.install import run_from_args

    return run_from_args(args)


def _depot_service_config(args: argparse.Namespace) -> Any:
    from depot.config import DepotConfigError, load_depot_config

    if getattr(args, "config", None) is None:
        _usage_error(f"lastmile depot {args.depot_tool}: --config is required")
    try:
        return load_depot_config(args.config)
    except DepotConfigError as exc:
        _usage_error(f"lastmile depot: {exc}")


def _depot_run_service(args: argparse.Namespace) -> int:
    """The whole depot: ingest, parcel states, policy, manifests, webhooks, HTTP API."""
    from depot.service import DepotService
    from lastmile import logs

    config = _depot_service_config(args)
    if config.broker is None:
        raise SystemExit("lastmile depot: the config has no [broker]")
    if args.db is not None:  # --database on the command line wins over the file's
        config.database = args.db
        config.overridden.add("database")  # and over a reloaded file's
    if args.workers is not None:
        config.workers = args.workers
        config.overridden.add("workers")
    solo = config.workers == 1 or args.worker is None
    logs.for_device("depot" if solo else f"depot-{args.worker}", config.log_level)
    if config.workers > 1 and args.worker is None:
        return _depot_supervise(args, config.workers)
    worker = args.worker or 1

    def make() -> _Device:
        service = DepotService(config, worker=worker)
        print(
            json.dumps(
                {
                    "depot": "running",
                    "worker": worker,
                    "workers": config.workers,
                    "database": service.database.where,
                    "api": f"http://{config.api[0]}:{config.api[1]}" if config.api else None,
                }
            ),
            flush=True,
        )
        return service

    return _run_device("depot", make)


def _depot_import(args: argparse.Namespace) -> int:
    """Receive parcels from a merchant's CSV or JSON file; print what was refused and why."""
    from depot.imports import ParcelImportError
    from depot.service import DepotService

    service = DepotService(_depot_service_config(args))
    try:
        result = service.import_parcels(args.file, format=args.format)
    except ParcelImportError as exc:  # not readable at all: nothing was received
        print(f"lastmile depot import: {exc.reason}", file=sys.stderr)
        return 2
    finally:
        service.stop()
    print(
        json.dumps(
            {
                "received": len(result.records),
                "refused": [
                    {"row": p.line_or_index, "field": p.field, "reason": p.reason}
                    for p in result.errors
                ],
                "warnings": [
                    {"row": p.line_or_index, "field": p.field, "reason": p.reason}
                    for p in result.warnings
                ],
            },
            indent=2,
        )
    )
    return 0 if not result.errors else 1


def _depot_arrive(args: argparse.Namespace) -> int:
    """Arrival scans at the depot's dock: each code checked by the scanner rules, then received.

    Codes come as arguments or, with none, one per line on stdin (a keyboard-wedge scanner
    types into the terminal). Prints one JSON line per code: `received`; `unknown` (received,
    but no merchant's import announced it); `refused` (its journey has ended: delivered,
    picked up or returned; nothing recorded); `rejected` (not a parcel code). Exit 1 unless
    every code was received as expected.
    """
    from depot.service import ArrivalRefused, DepotService
    from parcel.identify import Rejection, parse_cli_code

    service = DepotService(_depot_service_config(args))
    trouble = 0
    try:
        codes = args.codes or (line.strip() for line in sys.stdin)
        for code in codes:
            if not code:
                continue
            try:
                arrival = service.arrival_scan(parse_cli_code(code))
            except Rejection as exc:
                line: dict[str, str] = {"rejected": code, "reason": exc.reason}
            except ArrivalRefused as exc:
                line = {"refused": exc.parcel, "reason": exc.reason}
            else:
                line = {"received": arrival.parcel}
                if arrival.unknown:
                    line = {
                        "unknown": arrival.parcel,
                        "reason": "not in the depot's book (not imported); received, it waits "
                        "at the depot for its data",
                    }
            trouble += "received" not in line
            print(json.dumps(line), flush=True)
    finally:
        service.stop()
    return 1 if trouble else 0


def _depot_plan(args: argparse.Namespace) -> int:
    """Assign waiting parcels to vans and issue manifests; the running depot publishes them."""
    import time

    from depot.service import DepotService

    service = DepotService(_depot_service_config(args))
    try:
        day = args.day or time.strftime("%Y-%m-%d")
        plan = service.plan_day(day, args.vans or None)
    finally:
        service.stop()
    print(
        json.dumps(
            {
                "day": day,
                "waiting_for_address": plan.unassigned,
                "waiting_for_room": plan.deferred_by_reason(),  # left for another day, why
                "manifests": {
                    van: {"version": m.version, "stops": len(m.stops), "parcels": len(m.parcels)}
                    for van, m in plan.manifests.items()
                },
            },
            indent=2,
        )
    )
    return 0


def _open_book(args: argparse.Namespace) -> Any:
    from depot.store import StoreError, is_postgres_url, open_database
    from depot.tracking import ParcelView

    db = args.db if args.db is not None else _depot_service_config(args).database
    if is_postgres_url(db):
        try:
            return ParcelView(open_database(db))
        except StoreError as exc:
            raise SystemExit(f"lastmile depot: {exc}") from None
    if not Path(db).exists():
        raise SystemExit(f"lastmile depot: no depot database at {db}")
    return ParcelView(db)


def _depot_track(args: argparse.Namespace) -> int:
    """A parcel's state and timeline, as a person at the depot's desk wants to read it."""
    from depot.tracking import UnknownParcelError
    from parcel.identify import Rejection, identify, parse_cli_code

    book = _open_book(args)
    try:
        try:
            parcel = identify(parse_cli_code(args.parcel)).id
        except Rejection:
            parcel = args.parcel  # a depot may hold ids the rules no longer accept
        try:
            doc = book.track(parcel)
        except UnknownParcelError:
            print(f"lastmile depot track: no parcel {parcel} at this depot", file=sys.stderr)
            return 1
    finally:
        book.close()
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    where = ", ".join(
        f"{k} {doc[k]}" for k in ("van", "stop", "locker", "next_action") if doc.get(k)
    )
    print(f"{doc['parcel']}: {doc['state']}" + (f" ({where})" if where else ""))
    for entry in doc["timeline"]:
        details = entry.get("details") or {}
        extra = details.get("reason") or details.get("to") or ""
        print(f"  {entry['at']}  {entry['step']:<24} {entry['device'] or '':<10} {extra}")
    return 0


def _depot_epcis(args: argparse.Namespace) -> int:
    """The timelines as one GS1 EPCIS 2.0 JSON-LD document."""
    from depot.epcis import export_epcis

    book = _open_book(args)
    try:
        doc = export_epcis(book, args.parcels or None)
    finally:
        book.close()
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


def _depot_alarms(args: argparse.Namespace) -> int:
    """The depot's alarms (open ones by default), or `--ack ID --by NAME`: one acknowledged."""
    import time

    from depot import alarms
    from depot.store import StoreError, is_postgres_url, open_database

    if args.ack is None and (args.by is not None or args.note is not None):
        print("lastmile depot alarms: --by and --note go with --ack ID", file=sys.stderr)
        return 2
    if args.ack is not None and not (args.by or "").strip():
        print("lastmile depot alarms: --ack needs --by NAME (who has seen it)", file=sys.stderr)
        return 2
    db = args.db if args.db is not None else _depot_service_config(args).database
    if not is_postgres_url(db) and not Path(db).exists():
        raise SystemExit(f"lastmile depot: no depot database at {db}")
    try:
        database = open_database(db)
    except StoreError as exc:
        raise SystemExit(f"lastmile depot: {exc}") from None
    try:
        if args.ack is not None:
            try:
                with database.transaction() as conn:
                    found = [
                        alarms.acknowledge(
                            conn, args.ack, by=args.by, note=args.note, now_ns=time.time_ns()
                        )
                    ]
            except alarms.AlarmError as exc:
                print(f"lastmile depot alarms: {exc}", file=sys.stderr)
                return 1
        else:
            with database.reading() as conn:
                found = alarms.list_alarms(conn, args.state)
    finally:
        database.close()
    if args.json:
        print(json.dumps(found[0] if args.ack is not None else found, indent=2,
                         ensure_ascii=False))
        return 0
    for a in found:
        facts = " ".join(f"{k}={v}" for k, v in sorted(a["facts"].items()))
        line = f"#{a['id']:<5} {a['raised_at']}  {a['device']:<12} {a['alarm']:<16} {a['state']}"
        if a["acknowledged_by"]:
            line += f" by {a['acknowledged_by']}" + (f" ({a['note']})" if a["note"] else "")
        print(line + (f"  {facts}" if facts else ""))
    return 0


def _depot_supervise(args: argparse.Namespace, workers: int) -> int:
    """`--workers N`: N depot processes on one database, restarted when one dies."""
    from depot.workers import Workers, worker_command

    extra = ["--database", str(args.db)] if args.db is not None else []
    command = worker_command(sys.executable, str(args.config), workers, extra, args.verbose)
    # Under systemd the supervisor is the service (READY, STATUS, the watchdog while every
    # worker runs); its workers are its children, not services that talk to systemd.
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_NOTIFY_ENV}

    def make() -> Workers:
        print(json.dumps({"depot": "supervising", "workers": workers}), flush=True)
        return Workers(command, workers, env=env)

    return _run_device("depot", make)


# What systemd gives the process it watches; a child must not take it for its own.
_SYSTEMD_NOTIFY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def _depot(args: argparse.Namespace) -> int:
    from depot.errors import DepotError
    from depot.ingest import Depot, DepotStore
    from sync.mqtt import BrokerAddress

    if args.config is not None:
        return _depot_run_service(args)
    if args.workers is not None or args.worker is not None:
        raise SystemExit("lastmile depot: --workers needs --config (the whole depot service)")
    if args.db is None:
        raise SystemExit("lastmile depot: --config (the whole depot) or --database (ingest only)")
    try:
        store = DepotStore(args.db)
    except DepotError as exc:
        print(f"lastmile depot: {exc}", file=sys.stderr)
        return 2
    address = BrokerAddress(
        args.host,
        args.port,
        args.username,
        _password(args),
        tls_ca=args.ca_file,
        tls_cert=args.cert_file,
        tls_key=args.key_file,
    )
    depot = Depot(store, address)
    depot.start()
    running = {
        "depot": "running",
        "database": store.database.where,
        "broker": f"{args.host}:{args.port}",
    }
    print(json.dumps(running), flush=True)
    try:
        _wait_for_signal()
    finally:
        depot.stop()
        store.close()
    return 0


def _depot_db(args: argparse.Namespace) -> Any:
    """The depot's database for a tool that writes to it (accounts, tokens)."""
    from depot.store import StoreError, open_database

    db = args.db if args.db is not None else None
    if db is None:
        if args.config is None:
            _usage_error(f"lastmile depot {args.depot_tool}: give --config or --database")
        db = _depot_service_config(args).database
    try:
        return open_database(db)
    except StoreError as exc:
        raise SystemExit(f"lastmile depot: {exc}") from None


def _read_new_password(name: str) -> str:
    """A new password: typed twice at a terminal, or the first line of stdin otherwise."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            _usage_error("lastmile depot user add: the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _depot_user(args: argparse.Namespace) -> int:
    """Operator accounts for the console: add one (or give it a new password and role)."""
    from depot.web import auth

    database = _depot_db(args)
    try:
        if args.user_action == "list":
            from depot.store import accounts

            with database.reading() as conn:
                for name, role, *_ in accounts.users(conn):
                    print(f"{name}\t{role}")
            return 0
        password = _read_new_password(args.name)
        try:
            new = auth.add_user(database, args.name, args.role, password)
        except auth.AuthError as exc:
            _usage_error(f"lastmile depot user add: {exc}")
        print(f"{'added' if new else 'updated'} {args.name} ({args.role})"
              + ("" if new else "; their sessions are signed out"))
        return 0
    finally:
        database.close()


def _depot_token(args: argparse.Namespace) -> int:
    """API tokens for machines reading the JSON API: add one (printed once) or remove one."""
    from depot.web import auth

    database = _depot_db(args)
    try:
        if args.token_action == "remove":
            if not auth.remove_token(database, args.name):
                print(f"lastmile depot token remove: no token named {args.name!r}",
                      file=sys.stderr)
                return 1
            print(f"removed token {args.name}")
            return 0
        try:
            token = auth.add_token(database, args.name)
        except auth.AuthError as exc:
            print(f"lastmile depot token add: {exc}", file=sys.stderr)
            return 1
        print(token)
        print(f"(the API token {args.name!r}; send it as 'Authorization: Bearer <token>'. "
              "It is not shown again.)", file=sys.stderr)
        return 0
    finally:
        database.close()


def _depot_migrate(args: argparse.Namespace) -> int:
    """Copy a depot to another database (SQLite to PostgreSQL, or back) and check the copy."""
    from depot.store import StoreError, open_database
    from depot.store.transfer import copy_depot, open_source

    try:
        source = open_source(args.source)
        try:
            target = open_database(args.target)
            try:
                report = copy_depot(source, target)
            finally:
                target.close()
        finally:
            source.close()
    except StoreError as exc:
        print(f"lastmile depot migrate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        total = sum(report.rows.values())
        print(f"copied {total} rows in {len(report.rows)} tables from {report.source} "
              f"to {report.target}; the counts match")
        if report.ok:
            print(f"verified: {report.chains.events} events in {report.chains.chains} device "
                  "journals, every hash chain intact")
        for line in report.chains.breaks:
            print(f"chain break: {line}")
    return 0 if report.ok else 1


def _depot_keygen(args: argparse.Namespace) -> int:
    """Make the depot's two keys: one signs commands, one opens sealed pickup credentials.

    Never overwrites keys: existing keys are replaced only with --rotate, which keeps the old
    ones in DIR/retired (see depot.keys.KeyDirectory and README "Rotating the depot's keys").
    """
    from depot.errors import DepotError
    from depot.keys import KeyDirectory, KeysExistError

    if args.drop_sealing_key and args.retire is None:
        _usage_error("lastmile depot keygen: --drop-sealing-key needs --retire STAMP")
    keys = KeyDirectory(args.out)
    try:
        if args.rotate:
            keys.rotate()
        elif args.retire is not None:
            keys.retire(args.retire, drop_sealing_key=args.drop_sealing_key)
        else:
            keys.create()
        report = keys.report()
    except KeysExistError as exc:
        raise SystemExit(
            f"lastmile depot keygen: {exc}; use --rotate to make new ones (old ones are kept)"
        ) from None
    except (DepotError, OSError) as exc:
        raise SystemExit(f"lastmile depot keygen: {exc}") from None
    print(json.dumps(report, indent=2))
    return 0


def _depot_command(args: argparse.Namespace) -> int:
    """Queue a command for a locker in the depot's outbox; the running depot signs and sends it.

    The arguments are checked against what the locker takes before anything is queued. Then it
    waits (up to --wait seconds) for the depot to publish it and the locker to answer, and says
    which; exit 0 when the locker accepted it, 1 when it refused it or nothing came back in
    time (the command stays queued: the depot sends it once it runs), 2 for a usage or
    configuration error.
    """
    import time

    from depot.errors import DepotError
    from depot.service import DepotService
    from depot.store import events, sends

    fields: dict[str, object] = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _usage_error(f"lastmile depot command: {item!r} is not key=value")
        try:  # numbers and JSON literals as such, anything else as text
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    config = _depot_service_config(args)
    try:
        service = DepotService(config)
    except DepotError as exc:
        return _usage_error(f"lastmile depot command: {exc}")
    try:
        if service.keys.signing is None:
            return _usage_error(
                "lastmile depot command: the depot has no command-signing key "
                "(depot.signing_key in depot.toml; `lastmile depot keygen` makes one)"
            )
        try:
            command_id = service.send_command(args.target, args.action, fields)
        except DepotError as exc:
            return _usage_error(f"lastmile depot command: {exc}")
        said = {"queued": command_id, "target": args.target, "action": args.action}
        print(json.dumps(said), flush=True)
        deadline = time.monotonic() + max(0.0, args.wait)
        published = False
        while True:
            with service.database.reading() as conn:
                published = published or sends.command_published(conn, command_id)
                answer = events.command_answer(conn, args.target, command_id)
            if answer is not None:
                kind, payload = answer
                print(json.dumps({kind: command_id, **payload}), flush=True)
                return 0 if kind == "command_accepted" else 1
            if time.monotonic() >= deadline:
                break
            time.sleep(COMMAND_POLL_S)
        if not published:
            print(
                f"lastmile depot command: queued, but no depot published it within "
                f"{args.wait:g} s: is `lastmile depot --config {args.config}` running? "
                "It will send the command when it runs.",
                file=sys.stderr,
            )
        else:
            print(
                f"lastmile depot command: sent; {args.target} has not answered within "
                f"{args.wait:g} s (offline?). `lastmile depot track` shows the answer later.",
                file=sys.stderr,
            )
        return 1
    finally:
        service.stop()


def _depot_provision(args: argparse.Namespace) -> int:
    """Write a production broker's files and every device's broker credentials for a fleet."""
    from depot.provision import ProvisionError, load_fleet, provision

    try:
        done = provision(load_fleet(args.devices), args.out)
    except ProvisionError as exc:
        return _usage_error(f"lastmile depot provision: {exc}")
    said = {
        "mosquitto_conf": str(done.mosquitto_conf),
        "ca_key": str(done.ca_key),
        "devices": {name: str(path) for name, path in done.devices.items()},
        "depot": str(done.depot),
    }
    print(json.dumps(said, indent=2))
    return 0


def _sim(args: argparse.Namespace) -> int:
    from depot.errors import DepotError
    from simulators.day import run_from_args
    from simulators.errors import SimulatorError

    if not args.verbose:
        # The day injects line noise and dead zones on purpose; their warnings are the
        # expected story, told by the progress lines instead.
        logging.getLogger().setLevel(logging.ERROR)
    try:
        return run_from_args(args)
    except (SimulatorError, DepotError) as exc:  # a set-up this machine cannot run
        print(f"lastmile sim: {exc}", file=sys.stderr)
        return 2


def _sim_lockboard(args: argparse.Namespace) -> int:
    from simulators.lockboard import run_from_args

    return run_from_args(args)


def _sim_scanner(args: argparse.Namespace) -> int:
    from simulators.scanner import run_from_args

    return run_from_args(args)


def _sim_keypad(args: argparse.Namespace) -> int:
    from simulators.scanner import run_keypad_from_args

    return run_keypad_from_args(args)


def _sim_gnss(args: argparse.Namespace) -> int:
    from simulators.gnss import run_from_args

    return run_from_args(args)


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument("--username", default="depot", help="the depot's broker account")
    p.add_argument(
        "--password-file", help="file holding the broker password (else env LASTMILE_MQTT_PASSWORD)"
    )
    p.add_argument("--ca-file", help="CA certificate of a TLS broker (default: plain TCP)")
    p.add_argument("--cert-file", help="client certificate, for a broker that asks for one")
    p.add_argument("--key-file", help="the client certificate's private key")


class _Version(argparse.Action):
    """`--version`: "lastmile-edge 0.1.0", from `parcel.version` (the one owner). Not argparse's
    own version action, which needs the text when the parser is built: every command would
    then pay for reading the installed metadata."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from parcel.version import DISTRIBUTION, software_version

        print(f"{DISTRIBUTION} {software_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lastmile",
        description="Devices at the end of the parcel chain: van scanner, depot sync, simulator.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug) to stderr"
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print lastmile-edge's version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("identify", help="say what a scanned code means, or why it is rejected")
    p.add_argument(
        "code",
        help="the scanned text; optional AIM prefix such as ]C1; "
        "write the GS separator as <GS> or \\x1d",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_identify)

    p = sub.add_parser(
        "decode",
        help="decode the barcodes in image files as the camera would",
        description="Decode the barcodes in image files as the camera would. Exit status: "
        "2 if a file is not a readable image, else 1 if an image held no symbol, else 0.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG...)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per image: path, symbols (text, format, aim, corners), ms",
    )
    p.add_argument(
        "--budget-ms",
        type=float,
        default=None,
        help="a time budget per image, as the camera has (default: none, so the answer does "
        "not depend on the machine's load; 0: none)",
    )
    p.set_defaults(func=_decode)

    p = sub.add_parser("van", help="run the van device: scanner, journal, uplink")
    p.add_argument("--config", required=True, type=Path, help="the van's TOML configuration")
    p.set_defaults(func=_van)

    p = sub.add_parser("locker", help="run a parcel locker: lock boards, keypad, scanner, sync")
    p.add_argument("--config", required=True, type=Path, help="the locker's TOML configuration")
    p.set_defaults(func=_locker)

    p = sub.add_parser(
        "counter",
        help="run a staffed collection point: scanner, staff screen (stdin or [staff] socket), "
        "sync",
    )
    p.add_argument("--config", required=True, type=Path, help="the counter's TOML configuration")
    p.set_defaults(func=_counter)

    p = sub.add_parser(
        "check",
        help="pre-flight: will this van, locker or depot work here? (ports, broker, clock, disk)",
        description="Check a device's set-up before it runs: config, serial ports, broker, "
        "certificates, clock, disk. Exit status: 0 all ok (warnings allowed), 1 something "
        "will not work, 2 the config is unusable.",
    )
    from lastmile.check import add_arguments as add_check_arguments

    add_check_arguments(p)
    p.set_defaults(func=_check)

    p = sub.add_parser(
        "install",
        help="write the systemd unit, sysusers, tmpfiles and udev files for a role "
        "(starts nothing)",
    )
    from lastmile.install import add_arguments as add_install_arguments

    add_install_arguments(p)
    p.set_defaults(func=_install)

    p = sub.add_parser(
        "depot",
        help="run the depot: store, verify and acknowledge events "
        "(or: `lastmile depot keygen|command --help`)",
    )
    p.add_argument(
        "--config", type=Path, help="the depot's TOML settings: run the whole depot service"
    )
    p.add_argument(
        "--database",
        "--db",
        dest="db",
        metavar="PATH_OR_URL",
        help="the depot's database: a SQLite file or a postgresql:// URL (with --config: "
        "instead of the file's; alone: event ingest only)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        help="run N depot processes sharing the devices' stream and the database "
        "(instead of depot.workers; broker accounts USERNAME-1..N)",
    )
    p.add_argument(
        "--worker", type=_positive_int, help="be worker K of --workers (the supervisor sets it)"
    )
    _broker_options(p)
    p.set_defaults(func=_depot, depot_tool="")
    tools = p.add_subparsers(dest="depot_tool", metavar="TOOL", required=False)
    i = tools.add_parser("import", help="receive parcels from a merchant's CSV or JSON file")
    i.add_argument("file", type=Path, help="the import file")
    i.add_argument("--format", choices=["csv", "json"], help="default: from the file name")
    i.add_argument("--config", type=Path, required=True, help="the depot's TOML settings")
    i.set_defaults(func=_depot_import)
    a = tools.add_parser("arrive", help="arrival scans at the depot (codes, or lines on stdin)")
    a.add_argument("codes", nargs="*", help="scanned codes (default: one per line on stdin)")
    a.add_argument("--config", type=Path, required=True, help="the depot's TOML settings")
    a.set_defaults(func=_depot_arrive)
    pl = tools.add_parser("plan", help="assign waiting parcels to vans and issue manifests")
    pl.add_argument("--config", type=Path, required=True, help="the depot's TOML settings")
    pl.add_argument("--day", help="the delivery day, YYYY-MM-DD (default: today, UTC)")
    pl.add_argument("--vans", nargs="*", help="only these vans (default: depot.vans)")
    pl.set_defaults(func=_depot_plan)
    t = tools.add_parser("track", help="a parcel's state and timeline")
    t.add_argument("parcel", help="the parcel id or its barcode text")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("--config", type=Path, help="the depot's TOML settings (for its database)")
    t.add_argument("--database", "--db", dest="db", metavar="PATH_OR_URL",
                   help="or the depot's database directly")
    t.set_defaults(func=_depot_track)
    e = tools.add_parser("epcis", help="export timelines as GS1 EPCIS 2.0 JSON-LD")
    e.add_argument("parcels", nargs="*", help="these parcels (default: all)")
    e.add_argument("--config", type=Path, help="the depot's TOML settings (for its database)")
    e.add_argument("--database", "--db", dest="db", metavar="PATH_OR_URL",
                   help="or the depot's database directly")
    e.set_defaults(func=_depot_epcis)
    al = tools.add_parser("alarms", help="alarms from lockers, vans and the depot; acknowledge one")
    al.add_argument("--state", choices=["open", "acknowledged", "all"], default="open",
                    help="which alarms to list (default: open)")
    al.add_argument("--ack", type=_positive_int, metavar="ID", help="acknowledge alarm ID")
    al.add_argument("--by", metavar="NAME", help="who acknowledges it (with --ack)")
    al.add_argument("--note", help="what was found or done (with --ack)")
    al.add_argument("--json", action="store_true", help="print JSON")
    al.add_argument("--config", type=Path, help="the depot's TOML settings (for its database)")
    al.add_argument("--database", "--db", dest="db", metavar="PATH_OR_URL",
                    help="or the depot's database directly")
    al.set_defaults(func=_depot_alarms)
    u = tools.add_parser("user", help="operator accounts for the depot's console")
    uu = u.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    ua = uu.add_parser("add", help="add an operator (password from a prompt or stdin's first line)")
    ua.add_argument("name", help="the operator's sign-in name")
    ua.add_argument("--role", choices=["viewer", "operator"], default="operator",
                    help="viewer: sees everything; operator: also acts (default)")
    ul = uu.add_parser("list", help="the accounts and their roles")
    for sp in (ua, ul):
        sp.add_argument("--config", type=Path, help="the depot's TOML settings (its database)")
        sp.add_argument("--database", "--db", dest="db", metavar="PATH_OR_URL",
                        help="or the depot's database directly")
    u.set_defaults(func=_depot_user)
    tk = tools.add_parser("token", help="API tokens for machines reading the JSON API")
    tt = tk.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    ta = tt.add_parser("add", help="make a token NAME and print it (once)")
    tr = tt.add_parser("remove", help="revoke the token NAME")
    for sp in (ta, tr):
        sp.add_argument("name", help="what the token is for, e.g. merchant-portal")
        sp.add_argument("--config", type=Path, help="the depot's TOML settings (its database)")
        sp.add_argument("--database", "--db", dest="db", metavar="PATH_OR_URL",
                        help="or the depot's database directly")
    tk.set_defaults(func=_depot_token)
    m = tools.add_parser(
        "migrate",
        help="copy a depot to another database (e.g. SQLite to PostgreSQL) and verify the copy",
    )
    m.add_argument("--from", dest="source", required=True, metavar="PATH_OR_URL",
                   help="the depot's database now")
    m.add_argument("--to", dest="target", required=True, metavar="PATH_OR_URL",
                   help="an empty database to copy it into (migrated first)")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=_depot_migrate)
    k = tools.add_parser(
        "keygen",
        help="make the depot's command-signing and sealing keys (never overwrites them)",
    )
    k.add_argument("--out", type=Path, required=True, help="directory for the private keys")
    kk = k.add_mutually_exclusive_group()
    kk.add_argument("--rotate", action="store_true",
                    help="replace existing keys; the old ones are kept in DIR/retired")
    kk.add_argument("--retire", metavar="STAMP",
                    help="stop listing the command key rotated away at STAMP for lockers")
    k.add_argument("--drop-sealing-key", action="store_true",
                   help="with --retire: also delete that old sealing key (credentials "
                   "sealed under it can then never be opened)")
    k.set_defaults(func=_depot_keygen)
    c = tools.add_parser(
        "command", help="send a locker a command through the depot (which signs it)"
    )
    c.add_argument("target", help="the locker, e.g. locker-1")
    c.add_argument("action", help="reserve | extend_hold | remote_open | set_in_service")
    c.add_argument(
        "args",
        nargs="*",
        help="key=value arguments, e.g. parcel=RB123456785GB "
        "hours=48 (values that parse as JSON are sent as such)",
    )
    c.add_argument("--config", type=Path, required=True, help="the depot's TOML settings")
    c.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the locker's answer (default 30; 0: only queue it)",
    )
    c.set_defaults(func=_depot_command)
    pv = tools.add_parser(
        "provision",
        help="write a TLS-only Mosquitto set-up, a fleet CA and each device's certificate",
    )
    pv.add_argument("devices", type=Path, metavar="DEVICES.toml",
                    help="the fleet: [broker] host and port, [depot] workers, [[van]], [[locker]]")
    pv.add_argument("--out", type=Path, required=True,
                    help="a new or empty directory for the files (never overwritten)")
    pv.set_defaults(func=_depot_provision)

    p = sub.add_parser(
        "sim",
        help="run simulated delivery days end to end (two by default) "
        "(or one simulated device: `lastmile sim lockboard|scanner|keypad|gnss --help`)",
    )
    from simulators.day import add_arguments

    add_arguments(p)
    p.set_defaults(func=_sim)
    devices = p.add_subparsers(dest="device", metavar="DEVICE", required=False)
    lb = devices.add_parser("lockboard", help="serve simulated Kerong CU16 lock boards on a pty")
    from simulators.lockboard import add_arguments as add_lockboard_arguments

    add_lockboard_arguments(lb)
    lb.set_defaults(func=_sim_lockboard)
    from simulators.gnss import add_arguments as add_gnss_arguments
    from simulators.scanner import add_arguments as add_scanner_arguments
    from simulators.scanner import add_keypad_arguments

    sc = devices.add_parser("scanner", help="a barcode scanner on a pty; stdin lines are scans")
    add_scanner_arguments(sc)
    sc.set_defaults(func=_sim_scanner)
    kp = devices.add_parser("keypad", help="a locker's keypad on a pty; stdin lines are keys + CR")
    add_keypad_arguments(kp)
    kp.set_defaults(func=_sim_keypad)
    gn = devices.add_parser("gnss", help="a GNSS receiver on a pty: NMEA at 1 Hz, moved by stdin")
    add_gnss_arguments(gn)
    gn.set_defaults(func=_sim_gnss)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lastmile import logs

    logs.setup(args.verbose, args.command)  # the one owner of the process's log set-up
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:  # a command whose extra was not installed: say which
        from parcel.version import extra_providing, install_command

        extra = extra_providing(exc.name)
        if extra is None:
            raise
        if args.command == "sim":  # the simulated day runs every device and the depot
            extra = "sim"
        print(f"lastmile {args.command}: needs `{install_command(extra)}`", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
