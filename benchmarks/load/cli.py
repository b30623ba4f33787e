"""The ``elink-bench`` command: load scenarios against an e-Link node.

::

    elink-bench idle  --sessions N [--ramp RATE] [--hold S]
    elink-bench storm --sessions N [--hold S]
    elink-bench chat  --sessions N --rates 1000,2000,5000 [--step-seconds S] [--no-baseline]
    elink-bench baseline --sessions N --rates ...   (the plain relay alone)

Every scenario starts its own server (``python -m elink_server serve``, with
``--workers N`` when given) on a fresh data directory, or loads an external
one (``--server HOST:PORT --pin FINGERPRINT``, whose accounts ``bench000000``
... must exist with ``--password``).  Every phase has a deadline, so a run
always ends by itself.  Results: a markdown table on standard output, and in
``--out`` (default ``benchmarks/results``) a JSON file, the same markdown,
and for ``chat`` a PNG of latency against offered rate.

New scenarios (``priority``: chat latency while bulk data flows; ``fanout``:
groups) are one more ``_scenario_*`` function and subparser each.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import procstat, report, targets
from .fleet import Fleet, default_processes

DEFAULT_RATES = "1000,2000,5000,10000"
KIB = 1024
#: The claims (docs/performance.md) each scenario is judged against.
SESSIONS_CLAIM = 30_000
MEMORY_CLAIM = 16 * KIB
RATIO_CLAIM = 0.5
P99_CLAIM = 0.010


# ----------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sessions", type=int, required=True, help="sessions to open")
    common.add_argument(
        "--processes", type=int, help="generator processes (default: one per 7,500 sessions)"
    )
    common.add_argument("--workers", type=int, help="server worker processes (serve --workers)")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for the started server (e.g. login_queue=40000)",
    )
    common.add_argument(
        "--scrypt-n",
        type=int,
        default=2**10,
        help="scrypt cost of the bench accounts' passwords (production: 16384)",
    )
    common.add_argument("--server", metavar="HOST:PORT", help="load an external server")
    common.add_argument("--pin", action="append", default=[], help="its key fingerprint")
    common.add_argument("--password", default="bench-password")
    common.add_argument(
        "--ramp", type=float, default=0.0, help="logins started per second (0: no pacing)"
    )
    common.add_argument(
        "--window",
        type=int,
        default=256,
        help="logins in flight at most (0: no limit; storm ignores both)",
    )
    common.add_argument(
        "--login-timeout", type=float, default=300.0, help="deadline of the login phase (s)"
    )
    common.add_argument(
        "--heartbeat",
        type=float,
        help="the clients' heartbeat interval in seconds (default: the protocol's, 20); "
        "give the server the same with --set heartbeat_interval=S --set idle_timeout=3S",
    )
    common.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    common.add_argument("--no-progress", action="store_true", help="no live progress display")

    parser = argparse.ArgumentParser(prog="elink-bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    idle = commands.add_parser("idle", parents=[common], help="log N sessions in and hold them")
    idle.add_argument("--hold", type=float, default=10.0, help="seconds to hold them (s)")
    idle.set_defaults(run=_scenario_idle)
    storm = commands.add_parser("storm", parents=[common], help="N logins all at once")
    storm.add_argument("--hold", type=float, default=2.0)
    storm.set_defaults(run=_scenario_storm)
    for name, helptext, run in (
        ("chat", "paired users at rising open-loop rates, then the baseline", _scenario_chat),
        ("baseline", "the chat steps against the plain relay alone", _scenario_baseline),
    ):
        chat = commands.add_parser(name, parents=[common], help=helptext)
        chat.add_argument("--rates", default=DEFAULT_RATES, help="messages/s per step, ascending")
        chat.add_argument("--step-seconds", type=float, default=5.0)
        chat.add_argument("--drain", type=float, default=3.0, help="wait for stragglers (s)")
        chat.add_argument(
            "--keep-going",
            action="store_true",
            help="run every step even after one saturates the target",
        )
        if name == "chat":
            chat.add_argument("--no-baseline", action="store_true", help="skip the plain relay")
        chat.set_defaults(run=run)
    return parser


# ---------------------------------------------------------------- helpers


class Run:
    """One invocation: its arguments, progress display and result record."""

    def __init__(self, args: argparse.Namespace, progress: report.Progress) -> None:
        self.args = args
        self.progress = progress
        self.started = datetime.datetime.now(datetime.UTC)
        self.results: dict[str, Any] = {
            "scenario": args.scenario,
            "started_utc": self.started.strftime("%Y-%m-%d %H:%M:%S"),
            "command": shlex.join(["elink-bench", *sys.argv[1:]])
            if Path(sys.argv[0]).name in ("elink-bench", "cli.py")
            else None,
            "machine": procstat.machine(),
            "load_average_before": procstat.load_average(),
            "time_wait_before": procstat.time_wait_sockets(),
            "targets": {},
            "claims": [],
        }
        self.log = args.out / "server.log"
        args.out.mkdir(parents=True, exist_ok=True)

    def settings(self) -> dict[str, str]:
        found = {}
        for item in self.args.set:
            name, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"elink-bench: --set wants NAME=VALUE, got {item!r}")
            found[name.strip()] = value.strip()
        return found

    @contextmanager
    def elink_target(self) -> Iterator[targets.Target]:
        args = self.args
        if args.server:
            host, _, port = args.server.rpartition(":")
            if not args.pin:
                raise SystemExit("elink-bench: --server needs --pin (the server key fingerprint)")
            yield targets.Target("elink", host, int(port), tuple(args.pin))
            return
        self.progress.update(f"creating {args.sessions:,} accounts and starting the server")
        with targets.elink_server(
            accounts=args.sessions,
            password=args.password,
            scrypt_n=args.scrypt_n,
            workers=args.workers,
            settings=self.settings(),
            log=self.log,
        ) as target:
            self.results["server_command"] = shlex.join(target.command)
            self.results["server_settings"] = self.settings()
            time.sleep(0.5)  # let its startup work settle before measuring
            yield target

    @contextmanager
    def fleet(self, target: targets.Target) -> Iterator[Fleet]:
        args = self.args
        processes = args.processes or default_processes(args.sessions)
        fleet = Fleet(target, args.sessions, processes, args.password, args.heartbeat)
        try:
            yield fleet
        finally:
            self.progress.update("closing the sessions")
            fleet.close()

    def login(self, fleet: Fleet, mode: str) -> dict[str, Any]:
        args = self.args
        target = fleet.target
        before = target.usage()
        kernel = procstat.kernel_memory()
        started = time.perf_counter()

        def show(p: dict[str, float]) -> None:
            self.progress.update(
                f"{target.kind}: {mode} login  {int(p['ok']):,}/{args.sessions:,} in  "
                f"{int(p['failed']):,} failed  {int(p['retries']):,} retried  "
                f"longest queue {int(p['longest_queue']):,}  "
                f"{time.perf_counter() - started:,.1f} s"
            )

        answers = fleet.command(
            (
                "login",
                mode,
                args.ramp / len(fleet),
                -(-args.window // len(fleet)),
                args.login_timeout,
            ),
            timeout=args.login_timeout + 60,
            progress=show,
        )
        after = target.usage()
        values = report.latencies([a["latencies"] for a in answers])
        ok = sum(a["ok"] for a in answers)
        elapsed = max(a["elapsed"] for a in answers)
        reasons: dict[str, int] = {}
        for a in answers:
            for reason, count in a["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        result = {
            "mode": mode,
            "sessions": args.sessions,
            "logged_in": ok,
            "failed": sum(a["failed"] for a in answers),
            "retries": sum(a["retries"] for a in answers),
            "longest_queue": max(a["longest_queue"] for a in answers),
            # A storm starts every login at once: the slowest login is the
            # time until all were in.  A ramp starts them over the phase.
            "time_until_all_in_s": max(a["last_login_after"] for a in answers)
            if mode == "storm"
            else elapsed,
            "phase_seconds": elapsed,
            "logins_per_second": ok / elapsed if elapsed else None,
            "login_latency_ms": {
                "p50": _ms(report.percentile(values, 0.50)),
                "p99": _ms(report.percentile(values, 0.99)),
                "max": _ms(max(values) if values else None),
            },
            "reasons": reasons,
            "generator_cpu_seconds": sum(a["cpu_seconds"] for a in answers),
            "generator_processes": len(fleet),
            "load_average": procstat.load_average(),
        }
        if before is not None and after is not None:
            result["server_cpu_seconds"] = after.cpu_seconds - before.cpu_seconds
            result["server_processes"] = target.processes()
        result["_before"] = (before, kernel)
        return result

    def hold(self, fleet: Fleet, seconds: float, login: dict[str, Any]) -> dict[str, Any]:
        target = fleet.target
        before, kernel_before = login.pop("_before")
        held_from = target.usage()
        started = time.monotonic()
        end = started + seconds
        while time.monotonic() < end:
            self.progress.update(
                f"{target.kind}: holding {login['logged_in']:,} sessions, "
                f"{end - time.monotonic():,.0f} s left"
            )
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        status = fleet.command(("status",), timeout=60)
        after = target.usage()
        kernel = procstat.kernel_memory()
        live = sum(s["live"] for s in status)
        held: dict[str, Any] = {
            "hold_seconds": seconds,
            "live_after_hold": live,
            "dropped": sum(s["dropped"] for s in status),
            "kernel_tcp_sockets": kernel.tcp_sockets,
            "kernel_bytes_per_session": (
                (kernel.tcp_buffers + kernel.slab - kernel_before.tcp_buffers - kernel_before.slab)
                / live
                if live
                else None
            ),
            "kernel_note": "slab + TCP buffers, machine-wide delta, both ends of each "
            "loopback connection: an upper bound for the server's share",
        }
        if held_from is not None and after is not None and seconds > 0:
            # What holding idle sessions costs: heartbeats, acknowledgements
            # and their timers.
            held["server_cpu_percent_while_held"] = (
                100 * (after.cpu_seconds - held_from.cpu_seconds) / (time.monotonic() - started)
            )
        if before is not None and after is not None and live:
            held["server_rss_bytes"] = after.rss
            held["server_pss_bytes"] = after.pss
            held["server_bytes_per_session"] = (after.pss - before.pss) / live
            held["server_baseline_pss_bytes"] = before.pss
        return held

    def claim(self, name: str, target: str, measured: str, verdict: str) -> None:
        self.results["claims"].append(
            {"claim": name, "target": target, "measured": measured, "verdict": verdict}
        )

    def finish(self, markdown: str, plot: Callable[[Path], str | None] | None = None) -> int:
        args = self.args
        self.results["load_average_after"] = procstat.load_average()
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        base = args.out / f"{args.scenario}-{stamp}"
        claims = self.results["claims"]
        if claims:
            markdown += "\n\n" + report.table(
                ("Claim", "Target", "Measured", "Verdict"),
                [(c["claim"], c["target"], c["measured"], c["verdict"]) for c in claims],
            )
        header = (
            f"**{args.scenario}** at {self.results['started_utc']} UTC, load average "
            f"{self.results['load_average_before'][0]} before / "
            f"{self.results['load_average_after'][0]} after, "
            f"{self.results['machine']['cores']} cores"
        )
        markdown = header + "\n\n" + markdown + "\n"
        if plot is not None:
            why_not = plot(base.with_suffix(".png"))
            if why_not:
                markdown += f"\n{why_not}\n"
                self.results["plot"] = None
            else:
                self.results["plot"] = str(base.with_suffix(".png"))
        report.write_json(base.with_suffix(".json"), self.results)
        base.with_suffix(".md").write_text(markdown)
        print(markdown)
        print(f"results: {base.with_suffix('.json')}", file=sys.stderr)
        return 0


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / KIB:,.1f} KiB"


def _held_claim(run: Run, login: dict[str, Any], name: str) -> None:
    sessions = run.args.sessions
    measured = f"{login['logged_in']:,} of {sessions:,} in, {login['failed']:,} failed"
    if sessions < SESSIONS_CLAIM:
        verdict = f"not measured at 30,000 (ran {sessions:,})"
    elif login["failed"] == 0 and login["logged_in"] >= SESSIONS_CLAIM:
        verdict = "met"
    else:
        verdict = "NOT met"
    run.claim(name, "30,000, zero failed", measured, verdict)


# -------------------------------------------------------------- scenarios


def _scenario_idle(run: Run) -> int:
    with run.elink_target() as target, run.fleet(target) as fleet:
        login = run.login(fleet, "ramp")
        login.update(run.hold(fleet, run.args.hold, login))
    run.results["targets"]["elink"] = login
    _held_claim(run, login, "sessions held on one node")
    per_session = login.get("server_bytes_per_session")
    if per_session is not None:
        run.claim(
            "server memory per idle session",
            "<= 16 KiB",
            _kib(per_session),
            "met" if per_session <= MEMORY_CLAIM else "NOT met",
        )
    return run.finish(_login_table(login))


def _scenario_storm(run: Run) -> int:
    with run.elink_target() as target, run.fleet(target) as fleet:
        login = run.login(fleet, "storm")
        login.update(run.hold(fleet, run.args.hold, login))
    run.results["targets"]["elink"] = login
    _held_claim(run, login, "login storm absorbed")
    return run.finish(_login_table(login))


def _login_table(login: dict[str, Any]) -> str:
    latency = login["login_latency_ms"]
    rows = [
        ("sessions logged in", f"{login['logged_in']:,} of {login['sessions']:,}"),
        ("failed logins", f"{login['failed']:,}"),
        ("connections retried after a refusal", f"{login['retries']:,}"),
        ("logins per second", report.number(login["logins_per_second"])),
        (
            "login latency p50 / p99 / max (ms)",
            f"{latency['p50']} / {latency['p99']} / {latency['max']}",
        ),
        (
            "time until all were in (s)",
            report.number(login["time_until_all_in_s"], 2)
            if login["failed"] == 0
            else f"not all got in (slowest login {login['time_until_all_in_s']:,.1f} s)",
        ),
        ("longest login queue seen", f"{login['longest_queue']:,}"),
        ("generator CPU during logins (s)", report.number(login["generator_cpu_seconds"], 1)),
        ("server CPU during logins (s)", report.number(login.get("server_cpu_seconds"), 1)),
        ("live after the hold / dropped", f"{login['live_after_hold']:,} / {login['dropped']:,}"),
        (
            "server CPU while holding them (% of one core)",
            report.number(login.get("server_cpu_percent_while_held")),
        ),
        ("server processes", str(login.get("server_processes", "-"))),
        ("server PSS (all processes)", _kib(login.get("server_pss_bytes"))),
        ("server memory per session (PSS delta)", _kib(login.get("server_bytes_per_session"))),
        ("kernel memory per session (both ends)", _kib(login.get("kernel_bytes_per_session"))),
    ]
    if login["reasons"]:
        rows.append(("reasons", "; ".join(f"{k}: {v}" for k, v in login["reasons"].items())))
    return report.table(("Measure", "Value"), rows)


def _chat_target(run: Run, opened: Any) -> list[dict[str, Any]]:
    """Log the sessions in on one target and run the rate steps on it."""
    args = run.args
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    steps: list[dict[str, Any]] = []
    with opened as target, run.fleet(target) as fleet:
        login = run.login(fleet, "ramp")
        login.pop("_before")
        run.results["targets"].setdefault(target.kind, {})["login"] = login
        for index, rate in enumerate(rates):
            step = _chat_step(run, fleet, index, rate)
            steps.append(step)
            if not args.keep_going and step["saturated"]:
                break
    run.results["targets"][target.kind]["steps"] = steps
    run.results["targets"][target.kind]["knee"] = _knee(steps)
    return steps


def _chat_step(run: Run, fleet: Fleet, index: int, rate: float) -> dict[str, Any]:
    args = run.args
    target = fleet.target
    before = target.usage()
    started = time.perf_counter()

    def show(p: dict[str, float]) -> None:
        run.progress.update(
            f"{target.kind}: step {index + 1} at {rate:,.0f} msg/s  sent {int(p['sent']):,}  "
            f"delivered {int(p['received']):,}  {time.perf_counter() - started:,.1f} s"
        )

    answers = fleet.command(
        ("chat", index, rate / len(fleet), args.step_seconds, args.drain),
        timeout=args.step_seconds + args.drain + 60,
        progress=show,
    )
    after = target.usage()
    sent = sum(a["sent"] for a in answers)
    received = sum(a["received"] for a in answers)
    values = report.latencies([a["latencies"] for a in answers])
    # Delivered rate: what arrived, over the step or (if later) until the
    # last arrival; undelivered messages count as infinitely late.
    late = max([args.step_seconds] + [a["last_receipt_after"] for a in answers])
    delivered = received / late if late else 0.0
    padded = values + [float("inf")] * (sent - received)
    latency = {
        "p50": _ms(report.percentile(padded, 0.50)),
        "p95": _ms(report.percentile(padded, 0.95)),
        "p99": _ms(report.percentile(padded, 0.99)),
        "p99.9": _ms(report.percentile(padded, 0.999)),
    }
    offered = sent / args.step_seconds
    generator_cpu = sum(a["cpu_seconds"] for a in answers)
    step: dict[str, Any] = {
        "rate": rate,
        "offered": offered,
        "delivered": delivered,
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "duplicates": sum(a["duplicates"] for a in answers),
        "accepted": sum(a["accepted"] for a in answers),
        "client_pushes_received": sum(a["pushes"] for a in answers),
        "client_pulls": sum(a["pulls"] for a in answers),
        "client_confirms": sum(a["confirms"] for a in answers),
        "latency_ms": latency,
        "generator_cpu_percent": 100 * generator_cpu / late,
        "generator_busiest_cpu_percent": 100 * max(a["cpu_seconds"] for a in answers) / late,
        "pairs": sum(a["pairs"] for a in answers),
        "load_average": procstat.load_average(),
    }
    if before is not None and after is not None:
        step["server_cpu_percent"] = (
            100 * (after.cpu_seconds - before.cpu_seconds) / (time.perf_counter() - started)
        )
    p99 = latency["p99"]
    step["keeps_up"] = (
        sent > 0
        and step["lost"] == 0
        and delivered >= 0.97 * offered
        and p99 is not None
        and p99 < P99_CLAIM * 1000
    )
    step["saturated"] = (
        sent == 0 or delivered < 0.8 * offered or p99 is None or p99 > 1000 or step["lost"] > 0
    )
    return step


def _knee(steps: Sequence[dict[str, Any]]) -> float | None:
    kept = [s["offered"] for s in steps if s["keeps_up"]]
    return max(kept) if kept else None


def _chat_table(steps_by_target: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for kind, steps in steps_by_target.items():
        for s in steps:
            lat = s["latency_ms"]
            rows.append(
                (
                    kind,
                    report.number(s["offered"]),
                    report.number(s["delivered"]),
                    f"{s['lost']:,}",
                    f"{s['duplicates']:,}",
                    *(report.number(lat[k], 2) for k in ("p50", "p95", "p99", "p99.9")),
                    report.number(s.get("server_cpu_percent")),
                    report.number(s["generator_cpu_percent"]),
                    f"{s['load_average'][0]}",
                    "yes" if s["keeps_up"] else "no",
                )
            )
    return report.table(
        (
            "Target",
            "Offered msg/s",
            "Delivered msg/s",
            "Lost",
            "Dup",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99.9 ms",
            "Server CPU %",
            "Generator CPU %",
            "Load",
            "Keeps up",
        ),
        rows,
    )


def _ratios(run: Run, steps: dict[str, list[dict[str, Any]]]) -> str:
    if "elink" not in steps or "plain" not in steps:
        return ""
    ours, theirs = steps["elink"], steps["plain"]
    knee_ours, knee_theirs = _knee(ours), _knee(theirs)
    best_ours = max((s["delivered"] for s in ours), default=0.0)
    best_theirs = max((s["delivered"] for s in theirs), default=0.0)
    ratios: dict[str, Any] = {
        "knee_elink": knee_ours,
        "knee_plain": knee_theirs,
        "knee_ratio": knee_ours / knee_theirs if knee_ours and knee_theirs else None,
        "max_delivered_elink": best_ours,
        "max_delivered_plain": best_theirs,
        "max_delivered_ratio": best_ours / best_theirs if best_theirs else None,
    }
    run.results["ratios"] = ratios
    ratio = ratios["knee_ratio"]
    top = theirs[-1]["rate"] if theirs else 0
    if ratio is None:
        measured = "no knee for " + ("e-Link" if not knee_ours else "the relay")
        verdict = "NOT met" if not knee_ours else "not measured"
    else:
        measured = f"{knee_ours:,.0f} / {knee_theirs:,.0f} msg/s = {ratio:.2f}"
        if knee_theirs is not None and knee_theirs >= top and theirs[-1]["keeps_up"]:
            measured += " (the relay kept up at every step: its knee is higher)"
        verdict = "met" if ratio >= RATIO_CLAIM else "NOT met"
    run.claim("delivered msg/s vs plain relay (knee)", ">= 0.5", measured, verdict)
    if knee_ours:
        below = [s for s in ours if s["offered"] <= knee_ours / 2 * 1.001]
        if below:
            step = below[-1]
            p99 = step["latency_ms"]["p99"]
            run.claim(
                "p99 at half the knee",
                "<= 10 ms",
                f"{p99} ms at {step['offered']:,.0f} msg/s",
                "met" if p99 is not None and p99 <= 10 else "NOT met",
            )
        else:
            run.claim(
                "p99 at half the knee", "<= 10 ms", "no step at or below half", "not measured"
            )
    lines = [
        f"Knee (highest offered rate with every message delivered, delivered >= 97% of offered "
        f"and p99 < 10 ms): e-Link {report.number(knee_ours)}, plain relay "
        f"{report.number(knee_theirs)} msg/s; ratio {report.number(ratio, 2)}.",
        f"Most delivered in a step: e-Link {best_ours:,.0f}, plain relay {best_theirs:,.0f} "
        f"msg/s; ratio {report.number(ratios['max_delivered_ratio'], 2)}.",
    ]
    return "\n".join(lines)


def _chat(run: Run, *, elink: bool, plain: bool) -> int:
    steps: dict[str, list[dict[str, Any]]] = {}
    if elink:
        steps["elink"] = _chat_target(run, run.elink_target())
    if plain:
        time.sleep(1.0)
        steps["plain"] = _chat_target(run, targets.plain_relay(log=run.log))
    markdown = _chat_table(steps)
    ratios = _ratios(run, steps)
    if ratios:
        markdown += "\n\n" + ratios
    login = run.results["targets"].get("elink", {}).get("login")
    if login:
        markdown += (
            f"\n\ne-Link logins before the steps: {login['logged_in']:,} of "
            f"{login['sessions']:,} in, {login['failed']} failed."
        )
    return run.finish(markdown, plot=lambda path: report.plot_chat(path, steps))


def _scenario_chat(run: Run) -> int:
    return _chat(run, elink=True, plain=not run.args.no_baseline)


def _scenario_baseline(run: Run) -> int:
    return _chat(run, elink=False, plain=True)


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.sessions < 2:
        raise SystemExit("elink-bench: --sessions must be at least 2")
    with report.progress_display(not args.no_progress) as progress:
        run = Run(args, progress)
        code: int = args.run(run)
    return code


if __name__ == "__main__":
    sys.exit(main())
