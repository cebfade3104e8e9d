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
from typing import Any, Protocol


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

    Exit status: 2 if any file could not be read as an image (its line says so), else 1 if
    any image held no symbol, else 0.
    """
    import time

    import cv2
    import numpy as np

    from drivers.camera import Decoder

    decoder = Decoder(budget_ms=args.budget_ms or None)
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


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().strip()
    password = os.environ.get("LASTMILE_MQTT_PASSWORD")
    if not password:
        raise SystemExit("lastmile: give --password-file or set LASTMILE_MQTT_PASSWORD")
    return password


class _Device(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def _run_device(name: str, make: Callable[[], _Device]) -> int:
    """Build and start a device, run until SIGTERM/SIGINT, stop it; exit 2 if it cannot start."""
    from depot.errors import DepotError
    from edge.errors import EdgeError
    from parcel.errors import ParcelError
    from sync.errors import SyncError

    try:
        device = make()
        device.start()
    except (DepotError, EdgeError, ParcelError, SyncError, OSError) as exc:
        print(f"lastmile {name}: {exc}", file=sys.stderr)
        return 2
    try:
        _wait_for_signal()
    finally:
        device.stop()
    return 0


def _van(args: argparse.Namespace) -> int:
    from edge.van import JsonLinesFeedback, Van, load_config

    def make() -> Van:
        feedback = JsonLinesFeedback()
        van = Van(load_config(args.config), feedback)
        # With [round] enabled: courier commands as JSON lines on stdin, a reply line each.
        # End of stdin only ends the input; the van runs until SIGTERM/SIGINT as before.
        if sys.stdin is not None:  # None when started without any stdin at all
            van.take_courier_input(sys.stdin.fileno(), feedback.reply)
        return van

    return _run_device("van", make)


def _locker(args: argparse.Namespace) -> int:
    from edge.locker_device import LockerDevice

    return _run_device("locker", lambda: LockerDevice.from_config_file(args.config))


def _depot_service_config(args: argparse.Namespace) -> Any:
    from depot.config import DepotConfigError, load_depot_config

    if getattr(args, "config", None) is None:
        raise SystemExit(f"lastmile depot {args.depot_tool}: --config is required")
    try:
        return load_depot_config(args.config)
    except DepotConfigError as exc:
        raise SystemExit(f"lastmile depot: {exc}") from None


def _depot_run_service(args: argparse.Namespace) -> int:
    """The whole depot: ingest, parcel states, policy, manifests, webhooks, HTTP API."""
    from depot.service import DepotService

    config = _depot_service_config(args)
    if config.broker is None:
        raise SystemExit("lastmile depot: the config has no [broker]")
    if args.db is not None:  # --database on the command line wins over the file's
        config.database = args.db
    if args.workers is not None:
        config.workers = args.workers
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
    from depot.service import DepotService

    service = DepotService(_depot_service_config(args))
    try:
        result = service.import_parcels(args.file, format=args.format)
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
    types into the terminal). Prints one JSON line per code; exit 1 if any was rejected.
    """
    from depot.service import DepotService
    from parcel.identify import Rejection, parse_cli_code

    service = DepotService(_depot_service_config(args))
    rejected = 0
    try:
        codes = args.codes or (line.strip() for line in sys.stdin)
        for code in codes:
            if not code:
                continue
            try:
                parcel = service.arrival_scan(parse_cli_code(code))
                print(json.dumps({"received": parcel}), flush=True)
            except Rejection as exc:
                rejected += 1
                print(json.dumps({"rejected": code, "reason": exc.reason}), flush=True)
    finally:
        service.stop()
    return 1 if rejected else 0


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


