"""A throwaway PostgreSQL server for tests and the tuning demo: `initdb` + `pg_ctl` in a temporary
folder, trust authentication, listening on 127.0.0.1 only (and a Unix socket inside the folder).

    python scripts/throwaway_postgres.py start DIR    # prints the URL: postgresql://fastadapt@127.0.0.1:PORT/postgres
    python scripts/throwaway_postgres.py stop DIR     # stops it (the folder is left for you to delete)

`initdb` refuses to run as root, so as root the server runs as an unprivileged user (`nobody`)
through `runuser` (or `su`). The binaries are found on PATH or in Debian's
/usr/lib/postgresql/<version>/bin (`apt-get install postgresql`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "fastadapt"  # the database superuser initdb creates
UNPRIVILEGED = "nobody"


def find_binary(name: str) -> str | None:
    """`name` (initdb, pg_ctl) on PATH, else the newest Debian cluster version's."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def unavailable() -> str | None:
    """Why no server can be started here, or None when one can."""
    if not (find_binary("initdb") and find_binary("pg_ctl")):
        return "PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            return f"running as root and there is no user {UNPRIVILEGED!r} to run initdb as"
        if not (shutil.which("runuser") or shutil.which("su")):
            return "running as root without runuser or su to run initdb as an unprivileged user"
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", UNPRIVILEGED, "--", *argv]
    return ["su", "-s", "/bin/sh", UNPRIVILEGED, "-c", " ".join(map(_quote, argv))]


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: str | Path) -> str:
    """Create a cluster in `folder` (made if missing) and start it; returns its URL."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data, port = folder / "data", _free_port()
    run = dict(check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        initdb = [find_binary("initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]
        subprocess.run(_as_server_user(initdb), **run)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off"
        pg_ctl = [
            find_binary("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-o",
            options,
            "start",
        ]
        subprocess.run(_as_server_user(pg_ctl), **run)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stdout.strip()}") from None
    url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    (folder / "url").write_text(url + "\n")
    return url


def stop(folder: str | Path) -> None:
    """Stop the server in `folder` (immediately: it holds nothing worth a clean shutdown)."""
    data = Path(folder).resolve() / "data"
    if (data / "postmaster.pid").exists():
        argv = [find_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_server_user(argv), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(f"usage: {sys.argv[0]} start|stop DIR")
    if sys.argv[1] == "start":
        reason = unavailable()
        if reason:
            sys.exit(f"cannot start PostgreSQL: {reason}")
        print(start(sys.argv[2]))
    else:
        stop(sys.argv[2])
