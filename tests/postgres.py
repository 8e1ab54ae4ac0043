"""A real PostgreSQL server for the catalog tests, started by the test session itself.

`initdb` and `pg_ctl` from the local PostgreSQL install (``pg_config --bindir``, else the
newest ``/usr/lib/postgresql/*/bin``) make a throwaway cluster in a temporary directory. It
listens on a unix socket in that directory only (no TCP port to race for or expose), trusts
whoever can reach the socket, and is stopped and deleted when the session ends. initdb refuses
to run as root, so under root the cluster belongs to a system user, ``lookalike-pg``, created
if missing. Each test (or module, or session fixture) gets a database of its own.

Without PostgreSQL the tests that need it skip, saying so; ``.ci/postgres`` installs it.

Fixtures:

- ``postgres``: the session's :class:`PostgresServer` (``postgres.new_database()`` -> URL);
- ``postgres_url``: a fresh, empty database for one test;
- ``catalog_url``: parametrised, None (the index's own SQLite file) and then a fresh PostgreSQL
  database, for tests that run against both catalogs;
- ``CATALOGS`` and ``url_for()``: the same for fixtures of a wider scope, or parametrised indirectly.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The operating-system user that owns the cluster when the tests run as root.
PG_OS_USER = "lookalike-pg"
#: The cluster's superuser (a database role, whatever the OS user).
PG_ROLE = "lookalike"
INSTALL_HINT = "PostgreSQL is not installed (no initdb/pg_ctl found); run `bash .ci/postgres` to install it"

#: Throwaway data: durability off, so the tests spend no time on fsync.
SERVER_OPTIONS = (
    "-c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200 -c shared_buffers=32MB"
)

#: A database collation that is not byte order, whatever locales the OS has (see new_database).
ICU_EN_US = "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None if PostgreSQL is not installed."""
    candidates: list[str] = []
    if os.environ.get("LOOKALIKE_PG_BINDIR"):
        candidates.append(os.environ["LOOKALIKE_PG_BINDIR"])
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    # Debian's server binaries live per major version; pg_config may be a client-only one.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for which in ("initdb", "pg_ctl"):
        found = shutil.which(which)
        if found:
            candidates.append(str(Path(found).resolve().parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _os_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: None when not root, else PG_OS_USER's (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_OS_USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresServer:
    bindir: Path
    base: Path  # the temporary directory: data/, the socket, the log
    owner: tuple[int, int] | None
    _names = itertools.count(1)
    _icu = True

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        kw: dict = {"capture_output": True, "text": True, "timeout": 120, "cwd": self.base}
        if self.owner is not None:
            kw.update(user=self.owner[0], group=self.owner[1], extra_groups=[])
        proc = subprocess.run([str(self.bindir / args[0]), *args[1:]], **kw)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{log}")
        return proc

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", PG_ROLE, "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"{SERVER_OPTIONS} -c unix_socket_directories='{self.base}'"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of `database`, over the unix socket."""
        return f"postgresql+psycopg://{PG_ROLE}@/{database}?host={self.base}"

    def new_database(self, hint: str = "t") -> str:
        """A fresh, empty database; returns its URL.

        Its default collation is ICU's en-US where the server has ICU (PostgreSQL 15+), as on a
        typical production server and unlike this cluster's "C": ordering by a text column then
        differs from byte order ('a' < 'B'), which the catalog must not depend on."""
        import psycopg

        name = f"{''.join(ch for ch in hint.lower() if ch.isalnum())[:40]}_{next(self._names)}"
        with psycopg.connect(host=str(self.base), user=PG_ROLE, dbname="postgres", autocommit=True) as conn:
            if self._icu:
                try:
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 {ICU_EN_US}')
                    return self.url(name)
                except psycopg.Error:
                    self._icu = False  # no ICU in this build, or before PostgreSQL 15
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_postgres() -> PostgresServer:
    """Start a throwaway cluster (the caller stops it); skips the test if PostgreSQL is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[dev]' (it brings psycopg[binary])")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(INSTALL_HINT)
    owner = _os_user()
    base = Path(tempfile.mkdtemp(prefix="lookalike-pg-"))  # short: a socket path has ~100 bytes
    if owner is not None:
        os.chown(base, *owner)
    server = PostgresServer(bindir, base, owner)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the server is marked `postgres` (`-m "not postgres"` leaves them out)."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, stopped and deleted at its end."""
    server = start_postgres()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, empty database for this test."""
    return postgres.new_database(request.node.name)


#: The two kinds of catalog, as fixture params: `@pytest.fixture(params=CATALOGS)`, or with
#: `indirect=True` for a fixture that calls :func:`url_for`.
CATALOGS = ("sqlite", pytest.param("postgresql", marks=pytest.mark.postgres))


def url_for(request: pytest.FixtureRequest, kind: str, hint: str = "t") -> str | None:
    """The catalog URL a test of `kind` (a CATALOGS value) builds with: None means the index's own SQLite."""
    if kind == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database(hint)


@pytest.fixture(params=CATALOGS)
def catalog_url(request: pytest.FixtureRequest) -> str | None:
    """None (the index's own SQLite catalog), then a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")
