"""The ``elink`` command's setup: saved profiles, passwords, and the account
a command logs in as (:func:`resolve_target`).

A *profile* names one account on one server: host, port, user, the device id
the command logs in as, and the server key it pinned at ``elink login``.
Profiles live in ``profiles.toml`` in the configuration directory:
``$ELINK_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/elink``, else
``~/.config/elink``.  The directory is made mode 0700 and the file mode 0600;
the file is rewritten atomically (a temporary file renamed over it)::

    # e-Link command-line profiles, written by `elink login`.
    [profiles.default]
    host = "chat.example.com"
    port = 7420
    user = "alice"
    device = "laptop-cli"
    fingerprint = "SHA256:9f86d0..."

Passwords are never written to a file.  :class:`PasswordStore` keeps them in
the operating system's keyring through the optional ``keyring`` package,
when it is installed and has a usable backend (its "fail" and "null"
backends count as none; ``PYTHON_KEYRING_BACKEND`` chooses one).  They are
stored under the service ``elink`` and the account ``user@host:port``.
:func:`find_password` looks for a password in every place the command
accepts one, in order.
"""

from __future__ import annotations

import getpass
import importlib
import os
import re
import socket
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from elink_protocol.crypto.trust import host_port, is_fingerprint

from .client import DEFAULT_PORT

__all__ = [
    "COMMAND_DEVICE_SUFFIX",
    "KEYRING_SERVICE",
    "MAX_DEVICE",
    "PROFILES_FILE",
    "PasswordStore",
    "Profile",
    "SetupError",
    "Target",
    "account_name",
    "check_profile_name",
    "config_dir",
    "default_device",
    "find_password",
    "format_profiles",
    "load_profiles",
    "profiles_path",
    "remove_profile",
    "resolve_target",
    "save_profile",
    "selected_profile",
]

#: The file in :func:`config_dir` that holds the profiles.
PROFILES_FILE = "profiles.toml"

#: The keyring service name passwords are stored under.
KEYRING_SERVICE = "elink"

#: One-shot commands log in as ``<device>-cmd`` so that they never replace
#: the session of an ``elink listen`` running as the profile's device.
COMMAND_DEVICE_SUFFIX = "-cmd"
#: Longest device id a profile may name (64 with the suffix).
MAX_DEVICE = 64 - len(COMMAND_DEVICE_SUFFIX)

_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SetupError(Exception):
    """``elink`` is not set up for what was asked: no such profile, no
    password, or the profiles file cannot be read or written."""


