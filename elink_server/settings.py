"""Server settings: one frozen class, loaded from a TOML file, the environment
and command-line flags.

Precedence, lowest to highest: the defaults below < the TOML file <
``ELINK_<FIELD>`` environment variables < flags.  Each layer may set any
field; a later layer wins field by field.

* TOML: flat top-level keys named like the fields (``port = 7420``).  An
  unknown key is an error naming the key, so a typo never goes unnoticed.
  Values must have the field's type (an integer is accepted for a float).
* Environment: ``ELINK_PORT=7421``, ``ELINK_ALLOW_LEGACY_SUITES=true``...
  strings converted to the field's type; a bad value is an error naming the
  variable.  ``ELINK_*`` variables that name no field are ignored, because the
  SDK and other tools share the prefix.
* Flags: a mapping of field name to value; ``None`` means "flag not given".
  String values are converted as for the environment, others type-checked as
  for TOML.  An unknown name is an error.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

ENV_PREFIX = "ELINK_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting is unknown, has the wrong type or an invalid value.  The
    message names where it came from (file key, variable or flag)."""


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/elink``, else ``~/.local/share/elink`` (XDG base
    directory rules: a relative XDG_DATA_HOME is ignored)."""
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "elink"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "share" / "elink"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be positive and finite, got {value!r}")


def _at_least(low: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < low:
            raise ValueError(f"{attribute.name} must be at least {low}, got {value!r}")

    return check


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be zero or more and finite, got {value!r}")


def _retention(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 30 * 86400:
        raise ValueError(f"{attribute.name} must be at least 30 days (2592000 s), got {value!r}")


def _port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"port must be in 0..65535 (0: any free port), got {value!r}")


def _upper(value: str) -> str:
    return value.upper()


AUTO = "auto"


def _workers(value: object) -> int | str:
    """``auto``, or a count of workers (an int, or its digits)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit():
            return int(text)
    return value  # type: ignore[return-value]  # the validator names the problem


