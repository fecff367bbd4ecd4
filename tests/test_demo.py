"""activestorage.demo's signal handling: the demo's work runs in a thread and the main thread only
waits, so a SIGTERM/Ctrl-C becomes a KeyboardInterrupt in that wait, never inside library code
that CPython would turn into another exit (the end-to-end demo runs are in test_cli.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from activestorage.demo import wait_in_main_thread

#: a program that runs WORK the way run_demo runs _demo (or, with "direct", in the main thread
#: as it did before) under terminate_on_signals, and exits 130 on KeyboardInterrupt as the CLI does
PROGRAM = textwrap.dedent("""
    import os, signal, sys, threading, time
    from activestorage.demo import terminate_on_signals, wait_in_main_thread

    def signal_me():
        os.kill(os.getpid(), signal.SIGTERM)
        t0 = time.monotonic()
        # the handler runs on one of these bytecodes (in the main thread: the wait's; stop is set)
        while not stop.is_set() and time.monotonic() - t0 < 5:
            pass

    WORK

    stop = threading.Event()
    try:
        with terminate_on_signals():
            if sys.argv[1] == "direct":
                work()
            else:
                wait_in_main_thread(work, stop)
        print("not interrupted")
    except KeyboardInterrupt:
        print("interrupted", stop.is_set())
        sys.exit(130)
""")

#: SIGTERM lands inside exec() of generated source (what dataclasses do at import)
IN_EXEC = """
def work():
    exec("signal_me()", {"signal_me": signal_me})
"""
#: SIGTERM lands inside class creation (a descriptor's __set_name__, as dataclass fields have)
IN_CLASS = """
class Field:
    def __set_name__(self, owner, name):
        signal_me()

def work():
    class Record:
        value = Field()
"""


def run(tmp_path: Path, work: str, how: str) -> subprocess.CompletedProcess:
    """PROGRAM run as ``python -m`` (as the tests run the demo; under ``-m`` a KeyboardInterrupt
    that ever left an exec() turns the exit into SIGINT)."""
    (tmp_path / "signalled.py").write_text(PROGRAM.replace("WORK", work))
    return subprocess.run([sys.executable, "-m", "signalled", how], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("work", [IN_EXEC, IN_CLASS], ids=["in exec", "in class creation"])
def test_a_signal_during_the_work_exits_130(tmp_path: Path, work: str) -> None:
    r = run(tmp_path, work, "thread")
    assert (r.returncode, r.stdout.strip()) == (130, "interrupted True"), r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="pins CPython 3.11's behaviour (the "
                    "Python this project's machines run); other versions may have changed it")
def test_the_same_signals_in_the_main_thread_do_not_exit_130(tmp_path: Path) -> None:
    """What the thread prevents (the cause of a flaky demo test under load): run in the main
    thread, the interrupt in exec() ends the process by SIGINT despite sys.exit(130), and the one
    in class creation becomes a RuntimeError."""
    r = run(tmp_path, IN_EXEC, "direct")
    assert r.returncode == -signal.SIGINT and r.stdout.strip() == "interrupted False", r
    r = run(tmp_path, IN_CLASS, "direct")
    assert r.returncode == 1 and "RuntimeError" in r.stderr and "__set_name__" in r.stderr, r


def test_the_work_s_result_and_errors_come_back_to_the_caller() -> None:
    stop = threading.Event()
    seen = []
    assert wait_in_main_thread(lambda: seen.append(threading.current_thread()) or 7, stop) == 7
    assert seen and seen[0] is not threading.main_thread() and not stop.is_set()

    def fails() -> int:
        raise ValueError("bad sample")

    with pytest.raises(ValueError, match="bad sample"):
        wait_in_main_thread(fails, stop)
    assert not stop.is_set()  # an error of the work is not an interruption


def test_an_interrupt_stops_the_work_then_gives_it_time_to_return(tmp_path: Path) -> None:
    """On Ctrl-C/SIGTERM: ``stop`` is set, ``on_interrupt`` runs, and the work gets ``grace``
    seconds to return before the interrupt goes on (a program that signals itself)."""
    program = textwrap.dedent("""
        import os, signal, sys, threading, time
        from activestorage.demo import terminate_on_signals, wait_in_main_thread

        events = []
        stop = threading.Event()

        def work():
            os.kill(os.getpid(), signal.SIGTERM)
            while not stop.wait(0.01):
                pass
            time.sleep(0.3)  # unwinding
            events.append("work returned")
            return 0

        try:
            with terminate_on_signals():
                wait_in_main_thread(work, stop, on_interrupt=lambda: events.append("on_interrupt"))
        except KeyboardInterrupt:
            print(",".join(events))
            sys.exit(130)
    """)
    (tmp_path / "graceful.py").write_text(program)
    r = subprocess.run([sys.executable, "-m", "graceful"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (130, "on_interrupt,work returned"), r.stderr