def config_dir() -> Path:
    """``$ELINK_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/elink``, else
    ``~/.config/elink``."""
    explicit = os.environ.get("ELINK_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "elink"


def profiles_path() -> Path:
    """The profiles file: ``profiles.toml`` in :func:`config_dir`."""
    return config_dir() / PROFILES_FILE


def check_profile_name(name: str) -> str:
    """``name`` if it is a valid profile name (letters, digits, ``_-``)."""
    if _PROFILE_NAME.fullmatch(name) is None:
        raise ValueError(f"invalid profile name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


@attrs.frozen(kw_only=True)
class Profile:
    """One account on one server, as ``elink login`` saved it."""

    name: str
    """The profile's name (``--profile NAME``)."""
    host: str
    port: int
    user: str
    device: str
    """The device id ``elink listen`` logs in as (the other commands use
    ``<device>-cmd``, so that they never end a running listen)."""
    fingerprint: str | None = None
    """The server key pinned for this host and port, ``SHA256:<hex>``."""

    @property
    def account(self) -> str:
        """``user@host:port``: how messages and the keyring name the account."""
        return account_name(self.user, self.host, self.port)


def account_name(user: str, host: str, port: int) -> str:
    """``user@host:port``, as in messages and the keyring."""
    return f"{user}@{host_port(host, port)}"


def default_device() -> str:
    """``<host name>-cli``."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "-_.")
    return f"{host[: MAX_DEVICE - 4] or 'host'}-cli"


# ------------------------------------------------------------------ the target


@attrs.frozen(kw_only=True)
class Target:
    """Whom a command logs in as, where, and which server keys it trusts."""

    host: str
    port: int
    user: str
    device: str
    """The listening device; see :attr:`command_device`."""
    fingerprints: tuple[str, ...]
    """Pinned keys; empty: the known-servers file decides."""

    @property
    def server(self) -> str:
        """``host:port``, as in the known-servers file."""
        return host_port(self.host, self.port)

    @property
    def account(self) -> str:
        """``user@host:port``."""
        return account_name(self.user, self.host, self.port)

    @property
    def command_device(self) -> str:
        """The device one-shot commands (send, history...) log in as."""
        return self.device + COMMAND_DEVICE_SUFFIX


def selected_profile(option: str | None) -> tuple[str, bool]:
    """The profile to use: ``--profile``, else ``$ELINK_PROFILE``, else
    ``default``; and whether it was named explicitly."""
    name = option or os.environ.get("ELINK_PROFILE") or ""
    try:
        return (check_profile_name(name), True) if name else ("default", False)
    except ValueError as exc:
        raise SetupError(f"ELINK_PROFILE: {exc}") from None


def resolve_target(
    profile_option: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    device: str | None = None,
    fingerprints: Sequence[str] | None = None,
) -> Target:
    """The selected profile with the given settings overriding its own.
    Without a profile, ``host`` and ``user`` are required."""
    name, explicit = selected_profile(profile_option)
    profile = load_profiles().get(name)
    host = host or (profile.host if profile else None)
    user = user or (profile.user if profile else None)
    if host is None or user is None:
        if explicit:
            raise SetupError(f"no profile {name!r} (see `elink profiles`)")
        raise SetupError("no profile yet: run `elink login`, or give --host and --user")
    port = port or (profile.port if profile else DEFAULT_PORT)
    if fingerprints is None and profile is not None and profile.fingerprint:
        # The profile's pinned key is for the profile's server only.
        same_server = host_port(host, port) == host_port(profile.host, profile.port)
        fingerprints = [profile.fingerprint] if same_server else None
    return Target(
        host=host,
        port=port,
        user=user,
        device=device or (profile.device if profile else default_device()),
        fingerprints=tuple(fingerprints or ()),
    )


def find_password(
    account: str, *, stdin: TextIO, from_stdin: bool, use_keyring: bool = True
) -> tuple[str, str]:
    """The password for ``account`` and where it came from: the first line
    of ``stdin`` when ``from_stdin``, else ``$ELINK_PASSWORD``, else the
    keyring (if ``use_keyring``), else a prompt if ``stdin`` is a terminal
    (source ``""``).  Raises :class:`SetupError` saying how to give one."""
    if from_stdin:
        password = stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            raise SetupError("--password-stdin: standard input has no password")
        return password, "standard input"
    password = os.environ.get("ELINK_PASSWORD", "")
    if password:
        return password, "ELINK_PASSWORD"
    store = PasswordStore.open() if use_keyring else None
    stored = store.get(account) if store is not None else None
    if stored:
        return stored, "the system keyring; `elink login` replaces it"
    if stdin.isatty():
        password = getpass.getpass(f"Password for {account}: ")
        if password:
            return password, ""
    hint = ", or install the `keyring` package and run `elink login`"
    raise SetupError(
        f"no password for {account}: give it with --password-stdin or ELINK_PASSWORD"
        + (hint if use_keyring and store is None else "")
    )


# ------------------------------------------------------------------ the file


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Every profile in the file, by name (none if the file does not exist)."""
    path = path or profiles_path()
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from None
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise SetupError(f"{path}: 'profiles' must be a table")
    profiles = {}
    for name, table in tables.items():
        try:
            profiles[name] = _profile_from_table(name, table)
        except (TypeError, ValueError) as exc:
            raise SetupError(f"{path}: profile {name!r}: {exc}") from None
    return profiles


def _profile_from_table(name: str, table: Any) -> Profile:
    if not isinstance(table, dict):
        raise TypeError("not a table")
    check_profile_name(name)
    values: dict[str, Any] = {key: table.get(key) for key in ("host", "port", "user", "device")}
    for key, value in values.items():
        expected = int if key == "port" else str
        if type(value) is not expected:
            raise TypeError(f"{key} must be a {expected.__name__}")
    fingerprint = table.get("fingerprint")
    if fingerprint is not None and not (
        isinstance(fingerprint, str) and is_fingerprint(fingerprint)
    ):
        raise ValueError("fingerprint must look like 'SHA256:<64 hex digits>'")
    host_port(values["host"], values["port"])  # raises ValueError for a bad host or port
    return Profile(name=name, fingerprint=fingerprint, **values)


def save_profile(profile: Profile, path: Path | None = None) -> None:
    """Add or replace ``profile`` in the file."""
    path = path or profiles_path()
    profiles = load_profiles(path)
    profiles[profile.name] = profile
    _write(path, profiles)


def remove_profile(name: str, path: Path | None = None) -> Profile | None:
    """Remove the profile ``name``; returns it, or ``None`` if there was none."""
    path = path or profiles_path()
    profiles = load_profiles(path)
    removed = profiles.pop(name, None)
    if removed is not None:
        _write(path, profiles)
    return removed


def _write(path: Path, profiles: dict[str, Profile]) -> None:
    try:
        _private_dir(path.parent)
        # mkstemp creates the file with mode 0600.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(format_profiles(profiles))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise SetupError(f"cannot write {path}: {exc}") from None


def _private_dir(directory: Path) -> None:
    """Create ``directory`` mode 0700, or take group and other access away."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)


def format_profiles(profiles: dict[str, Profile]) -> str:
    """The TOML text of the profiles file."""
    lines = [
        "# e-Link command-line profiles, written by `elink login`.",
        "# No passwords here: they stay in the system keyring, or are given",
        "# with --password-stdin or ELINK_PASSWORD.",
    ]
    for name in sorted(profiles):
        profile = profiles[name]
        lines += [
            "",
            f"[profiles.{check_profile_name(name)}]",
            f"host = {_toml_string(profile.host)}",
            f"port = {profile.port}",
            f"user = {_toml_string(profile.user)}",
            f"device = {_toml_string(profile.device)}",
        ]
        if profile.fingerprint is not None:
            lines.append(f"fingerprint = {_toml_string(profile.fingerprint)}")
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# ------------------------------------------------------------------ passwords


class PasswordStore:
    """Passwords in the operating system's keyring.  :meth:`open` returns
    ``None`` when there is no usable keyring."""

    def __init__(self, keyring: Any) -> None:
        self._keyring = keyring
        backend = keyring.get_keyring()
        self.backend = f"{type(backend).__module__}.{type(backend).__name__}"
        """Which keyring backend holds the passwords."""

    @classmethod
    def open(cls) -> PasswordStore | None:
        """The keyring, if the ``keyring`` package is installed and has a
        backend that can store anything."""
        try:
            # Imported only when needed: it is optional, and slow to load.
            keyring = importlib.import_module("keyring")
            backend = keyring.get_keyring()
        except Exception:
            return None
        module = type(backend).__module__
        if module.startswith(("keyring.backends.fail", "keyring.backends.null")):
            return None
        try:
            return cls(keyring)
        except Exception:
            return None

    def get(self, account: str) -> str | None:
        """The stored password for ``account``, or ``None``.  A keyring that
        fails (locked, no session bus) counts as having none."""
        try:
            value = self._keyring.get_password(KEYRING_SERVICE, account)
        except Exception:
            return None
        return value if isinstance(value, str) and value else None

    def set(self, account: str, password: str) -> None:
        """Store the password; raises :class:`SetupError` if the keyring
        refuses."""
        try:
            self._keyring.set_password(KEYRING_SERVICE, account, password)
        except Exception as exc:
            raise SetupError(f"the system keyring refused the password: {exc}") from None

    def delete(self, account: str) -> bool:
        """Forget the password; returns whether one was stored."""
        try:
            self._keyring.delete_password(KEYRING_SERVICE, account)
        except Exception:
            return False
        return True
