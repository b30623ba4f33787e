"""``--provision``: create the suite's accounts on *our* server through its
admin command (``elink-server users add``), never by importing the server.

Another implementation provisions its accounts its own way; the suite only
needs them to exist with the password it is given.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

#: Seconds one admin command may take (each hashes a password with scrypt).
COMMAND_TIMEOUT = 60.0


class ProvisionError(Exception):
    """The admin command failed; the message says how."""


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise ProvisionError(f"cannot run {command[0]!r} (see --server-command)") from None
    except subprocess.TimeoutExpired:
        raise ProvisionError(
            f"{shlex.join(command)} did not finish in {COMMAND_TIMEOUT:g} s"
        ) from None


def provision(
    users: Sequence[str],
    password: str,
    *,
    server_command: Sequence[str],
    data_dir: str | None = None,
    config: str | None = None,
) -> list[str]:
    """Create (or reset the password of) each account; returns what was done.

    ``data_dir`` or ``config`` says which server's data to change: the admin
    command works on the data directory directly, also while the server runs.
    """
    if data_dir is None and config is None:
        raise ProvisionError("--provision needs --data-dir or --server-config")
    where: list[str] = []
    if config is not None:
        where += ["--config", config]
    if data_dir is not None:
        where += ["--data-dir", data_dir]
    done = []
    for user in users:
        added = _run([*server_command, "users", "add", user, "--password", password, *where])
        if added.returncode == 0:
            done.append(f"created {user}")
            continue
        reset = _run([*server_command, "users", "passwd", user, "--password", password, *where])
        if reset.returncode != 0:
            raise ProvisionError(
                f"cannot create {user!r}: {added.stderr.strip() or added.stdout.strip()}; "
                f"nor set its password: {reset.stderr.strip() or reset.stdout.strip()}"
            )
        done.append(f"reset the password of {user}")
    return done
