"""The load bench keeps working: tiny runs of ``elink-bench`` that assert
correctness (every login succeeds, every message arrives exactly once, the
results are written), never speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.load import report
from benchmarks.load.fleet import plan
from benchmarks.load.targets import user_name

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``elink-bench`` in its own process; return its results JSON."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.load.cli", *args, "--no-progress", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (found,) = out.glob(f"{args[0]}-*.json")
    results: dict[str, Any] = json.loads(found.read_text())
    assert found.with_suffix(".md").read_text().startswith(f"**{args[0]}**")
    assert "| Target |" in done.stdout or "| Measure |" in done.stdout
    return results


def _check_logins(login: dict[str, Any], sessions: int) -> None:
    assert login["logged_in"] == sessions, login["reasons"]
    assert login["failed"] == 0, login["reasons"]
    assert login["login_latency_ms"]["p50"] is not None


def _check_steps(steps: list[dict[str, Any]]) -> None:
    assert steps
    for step in steps:
        assert step["sent"] > 0
        assert step["received"] == step["sent"], step
        assert step["lost"] == 0
        assert step["duplicates"] == 0
        assert step["latency_ms"]["p99"] is not None


def test_chat_with_baseline_delivers_every_message_once(tmp_path: Path) -> None:
    sessions = 200
    results = _bench(
        tmp_path,
        "chat",
        "--sessions",
        str(sessions),
        "--rates",
        "100,200",
        "--step-seconds",
        "1",
        "--drain",
        "10",
        "--keep-going",
    )
    elink = results["targets"]["elink"]
    plain = results["targets"]["plain"]
    _check_logins(elink["login"], sessions)
    _check_logins(plain["login"], sessions)
    _check_steps(elink["steps"])
    _check_steps(plain["steps"])
    assert [s["rate"] for s in elink["steps"]] == [100, 200]
    # Each message is one SendMessage the server accepted durably.
    assert all(s["accepted"] == s["sent"] for s in elink["steps"])
    assert results["ratios"]["max_delivered_plain"] > 0
    assert results["claims"]


def test_idle_holds_every_session_and_measures_the_server(tmp_path: Path) -> None:
    sessions = 300
    results = _bench(tmp_path, "idle", "--sessions", str(sessions), "--hold", "1")
    login = results["targets"]["elink"]
    _check_logins(login, sessions)
    assert login["live_after_hold"] == sessions
    assert login["dropped"] == 0
    assert login["server_pss_bytes"] > 0
    assert login["server_bytes_per_session"] is not None
    assert next(c["claim"] for c in results["claims"]) == "sessions held on one node"


def test_storm_absorbs_a_burst_larger_than_the_handshake_slots(tmp_path: Path) -> None:
    # 300 logins at once against 8 login slots and 16 handshake slots: the
    # queues (not failures) absorb them.
    sessions = 300
    results = _bench(
        tmp_path,
        "storm",
        "--sessions",
        str(sessions),
        "--hold",
        "0",
        "--set",
        "max_handshakes=16",
    )
    login = results["targets"]["elink"]
    _check_logins(login, sessions)
    assert login["longest_queue"] >= 1
    assert results["server_settings"] == {"max_handshakes": "16"}


def test_plan_keeps_pairs_together_and_spreads_sources() -> None:
    chunks = plan(10_001, 3)
    rows = [row for chunk in chunks for row in chunk]
    assert [index for index, *_ in rows] == list(range(10_001))
    for chunk in chunks:
        users = {user for _, user, _, _ in chunk}
        assert all(peer in users for _, _, peer, _ in chunk if peer)
    assert rows[-1][2] == ""  # the odd one out has no peer
    assert rows[0][1] == user_name(0)
    assert {src for *_, src in rows} == {"127.0.0.2", "127.0.0.3"}
    with pytest.raises(ValueError, match="descriptor limit"):
        plan(40_000, 2)


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.percentile(values, 0.5) == 50.0
    assert report.percentile(values, 0.99) == 99.0
    assert report.percentile(values, 1.0) == 100.0
    assert report.percentile([], 0.5) is None
