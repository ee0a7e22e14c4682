"""A real PostgreSQL server for the tests and the benchmark: initdb in a temporary directory, the server on a
free loopback port and a socket directory of its own, ready once a connection succeeds.

initdb and postgres refuse to run as root (CI runs as root): then both run as the `postgres` system user
(which Debian's postgresql package creates; scripts/setup.sh installs it), in a directory handed to it.
Local (socket) connections are trusted — the tests' superuser — and TCP ones need a password (scram), so a
wrong password is really refused.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """$CHARBOT_PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin, else wherever `postgres` is on PATH."""
    named = os.environ.get("CHARBOT_PG_BIN")
    candidates = [Path(named)] if named else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()), None)


def why_unavailable() -> str | None:
    """None when a server can be started here; else why not (the reason a skipped test prints)."""
    if find_bindir() is None:
        return ("PostgreSQL server binaries (initdb, postgres) not found: run scripts/setup.sh dev as root (it installs Debian's "
                "postgresql), or set CHARBOT_PG_BIN to their folder")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no 'postgres' system user to run the server as (apt-get install postgresql creates it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, *, options: dict[str, str] | None = None):
        self.bindir = find_bindir()
        assert self.bindir is not None, why_unavailable()
        self.root = Path(tempfile.mkdtemp(prefix="charbot-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sock"
        self.sockets.mkdir()
        self.port = free_port()
        self.options = {"listen_addresses": "127.0.0.1", "fsync": "off", "max_connections": "200", **(options or {})}
        self.process: subprocess.Popen | None = None
        self._as_user: dict = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(SUPERUSER)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        password_file = self.root / "pw"
        password_file.write_text("postgres-test-superuser\n")
        if self._as_user:
            os.chown(password_file, self._as_user["user"], self._as_user["group"])
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(password_file), "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            check=True, capture_output=True, **self._as_user,
        )

    def start(self, timeout: float = 30.0) -> None:
        args = [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.sockets), "-p", str(self.port)]
        for key, value in self.options.items():
            args += ["-c", f"{key}={value}"]
        self.log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, **self._as_user)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                psycopg.connect(**self.admin_params(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling the connection: the server is up when it accepts one

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, as in a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- clients ---------------------------------------------------------------------------------------
    def admin_params(self, dbname: str = "postgres") -> dict:
        return {"host": str(self.sockets), "port": self.port, "user": SUPERUSER, "dbname": dbname}

    def admin(self, sql: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(**self.admin_params(dbname), autocommit=True) as db:
            cur = db.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def url(self, user: str, password: str, dbname: str, host: str = "127.0.0.1") -> str:
        return f"postgresql://{user}:{password}@{host}:{self.port}/{dbname}"

    def new_database(self, name: str, *, user: str = "charbot", password: str = "s3cret-Pa55") -> str:
        """A fresh database owned by `user` (made with `password` when new); its TCP URL."""
        if not self.admin("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)):
            self.admin(f'CREATE ROLE "{user}" LOGIN PASSWORD \'{password}\'')
        self.admin(f'CREATE DATABASE "{name}" OWNER "{user}"')
        return self.url(user, password, name)