def _workers_valid(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value == AUTO:
        return
    if type(value) is not int or value < 1:
        raise ValueError(f"workers must be a positive integer or 'auto', got {value!r}")


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _log_level(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {value!r}")


@attrs.frozen(kw_only=True)
class ServerSettings:
    """Everything an operator can set.  Durations are in seconds."""

    host: str = "127.0.0.1"
    """Address to listen on.  The default serves only this machine; use
    ``0.0.0.0`` or ``::`` to serve the network."""

    port: int = attrs.field(default=7420, validator=_port)
    """TCP port of the light bus (UDP too unless ``udp_port`` says otherwise);
    0 picks a free port."""

    udp: bool = True
    """Also serve the light bus over UDP (§6.9)."""

    udp_port: int = attrs.field(
        default=-1, validator=[attrs.validators.ge(-1), attrs.validators.le(65535)]
    )
    """UDP port; -1 (the default): the same number as ``port`` (with ``port``
    0, the number TCP got when it is free for UDP too, else any); 0: any free
    port."""

    min_rto: float = attrs.field(default=0.2, validator=_positive)
    """UDP: the least retransmission timeout (§6.4.2).  The default suits the
    Internet; on a LAN with millisecond round trips a lower value recovers
    losses sooner."""

    max_rto: float = attrs.field(default=10.0, validator=_positive)
    """UDP: the largest retransmission timeout, which bounds the exponential
    backoff (§6.4.3).  A lower value recovers sooner from a run of losses on
    a path known to be lossy but not congested."""

    max_retransmissions: int = attrs.field(default=8, validator=_at_least(1))
    """UDP: re-sends of one packet before the connection is declared dead
    (§6.4.5); the session stays resumable."""

    data_dir: Path = attrs.field(factory=lambda: default_data_dir(os.environ), converter=Path)
    """Where the database and files live."""

    log_level: str = attrs.field(default="INFO", converter=_upper, validator=_log_level)
    """One of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case on input)."""

    workers: int | str = attrs.field(default=1, converter=_workers, validator=_workers_valid)
    """Worker processes of this node, sharing the listening port and the data
    directory; ``auto``: one per core.  With one, the server is a single
    process, as before workers existed."""

    offline_cap: int = attrs.field(default=1000, validator=_at_least(1000))
    """Per-user count of events no device has pulled, past which senders are
    told the recipient's backlog is full (nothing is dropped).  At least 1000."""

    recall_window: float = attrs.field(default=120.0, validator=_positive)
    """How long after sending a message its sender may recall it."""

    max_handshakes: int = attrs.field(default=256, validator=_at_least(1))
    """Most cryptographic handshakes in progress at once; more wait."""

    handshake_queue: int = attrs.field(default=1024, validator=_at_least(0))
    """Connections that may wait for a free handshake slot; beyond it, new
    connections are closed at once with RESOURCE_LIMIT.  A waiting connection
    still has to finish its handshake within ``handshake_timeout`` of being
    accepted."""

    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    """A connection whose handshake has not completed this long after it was
    accepted (waiting for a slot included) is closed with TIMEOUT."""

    shutdown_grace: float = attrs.field(default=5.0, validator=_positive)
    """At shutdown, how long to wait for connections to take the going-away
    notice before they are cut."""

    max_logins: int = attrs.field(default=8, validator=_at_least(1))
    """Most password checks running at once (each is ~50 ms of CPU and 16 MiB
    of memory in a worker thread)."""

    login_queue: int = attrs.field(default=10_000, validator=_at_least(0))
    """Logins that may wait for a free slot (the morning login storm); beyond
    it, new logins are refused with "try later"."""

    login_queue_interval: float = attrs.field(default=1.0, validator=_not_negative)
    """Least time between two LoginQueued notices to one waiting login (each
    tells the login's new position in the queue); 0 sends one at every move."""

    login_failure_window: float = attrs.field(default=300.0, validator=_positive)
    """The sliding window over which failed logins are counted."""

    max_failed_logins_per_account: int = attrs.field(default=5, validator=_at_least(1))
    """Failed logins of one account within ``login_failure_window`` after
    which its logins are refused with RATE_LIMITED until the oldest failure
    leaves the window."""

    max_failed_logins_per_address: int = attrs.field(default=50, validator=_at_least(1))
    """The same limit per client IP address (over all accounts)."""

    resume_timeout: float = attrs.field(default=120.0, validator=_positive)
    """How long a logged-in session whose connection was lost (no Close) may
    be resumed on a new connection (§6.5); the device stays online meanwhile
    and pushes for it are kept."""

    resume_sessions: int = attrs.field(default=20_000, validator=_at_least(0))
    """Most sessions kept for resumption at once; beyond it the oldest end."""

    allow_legacy_suites: bool = False
    """Accept the legacy DES / 3DES / AES-CBC cipher suites for old clients."""

    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    """Close a session after this long without receiving anything."""

    heartbeat_interval: float = attrs.field(default=20.0, validator=_positive)
    """Send a PING after this long without sending anything.  Must be below
    ``idle_timeout``."""

    max_connections: int = attrs.field(default=19_000, validator=_at_least(1))
    """Most simultaneous client connections of this process (the box allows
    20,000 file descriptors per process)."""

    max_requests_per_second: float = attrs.field(default=200.0, validator=_positive)
    """Per connection: application packets (requests) served per second in
    the long run.  Above it requests are answered RATE_LIMITED with the time
    to wait; a client whose debt of refused requests passes ten times
    ``request_burst`` is closed with RESOURCE_LIMIT."""

    request_burst: int = attrs.field(default=2000, validator=_at_least(1))
    """Per connection: requests that may arrive at once above the rate (a
    freshly connected client re-sending its offline outbox, for example)."""

    max_unacked_packets: int = attrs.field(default=4096, validator=_at_least(16))
    """Per connection: packets sent and not yet acknowledged (kept for
    resumption); past it further packets wait in a queue of this size plus
    64, and pushes beyond that are dropped (the device pulls, §11.5.3).  This
    bounds the memory a client that stops reading can hold on the server."""

    # --- files and the heavy bus (§9; elink_server.files, docs/files.md) ---

    files_port: int = attrs.field(
        default=-1, validator=[attrs.validators.ge(-1), attrs.validators.le(65535)]
    )
    """TCP port of the heavy bus (file transfers); -1 (the default): the
    light-bus ``port`` plus one (7421), or any free port when ``port`` is 0;
    0: any free port."""

    files_backend: str = attrs.field(
        default="local", validator=attrs.validators.in_(("local", "hdfs"))
    )
    """Where file content is stored: ``local`` (a folder on this machine) or
    ``hdfs`` (Hadoop, through WebHDFS)."""

    files_dir: str = ""
    """``local`` backend: the folder for file content; empty means
    ``<data_dir>/files``."""

    files_max_size: int = attrs.field(default=4 * 1024**3, validator=_at_least(0))
    """Largest file a user may upload, in bytes."""

    files_user_quota: int = attrs.field(default=20 * 1024**3, validator=_at_least(0))
    """Bytes of stored files (and uploads in progress) per user."""

    files_retention: float = attrs.field(default=30 * 86400.0, validator=_retention)
    """Seconds a stored file is kept after its upload (at least 30 days);
    then the janitor deletes it for good."""

    files_chunk_size: int = attrs.field(default=1024 * 1024, validator=_at_least(64 * 1024))
    """Bytes per upload chunk: each is checked and made durable before it is
    acknowledged.  At most 16 MiB."""

    files_ticket_lifetime: float = attrs.field(default=300.0, validator=_positive)
    """Seconds an admission token for the heavy bus stays valid."""

    files_janitor_interval: float = attrs.field(default=3600.0, validator=_positive)
    """Seconds between two runs of the janitor (expired files, abandoned uploads)."""

    files_max_transfers: int = attrs.field(default=256, validator=_at_least(1))
    """Most heavy-bus connections of this process at once."""

    hdfs_namenodes: str = "localhost:9870"
    """``hdfs`` backend: the NameNodes' WebHDFS addresses, ``host:port``
    separated by commas (HA: list every NameNode; the active one is found)."""

    hdfs_user: str = "elink"
    """``hdfs`` backend: the Hadoop user name (simple authentication)."""

    hdfs_root: str = "/elink"
    """``hdfs`` backend: the folder under which content is stored."""

    hdfs_timeout: float = attrs.field(default=30.0, validator=_positive)
    """``hdfs`` backend: seconds each HTTP hop (NameNode and DataNode) may take."""

    hdfs_threads: int = attrs.field(default=8, validator=_at_least(1))
    """``hdfs`` backend: most WebHDFS calls in flight at once (worker threads)."""

    def heavy_bus_port(self) -> int:
        """The port the heavy bus binds (``files_port`` resolved)."""
        if self.files_port >= 0:
            return self.files_port
        return self.port + 1 if 0 < self.port < 65535 else 0

    def worker_count(self) -> int:
        """How many worker processes ``workers`` means on this machine."""
        return cpu_count() if self.workers == AUTO else int(self.workers)

    def __attrs_post_init__(self) -> None:
        if self.min_rto > self.max_rto:
            raise ValueError(f"min_rto ({self.min_rto}) must not exceed max_rto ({self.max_rto})")
        if self.heartbeat_interval >= self.idle_timeout:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be below idle_timeout"
                f" ({self.idle_timeout})"
            )
        if self.files_chunk_size > 16 * 1024 * 1024:
            raise ValueError(f"files_chunk_size ({self.files_chunk_size}) must be at most 16 MiB")


_FIELDS: dict[str, attrs.Attribute[Any]] = {a.name: a for a in attrs.fields(ServerSettings)}
# Field types, resolved once (annotations are strings under __future__).
_TYPES: dict[str, Any] = {a.name: a.type for a in attrs.fields(attrs.resolve_types(ServerSettings))}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _from_string(name: str, text: str, source: str) -> object:
    """Convert an environment variable or string flag to the field's type."""
    if name == "workers":
        return _workers_typed(_workers(text), source)
    kind = _TYPES[name]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise SettingsError(f"{source}: expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise SettingsError(f"{source}: expected an integer, got {text!r}") from None
    if kind is float:
        try:
            value = float(text.strip())
        except ValueError:
            raise SettingsError(f"{source}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{source}: expected a finite number, got {text!r}")
        return value
    if kind is Path:
        if not text:
            raise SettingsError(f"{source}: expected a path, got an empty string")
        return Path(text)
    return text


def _workers_typed(value: object, source: str) -> object:
    if value == AUTO or (type(value) is int and value >= 1):
        return value
    raise SettingsError(f"{source}: expected a positive integer or 'auto', got {value!r}")


def _typed(name: str, value: object, source: str) -> object:
    """Check a TOML value or a typed flag against the field's type."""
    if name == "workers":
        return _workers_typed(_workers(value), source)
    kind = _TYPES[name]
    if kind is float and type(value) in (int, float):
        return float(value)  # type: ignore[arg-type]
    if kind is Path and isinstance(value, (str, Path)) and str(value):
        return Path(value)
    if type(value) is kind:
        return value
    expected = {bool: "a boolean", int: "an integer", float: "a number", Path: "a path string"}
    raise SettingsError(
        f"{source}: expected {expected.get(kind, 'a string')}, got {type(value).__name__} {value!r}"
    )


def load_settings(
    toml_path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, object],
) -> ServerSettings:
    """Build the settings from the layers (see the module docstring).

    ``toml_path=None`` skips the file; a path that does not exist is an error
    (the operator named it).  Raises :class:`SettingsError`.
    """
    values: dict[str, object] = {}
    sources: dict[str, str] = {}

    if toml_path is not None:
        try:
            with open(toml_path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise SettingsError(f"{toml_path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{toml_path}: invalid TOML: {exc}") from None
        for key, value in document.items():
            source = f"{toml_path}: key {key!r}"
            if key not in _FIELDS:
                raise SettingsError(f"{toml_path}: unknown key {key!r}")
            values[key], sources[key] = _typed(key, value, source), source

    for name in _FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            values[name] = _from_string(name, environ[variable], variable)
            sources[name] = variable

    for name, value in overrides.items():
        source = f"flag {name!r}"
        if name not in _FIELDS:
            raise SettingsError(f"unknown setting {name!r}")
        if value is None:
            continue
        if isinstance(value, str) and _TYPES[name] is not str:
            values[name] = _from_string(name, value, source)
        else:
            values[name] = _typed(name, value, source)
        sources[name] = source

    if "data_dir" not in values:
        values["data_dir"] = default_data_dir(environ)
    try:
        return ServerSettings(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        # Validators name the field; add where its value came from.
        origins = sorted(
            {source for name, source in sources.items() if re.search(rf"\b{name}\b", str(exc))}
        )
        where = f" (from {', '.join(origins)})" if origins else ""
        raise SettingsError(f"{exc}{where}") from None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A JSON string is a TOML basic string, except that TOML also requires
    # DEL to be escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def settings_as_toml(settings: ServerSettings) -> str:
    """The settings as a TOML document that :func:`load_settings` reads back
    to equal settings (for ``elink-server config show``)."""
    return "".join(f"{name} = {_toml_value(getattr(settings, name))}\n" for name in _FIELDS)
