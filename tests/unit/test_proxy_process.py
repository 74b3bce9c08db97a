"""How a lab proxy that ends on its own is told apart from one that was stopped (a bench pass once lost its
proxy mid-pass with nothing in its log: it now says how the process ended, and the fault handler leaves the
Python stacks of a native crash in the log)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from echolm_lab.proxy_process import ProxyProcess


def _process(code: str, log_path: Path) -> ProxyProcess:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    return ProxyProcess(process, "http://127.0.0.1:1", "", log_path)


def test_a_process_killed_by_a_signal_says_which_and_leaves_its_stack_in_the_log(tmp_path: Path) -> None:
    crashing = "import os, signal\ndef crash():\n    os.kill(os.getpid(), signal.SIGSEGV)\ncrash()"
    proxy = _process(crashing, tmp_path / "p.log")
    proxy.process.wait(30)
    assert proxy.ended_unasked() == "killed by SIGSEGV"
    assert "Segmentation fault" in proxy.log_tail() and "crash" in proxy.log_tail()


def test_a_process_that_exits_gives_its_code_and_a_running_or_stopped_one_nothing(tmp_path: Path) -> None:
    exiting = _process("raise SystemExit(3)", tmp_path / "exit.log")
    exiting.process.wait(30)
    assert exiting.ended_unasked() == "exited with code 3"
    running = _process("import time; time.sleep(60)", tmp_path / "run.log")
    try:
        assert running.ended_unasked() is None
    finally:
        running.stop()
    assert running.process.returncode is not None and running.ended_unasked() is None
