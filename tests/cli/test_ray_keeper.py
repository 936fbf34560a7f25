"""A local Ray started by the command ends with it (``heatmap_cli.cli.ray_keeper``).

The keeper is tested on plain processes shaped like a local Ray (a child that stays, a child
that dies and leaves an orphan deaf to SIGTERM, as the raylet leaves its agents); the command
itself on a local Ray that it starts, killed with SIGKILL after its first image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heatmap_cli.cli import ray_keeper
from heatmap_cli.cli.ray_keeper import descendants
from tests.helpers.cli import save_photo

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the keeper reads /proc (Linux)"
)

REPO = Path(__file__).resolve().parents[2]
NETS = REPO / "tests" / "helpers" / "nets.py"

# A driver shaped like the command with its local Ray: it starts the keeper, then a child that
# stays (the GCS), and a child that starts a grandchild deaf to SIGTERM and exits soon after
# (the raylet and an agent it leaves to init). It prints their pids, then ends as told: "stop"
# closes the keeper normally, "wait" waits to be killed.
_DRIVER = """
import json, subprocess, sys, time
from heatmap_cli.cli.ray_keeper import start_keeper
SLEEPER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
keeper = start_keeper()
stays = subprocess.Popen([sys.executable, "-c", SLEEPER])
middle = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
    "print(p.pid, flush=True); time.sleep(0.5)", SLEEPER], stdout=subprocess.PIPE, text=True)
orphan = int(middle.stdout.readline())
middle.wait()
time.sleep(1.0)  # the keeper has seen them all
print(json.dumps({"keeper": keeper.pid, "pids": [stays.pid, orphan]}), flush=True)
if sys.argv[1] == "stop":
    keeper.stop()
    print("stopped", flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start_driver(how: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, how], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert driver.stdout is not None
    return driver, json.loads(driver.stdout.readline())


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_driver_takes_its_processes_and_their_orphans_along() -> None:
    driver, started = start_driver("wait")
    pids = [*started["pids"], started["keeper"]]  # type: ignore[misc]
    try:
        assert all(map(alive, pids))
        driver.kill()  # SIGKILL: the driver cleans nothing up itself
        driver.wait()
        assert gone_within(pids, 10), [pid for pid in pids if alive(pid)]
    finally:
        kill_all(pids)


def test_a_stopped_keeper_ends_what_is_left_and_the_driver_goes_on() -> None:
    driver, started = start_driver("stop")
    pids = list(started["pids"])  # type: ignore[call-overload]
    try:
        assert driver.stdout is not None and driver.stdout.readline() == "stopped\n"
        assert gone_within([*pids, started["keeper"]], 1)  # stop() waits for the keeper
        assert driver.poll() is None  # the driver itself is not touched
    finally:
        driver.kill()
        driver.wait()
        kill_all(pids)


def test_the_keeper_acts_only_for_the_process_that_started_it() -> None:
    """Run by hand for another process (here a test sleeper with a child), it kills nothing."""
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]
    )  # fmt: skip
    try:
        time.sleep(1)
        below = list(descendants(sleeper.pid))
        assert below
        keeper = REPO / "heatmap_cli" / "cli" / "ray_keeper.py"
        finished = subprocess.run(
            [sys.executable, str(keeper), str(sleeper.pid)], stdin=subprocess.DEVNULL, timeout=30
        )
        assert finished.returncode == 0
        assert all(map(alive, [sleeper.pid, *below]))
    finally:
        for pid in descendants(sleeper.pid):
            os.kill(pid, signal.SIGKILL)
        sleeper.kill()
        sleeper.wait()


def test_descendants_are_found_below_a_process_and_only_there() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]
    )  # fmt: skip
    try:
        time.sleep(1)
        found = descendants(os.getpid())
        assert child.pid in found and len(descendants(child.pid)) == 1  # and its grandchild
        assert os.getpid() not in found
        assert found == ray_keeper._descendants_by_scan(os.getpid())  # the fallback agrees
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------------------
# The command on a local Ray of its own, killed with SIGKILL
# ---------------------------------------------------------------------------------------------


def test_a_killed_command_leaves_no_ray_process_and_no_writer(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("HEATMAP_REQUIRE_RAY") == "1":
            raise
        pytest.skip("Ray is not installed: pip install -e '.[ray]'")
    for index in range(24):
        save_photo(tmp_path / "photos" / f"p{index:02d}.png", size=(160, 120), seed=index)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "heatmap_cli.cli.options", str(tmp_path / "photos"),
        "--out", str(out), "--model", f"{NETS}:seeded_pooled_head", "--input-size", "44",
        "-s", "200", "-k", "2", "--ray", "--workers", "1", "--batch-size", "1",
        "--device", "cpu",
    ]  # fmt: skip
    watcher = subprocess.run(
        [sys.executable, "-m", "tests.helpers.orphans", str(out), "30", "--", *command],
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "PYTHONPATH": str(REPO),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert watcher.returncode == 0, watcher.stderr
    report = json.loads(watcher.stdout)

    assert report["orphans"] == []  # no agent, worker or raylet outlives the command
    assert report["files_after"] == report["files_at_kill"]  # nothing written after it died
    assert any(name.endswith(".json") for name in report["files_at_kill"])
    assert "max_restarts" not in report["stderr"]
    assert "core_worker" not in report["stderr"]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.pidfd_open (Linux 5.3+)")
def test_a_process_that_watches_the_command_ends_the_moment_it_does(tmp_path: Path) -> None:
    command = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    marker = tmp_path / "late"
    watcher = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time\n"
            "from heatmap_cli.cli.ray_keeper import exit_with\n"
            f"assert exit_with({command.pid})\n"
            "print('watching', flush=True)\n"
            "time.sleep(5)\n"
            f"open({str(marker)!r}, 'w').close()\n",
        ],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "watching"
        command.kill()
        command.wait()
        assert watcher.wait(timeout=4) == 1  # gone at once, not after its 5 s sleep
        assert not marker.exists()  # and wrote nothing after
    finally:
        for process in (command, watcher):
            if process.poll() is None:
                process.kill()
                process.wait()