def _depot_supervise(args: argparse.Namespace, workers: int) -> int:
    """`--workers N`: N depot processes on one database, restarted when one dies."""
    from depot.workers import Workers, worker_command

    extra = ["--database", str(args.db)] if args.db is not None else []
    command = worker_command(sys.executable, str(args.config), workers, extra, args.verbose)
    minder = Workers(command, workers)
    minder.start()
    print(json.dumps({"depot": "supervising", "workers": workers}), flush=True)
    try:
        _wait_for_signal()
    finally:
        minder.stop()
    return 0


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
        args.host, args.port, args.username, _password(args), tls_ca=args.ca_file
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
    """Make the depot's two keys: one signs commands, one opens sealed pickup credentials."""
    import base64

    from sync.signing import generate_keypair, generate_sealing_keypair, write_private_key

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sign_private, sign_public = generate_keypair()
    seal_private, seal_public = generate_sealing_keypair()
    write_private_key(out / "command-signing.pem", sign_private)
    write_private_key(out / "credential-sealing.pem", seal_private)
    print(
        json.dumps(
            {
                "command_signing_key": str(out / "command-signing.pem"),
                "credential_sealing_key": str(out / "credential-sealing.pem"),
                "locker_config": {
                    "depot": {
                        "command_keys": [base64.b64encode(sign_public).decode()],
                        "sealing_key": base64.b64encode(seal_public).decode(),
                    }
                },
            },
            indent=2,
        )
    )
    return 0


def _depot_command(args: argparse.Namespace) -> int:
    """Sign one command for one device and publish it on the device's command topic."""
    import time

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from sync.signing import load_signing_key, sign_command
    from sync.wire import command_topic

    fields: dict[str, object] = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"lastmile depot command: {item!r} is not key=value")
        try:  # numbers and JSON literals as such, anything else as text
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    payload = sign_command(
        load_signing_key(Path(args.key).read_bytes()),
        target=args.target,
        action=args.action,
        args=fields,
        ttl_s=args.ttl,
        now=time.time(),
    )
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{args.username}-cli", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(args.username, _password(args))
    if args.ca_file:
        client.tls_set(ca_certs=args.ca_file)
    client.connect(args.host, args.port)
    client.loop_start()
    try:
        info = client.publish(command_topic(args.target, args.action), payload, qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            print("lastmile depot command: the broker did not take the command", file=sys.stderr)
            return 1
    finally:
        client.loop_stop()
        client.disconnect()
    print(
        json.dumps(
            {"sent": json.loads(payload)["id"], "target": args.target, "action": args.action}
        )
    )
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


def _broker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument("--username", default="depot", help="the depot's broker account")
    p.add_argument(
        "--password-file", help="file holding the broker password (else env LASTMILE_MQTT_PASSWORD)"
    )
    p.add_argument("--ca-file", help="CA certificate of a TLS broker (default: plain TCP)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lastmile",
        description="Devices at the end of the parcel chain: van scanner, depot sync, simulator.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug) to stderr"
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
        default=15.0,
        help="the decoder's time budget per image, as on the camera (default 15; 0: none)",
    )
    p.set_defaults(func=_decode)

    p = sub.add_parser("van", help="run the van device: scanner, journal, uplink")
    p.add_argument("--config", required=True, type=Path, help="the van's TOML configuration")
    p.set_defaults(func=_van)

    p = sub.add_parser("locker", help="run a parcel locker: lock boards, keypad, scanner, sync")
    p.add_argument("--config", required=True, type=Path, help="the locker's TOML configuration")
    p.set_defaults(func=_locker)

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
    k = tools.add_parser("keygen", help="make the depot's command-signing and sealing keys")
    k.add_argument("--out", type=Path, required=True, help="directory for the private keys")
    k.set_defaults(func=_depot_keygen)
    c = tools.add_parser("command", help="sign a command for a device and publish it")
    c.add_argument("target", help="the device id, e.g. locker-1")
    c.add_argument("action", help="reserve | extend_hold | remote_open")
    c.add_argument(
        "args",
        nargs="*",
        help="key=value arguments, e.g. parcel=RB123456785GB "
        "hours=48 (values that parse as JSON are sent as such)",
    )
    c.add_argument("--key", required=True, help="the depot's command-signing key (PEM)")
    c.add_argument("--ttl", type=float, default=300.0, help="seconds the command stays valid")
    _broker_options(c)
    c.set_defaults(func=_depot_command)

    p = sub.add_parser(
        "sim",
        help="run simulated delivery days end to end (two by default) "
        "(or one simulated device: `lastmile sim lockboard --help`)",
    )
    from simulators.day import add_arguments

    add_arguments(p)
    p.set_defaults(func=_sim)
    devices = p.add_subparsers(dest="device", metavar="DEVICE", required=False)
    lb = devices.add_parser("lockboard", help="serve simulated Kerong CU16 lock boards on a pty")
    from simulators.lockboard import add_arguments as add_lockboard_arguments

    add_lockboard_arguments(lb)
    lb.set_defaults(func=_sim_lockboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
