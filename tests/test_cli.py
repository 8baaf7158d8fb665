"""tasks/cli.py's end of a stage process (issue 24): the exit status, the last log lines and
every atexit handler as in a normal exit, without the interpreter's teardown of modules."""

import os
import subprocess
import sys

from helpers import ROOT

STAGE = """
import atexit, sys, threading, time
from pathlib import Path
from tasks.cli import cli

class Teardown:  # its __del__ runs in the interpreter's teardown only
    def __del__(self):
        Path("teardown-ran").write_text("1")

KEEP = Teardown()
MODE = sys.argv.pop()

def run(params):
    print("unflushed stdout", end="")  # no newline: still in the buffer at the end
    if MODE == "thread":  # a non-daemon thread: a normal exit waits for it
        threading.Thread(target=lambda: (time.sleep(1), Path("thread-done").write_text("1"))).start()
    if MODE == "fail":
        raise ValueError("row 3 of data/x.csv: bad field")

@atexit.register
def at_exit():
    Path("atexit-ran").write_text(MODE)

cli("phase1", run)
"""


def _run(tmp_path, mode: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "stage.py").write_text(STAGE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "stage.py", mode],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_finished_stage_exits_0_with_its_last_lines_and_atexit_handlers(tmp_path):
    out = _run(tmp_path, "ok")
    assert out.returncode == 0, out.stderr
    assert "stage phase1 finished in" in out.stderr.splitlines()[-1]
    assert out.stdout == "unflushed stdout"
    assert (tmp_path / "atexit-ran").read_text() == "ok"
    assert (tmp_path / "metrics/timing/phase1.json").exists()
    assert not (tmp_path / "teardown-ran").exists()  # the teardown was skipped


def test_a_failed_stage_exits_1_with_its_traceback_and_atexit_handlers(tmp_path):
    out = _run(tmp_path, "fail")
    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.splitlines()[-1] == "ValueError: row 3 of data/x.csv: bad field"
    assert out.stdout == "unflushed stdout"
    assert (tmp_path / "atexit-ran").read_text() == "fail"
    assert not (tmp_path / "teardown-ran").exists()


def test_a_running_non_daemon_thread_gets_a_normal_exit(tmp_path):
    out = _run(tmp_path, "thread")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "thread-done").exists()  # waited for, as a normal exit does
    assert (tmp_path / "atexit-ran").read_text() == "thread"
    assert (tmp_path / "teardown-ran").exists()


def test_called_from_another_module_it_returns(tmp_path, monkeypatch):
    """A test calling a stage's main() in its own process: no exit."""
    from tasks.cli import cli

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["python -m tasks.phase1"])
    seen = []
    cli("phase1", lambda params: seen.append(params.seed))
    assert seen == [42] and (tmp_path / "metrics/timing/phase1.json").exists()
