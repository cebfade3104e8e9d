"""A private PostgreSQL server for the tests, the bench and the simulated day: its own cluster,
on 127.0.0.1 and a free port (the far end of the depot's database wire, as `simulators.broker`
is of the MQTT one).

Owns: one `postgres` process (a child of this one) and the temporary directory it runs from —
the cluster made by `initdb`, the Unix socket directory and the server's log. It hands out
`postgresql://` URLs to databases it creates for the tests, one fresh database per test.

Why its own server: the depot's PostgreSQL backend must be tested against a real server, but
never against one that happens to be running on the machine (there is often one on port 5432,
holding someone's data). This one is made from nothing, listens only on loopback, and is
removed, data and all, by `stop()`.

Root: `initdb` and `postgres` refuse to run as root, and CI runs as root. As root the server
runs as Debian's `postgres` system user (made by the `postgresql` package), through `setpriv`,
with its directory owned by that user; as anyone else it runs as the caller.

Must never: connect to or touch a server it did not start, listen on anything but 127.0.0.1,
or wait without a timeout. Use the context manager (or the `postgres_server` fixture) so a
failed test cannot leak a server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import psycopg
from psycopg import sql

from simulators.broker import free_port
from simulators.errors import SimulatorError

__all__ = [
    "PostgresBinaries",
    "PostgresError",
    "PostgresServer",
    "find_postgres",
]

HOST: Final = "127.0.0.1"
DEBIAN_ROOT: Final = Path("/usr/lib/postgresql")
SERVICE_USER: Final = "postgres"  # Debian's system user for PostgreSQL, used when we are root

START_TIMEOUT_S: Final = 30.0  # initdb and start-up together; a 2-core CI machine takes ~2 s
STOP_TIMEOUT_S: Final = 10.0
ADMIN_TIMEOUT_S: Final = 30  # connect and statement timeout of the harness's own connections
_START_WAIT_STEP_S: Final = 0.05  # pause between two "does it accept connections yet" tries
_LOG_TAIL_LINES: Final = 40
_PORT_RETRIES: Final = 3  # fresh ports tried when a free port was taken before postgres bound it
_ADDRESS_IN_USE: Final = b"Address already in use"

# Database names go into URLs unquoted: keep them to what needs no escaping anywhere.
_DB_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresError(SimulatorError):
    """The test server could not be found, started, used or stopped."""


@dataclass(frozen=True)
class PostgresBinaries:
    """The server programs of one PostgreSQL installation."""

    initdb: Path
    postgres: Path


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: compare "9.6" < "15" as numbers, not as text.
    return tuple(int(p) for p in re.findall(r"\d+", bindir.parent.name)) or (0,)


def find_postgres() -> PostgresBinaries | None:
    """`initdb` and `postgres` of the newest Debian install, else from PATH; None if neither.

    Debian keeps the server programs out of PATH, in /usr/lib/postgresql/<version>/bin, and
    can hold several versions side by side: the highest wins. `pg_ctl` is not needed: the
    server is our own child process, started and signalled directly (see `PostgresServer`).
    """
    bindirs = sorted(
        (
            d
            for d in DEBIAN_ROOT.glob("*/bin")
            if os.access(d / "initdb", os.X_OK) and os.access(d / "postgres", os.X_OK)
        ),
        key=_version_key,
        reverse=True,
    )
    if bindirs:
        return PostgresBinaries(bindirs[0] / "initdb", bindirs[0] / "postgres")
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return PostgresBinaries(Path(initdb), Path(postgres))
    return None


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")


def _child_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) from a developer's shell must not steer
    # the cluster we make; everything else (PATH, TZ) passes through.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Last resort: SIGKILL the postmaster and its backends (one process group) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)


def _abandon(proc: subprocess.Popen[bytes] | None, workdir: Path) -> None:
    """What the garbage collector or interpreter exit does for a server nobody stopped."""
    if proc is not None:
        _kill_group(proc)
    shutil.rmtree(workdir, ignore_errors=True)


def _check_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: 1-63 of a-z 0-9 _, not starting with a digit")


class _PortTaken(Exception):
    pass


class PostgresServer:
    """A throwaway PostgreSQL cluster and server for tests.

    `start()` makes the cluster in a new temporary directory, starts the server on 127.0.0.1
    and a free port, waits until it accepts connections and creates `database`; `url` then
    names that database. `new_database(name)` makes another, empty one (from template0) and
    returns its URL. `stop()` shuts the server down and deletes the directory: nothing it held
    survives. Every local user may connect (trust authentication): test data only.
    """

    def __init__(
        self,
        *,
        user: str = "lastmile",
        database: str = "lastmile",
        binaries: PostgresBinaries | None = None,
        parent_dir: Path | None = None,
        durable: bool = False,
    ) -> None:
        """`parent_dir` (default: the system temporary directory) must be reachable by the
        `postgres` user when we are root — pytest's own tmp_path (mode 0700) is not.

        `durable=True` keeps PostgreSQL's defaults (fsync, synchronous commit, full-page
        writes): what a carrier runs, and what a benchmark against SQLite's `synchronous=FULL`
        must compare with. The tests run without them, for speed."""
        self.durable = durable
        for name in (user, database):
            _check_name(name)
        self._user = user
        self._database = database
        self._binaries = binaries
        self._parent_dir = parent_dir
        self._workdir: Path | None = None
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., PostgresServer] | None = None
        self._lock = threading.Lock()

    # --- where it is ---

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """The TCP port; 0 before the first start()."""
        return self._port

    @property
    def user(self) -> str:
        """The cluster's superuser, the user in every URL this server hands out."""
        return self._user

    @property
    def database(self) -> str:
        return self._database

    @property
    def url(self) -> str:
        """`postgresql://user@127.0.0.1:PORT/database` of the database made by start()."""
        return self.url_for(self._database)

    def url_for(self, database: str) -> str:
        if not self._port:
            raise PostgresError("the PostgreSQL test server has not been started")
        return f"postgresql://{self._user}@{HOST}:{self._port}/{database}"

    @property
    def workdir(self) -> Path:
        """The temporary directory: `data/` (the cluster), `socket/`, `postgres.log`."""
        if self._workdir is None:
            raise PostgresError("the PostgreSQL test server has not been started")
        return self._workdir

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's log, for a failing test's message."""
        return _log_tail(self.log_path, lines) if self._workdir is not None else "(no log)"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # --- lifecycle ---

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Make the cluster, start the server, create `database`.

        initdb and the wait for connections share `timeout`; the CREATE DATABASE after them
        has its own bound (ADMIN_TIMEOUT_S).

        Raises PostgresError, with initdb's output or the tail of the server's log, on failure;
        a failed start leaves nothing running and no directory behind.
        """
        with self._lock:
            if self._workdir is not None:
                raise PostgresError(f"{self!r} was already started (one start per server)")
            binaries = self._binaries or find_postgres()
            if binaries is None:
                raise PostgresError(
                    "PostgreSQL is not installed: no initdb/postgres under "
                    f"{DEBIAN_ROOT}/*/bin or on PATH (Debian: apt-get install postgresql)"
                )
            deadline = time.monotonic() + timeout
            run_as = self._run_as_prefix()
            workdir = Path(tempfile.mkdtemp(prefix="lastmile-pg-", dir=self._parent_dir))
            self._workdir = workdir
            self._finalizer = weakref.finalize(self, _abandon, None, workdir)
            try:
                self._prepare_workdir()
                self._initdb(binaries, run_as, deadline)
                for attempt in range(_PORT_RETRIES + 1):
                    self._port = free_port()
                    try:
                        self._spawn_and_wait(binaries, run_as, deadline)
                        break
                    except _PortTaken:
                        # Another process took the port between free_port() and postgres
                        # binding it: pick another.
                        if attempt == _PORT_RETRIES:
                            raise PostgresError(
                                f"port {self._port} in use\n{self.log_tail()}"
                            ) from None
                self._admin(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                        sql.Identifier(self._database)
                    )
                )
            except BaseException:
                self._stop_locked(STOP_TIMEOUT_S)
                raise

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Shut the server down and delete its directory (and with it every database).

        A fast shutdown first (what `pg_ctl stop -m fast` sends: SIGINT — open sessions are
        ended, nothing is left half-written); if it is not down in `timeout` seconds, an
        immediate one (SIGQUIT); then SIGKILL to the whole process group. Safe to call twice.
        """
        with self._lock:
            self._stop_locked(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- databases ---

    def new_database(self, name: str) -> str:
        """Create the empty database `name` (from template0: nothing a test put into template1
        leaks in) and return its URL. About 30 ms; ValueError for a name that is not plain."""
        _check_name(name)
        self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending any sessions still connected to it (a test's leaked pool)."""
        _check_name(name)
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _admin(self, statement: sql.Composed) -> None:
        """Run one statement as the superuser in the `postgres` database, outside a
        transaction (CREATE/DROP DATABASE cannot run inside one), never waiting unbounded."""
        if not self.is_running:
            raise PostgresError(f"{self!r} is not running\n{self.log_tail()}")
        with psycopg.connect(
            self.url_for("postgres"),
            autocommit=True,
            connect_timeout=ADMIN_TIMEOUT_S,
            options=f"-c statement_timeout={ADMIN_TIMEOUT_S}s",
        ) as conn:
            conn.execute(statement)

    # --- files and process ---

    def _service_user(self) -> pwd.struct_passwd | None:
        """Whom the server runs as: None for "as we are"; Debian's `postgres` user as root."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise PostgresError(
                f"running as root, and initdb/postgres refuse root, but there is no "
                f"{SERVICE_USER!r} user to run them as (Debian's postgresql package makes it)"
            ) from None

    def _run_as_prefix(self) -> list[str]:
        account = self._service_user()
        if account is None:
            return []
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise PostgresError("running as root needs setpriv (Debian: util-linux) to drop root")
        # setpriv exec()s in place (runuser forks and waits), so the pid we hold is the
        # postmaster's own and our signals reach it directly.
        return [
            setpriv,
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--init-groups",
            "--",
        ]

    def _prepare_workdir(self) -> None:
        workdir = self.workdir
        (workdir / "socket").mkdir()
        self.log_path.touch()
        account = self._service_user()
        if account is not None:
            # initdb makes data/ itself, so it needs to own the directory it makes it in.
            for path in (workdir, workdir / "socket", self.log_path):
                os.chown(path, account.pw_uid, account.pw_gid)

    def _initdb(self, binaries: PostgresBinaries, run_as: list[str], deadline: float) -> None:
        command = [
            *run_as,
            str(binaries.initdb),
            "--pgdata",
            str(self.data_dir),
            "--username",
            self._user,
            # Every local user may connect as any role without a password: the server listens
            # only on 127.0.0.1 and its own socket directory, and holds only test data.
            "--auth-local=trust",
            "--auth-host=trust",
            "--encoding=UTF8",
            # C.UTF-8 (always there on Debian): the same sort order and messages on every
            # machine, whatever the developer's LANG, and English log lines (see _ADDRESS_IN_USE).
            "--locale=C.UTF-8",
            # No fsync of the new cluster: it lives only as long as the test session.
            "--no-sync",
        ]
        # Its own process group: initdb runs `postgres --single` children that a timeout must
        # end too, or they go on writing into the directory we are about to remove.
        proc = subprocess.Popen(
            command,
            cwd=self.workdir,  # the postgres user may not be allowed into our cwd
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=STOP_TIMEOUT_S)  # closes the pipe
            raise PostgresError(f"initdb did not finish in time: {command}") from exc
        if proc.returncode != 0:
            raise PostgresError(
                f"initdb failed ({proc.returncode}): {command}\n"
                f"{output.decode('utf-8', 'replace')}\n"
                "(as root: the postgres user must be able to reach the temporary directory)"
            )

    def _spawn_and_wait(
        self, binaries: PostgresBinaries, run_as: list[str], deadline: float
    ) -> None:
        settings = {
            "port": str(self._port),
            "listen_addresses": HOST,  # loopback only, never a LAN address
            "unix_socket_directories": str(self.workdir / "socket"),
            "logging_collector": "off",  # log to stderr, which is our log file
        }
        if not self.durable:
            # Durability off, for speed: a test cluster is thrown away on stop, and nothing in
            # it must survive a crash. Never copy these three into a real server's config.
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        command = [*run_as, str(binaries.postgres), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        log_start = self.log_path.stat().st_size  # what earlier tries on other ports wrote
        with self.log_path.open("ab") as log_file:
            # Its own session and process group: a stray SIGINT at the test runner does not
            # reach it, and the last-resort kill takes the backends with the postmaster.
            self._proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        assert self._finalizer is not None
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _abandon, self._proc, self.workdir)
        admin_url = self.url_for("postgres")
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = self.log_tail()
                with self.log_path.open("rb") as log_file:
                    log_file.seek(log_start)
                    if _ADDRESS_IN_USE in log_file.read():
                        raise _PortTaken
                raise PostgresError(f"postgres exited with {code} on start\n{tail}")
            try:
                # Refused until it listens, "the database system is starting up" until it is
                # ready: both answer at once, so the connect timeout only bounds a hang.
                with psycopg.connect(admin_url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"postgres did not accept connections on {HOST}:{self._port} in time\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_START_WAIT_STEP_S)

    def _stop_locked(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                for sig in (signal.SIGINT, signal.SIGQUIT):  # fast, then immediate shutdown
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                    try:
                        proc.wait(timeout)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                else:
                    _kill_group(proc)
                if proc.poll() is None:
                    raise PostgresError(f"postgres pid {proc.pid} survived SIGKILL")
        finally:
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"<PostgresServer {HOST}:{self._port} {state}>"
