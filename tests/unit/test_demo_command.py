"""`logpipe demo`'s own decisions, without services: when it stops instead of going on."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_the_demo_stops_when_its_old_topics_cannot_be_deleted(monkeypatch):
    """The demo uses the names again at once: a topic the broker keeps would mix old and new records, so it exits
    with the broker's reason instead of going on."""
    from logpipe.commands import demo
    from logpipe.config import load_settings

    def kept(*_a, **_k):
        raise TimeoutError("Kafka at 127.0.0.1:9092 still lists the deleted topics ['t']")

    monkeypatch.setattr("logpipe.topics.delete_topics", kept)
    with pytest.raises(SystemExit, match="demo: Kafka at .* still lists the deleted topics"):
        demo.delete_topics_or_exit(load_settings(), ["t"])


def test_a_bad_sample_size_is_refused_before_the_stack_starts(monkeypatch, capsys):
    """`demo --size 40M` (not a size: decimal units with B) ends at once with the reason, exit 2; before, the
    stack started first (minutes on a fresh machine) and the generate step then failed."""
    from logpipe import cli
    from logpipe.stack import services

    started = []
    monkeypatch.setattr(services, "up", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--size", "40M"])
    assert exc.value.code == 2 and not started
    err = capsys.readouterr().err
    assert "--size" in err and "not a size: '40M'" in err, err
    args = cli.build_parser().parse_args(["demo", "--size", "2.5GB"])
    assert args.size == "2.5GB"  # handed on to generate as given


# a step standing in for `logpipe stream`: on SIGINT or SIGTERM it finishes its work (0.5 s) and says so
_GRACEFUL_STEP = """
import signal, sys, time
def stop(signum, frame):
    time.sleep(0.5)
    print("graceful stop done", signum, flush=True)
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
print("step running", flush=True)
time.sleep(60)
"""

# the demo running that step through demo._step (its Popen given the stand-in's command)
_DEMO = """
import signal, subprocess, sys
# Ctrl-C as in a terminal: a shell without job control (CI scripts, `cmd &`) starts its children with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from logpipe.cli import exit_on_termination
from logpipe.commands import demo
real = subprocess.Popen
demo.subprocess.Popen = lambda argv, **kw: real([sys.executable, "-c", sys.argv[1]], **kw)
exit_on_termination()
demo._step("stream --until-done", ["stream"], env=None, stop_grace_s=float(sys.argv[2]))
"""


def _demo_with_a_step(step: str, grace_s: float):
    import subprocess
    import sys

    demo = subprocess.Popen([sys.executable, "-c", _DEMO, step, str(grace_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert demo.stdout.readline().strip() == "step running"
    return demo


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_stopped_demo_lets_its_running_step_stop_cleanly(signal_name):
    """SIGTERM reaches the demo alone: it passes it on to the step (before, the step ran on, orphaned). Ctrl-C
    reaches the whole foreground group: the demo waits for the step's own clean stop (before, it killed the step
    0.25 s later: the stream could not finish its micro-batch, nor the producer save its position)."""
    import os
    import signal

    demo = _demo_with_a_step(_GRACEFUL_STEP, grace_s=0)  # the step's grace: 0 + 30 s
    sig = getattr(signal, signal_name)
    if sig == signal.SIGINT:
        os.killpg(demo.pid, sig)  # as a terminal's Ctrl-C: the demo and its step
    else:
        demo.send_signal(sig)
    out, _ = demo.communicate(timeout=60)
    assert f"graceful stop done {int(sig)}" in out, out
    # SIGTERM: exit 143; Ctrl-C: Python ends on its KeyboardInterrupt by the signal itself
    assert demo.returncode == (143 if sig == signal.SIGTERM else -signal.SIGINT), out


def test_a_step_that_does_not_stop_within_the_grace_is_killed():
    import signal

    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('step running', flush=True)\n" \
               "time.sleep(60)\n"
    demo = _demo_with_a_step(stubborn, grace_s=-29)  # 1 s in all
    demo.send_signal(signal.SIGTERM)
    out, _ = demo.communicate(timeout=30)
    assert "did not stop within 1s: killing it" in out and demo.returncode == 143, out
