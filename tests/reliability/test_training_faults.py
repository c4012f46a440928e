"""Faults during training, end to end through ``train.py``: a non-finite loss, SIGKILL at an
arbitrary moment (also between a checkpoint file and its ``last_checkpoint`` marker), and a
torchrun worker killed mid-run. Every case must resume and reach the parameters of an
uninterrupted run (CPU, deterministic settings, TinyTestModel on the synthetic stream).

Already covered in tests/engine (not repeated here): killed in the middle of ``torch.save``
(test_distributed_run), a raised exception in a torchrun worker with ``--max-restarts=1``
(test_distributed_run), the non-finite-loss message (test_trainer).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from idip.engine.checkpoint import read_checkpoint
from tests.engine.tiny_model import TinyTrainer, tiny_cfg_opts, torchrun_failure
from tests.reliability.conftest import one_error_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "reliability", "fault_train_script.py")


class NanTrainer(TinyTrainer):
    """Makes loss_box NaN on forward call 4 (iteration 3)."""

    def build_model(self, cfg):
        model = super().build_model(cfg)
        model.nan_at_call = 4
        return model


def _final_state(out_dir) -> dict[str, torch.Tensor]:
    return read_checkpoint(os.path.join(out_dir, "model_final.pth"))["model"]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_non_finite_loss_stops_then_resume_matches_uninterrupted(tmp_path, capsys):
    assert train.cli(tiny_cfg_opts(str(tmp_path / "full"), 6), trainer_cls=TinyTrainer) == 0

    run = tmp_path / "run"
    assert train.cli(tiny_cfg_opts(str(run), 6), trainer_cls=NanTrainer) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "iteration 3" in err and "loss_box = nan" in err and "loss_cls" not in err
    # The last good checkpoint (iteration 1) is intact; nothing later was written.
    assert (run / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert read_checkpoint(str(run / "model_0000001.pth"))["iteration"] == 1
    assert sorted(f for f in os.listdir(run) if f.endswith(".pth")) == ["model_0000001.pth"]

    assert train.cli(["--resume", *tiny_cfg_opts(str(run), 6)], trainer_cls=TinyTrainer) == 0
    assert "continuing at iteration 2" in (run / "log.txt").read_text()
    _assert_same_state(_final_state(run), _final_state(tmp_path / "full"))


def _env(report, **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TINY_REPORT=str(report))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _train(out_dir, report, max_iter, args=(), **env):
    cmd = [
        sys.executable,
        SCRIPT,
        *args,
        *tiny_cfg_opts(str(out_dir), max_iter, **{"SOLVER.CHECKPOINT_PERIOD": 3}),
    ]
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(report, **env), capture_output=True, text=True, timeout=300
    )


def _params(report) -> list[float]:
    with open(report) as f:
        return json.load(f)["ranks"][0]["params"]


def _iterations_logged(out_dir) -> int:
    """1 + the highest iteration in metrics.json (0 when there is none yet)."""
    try:
        with open(os.path.join(out_dir, "metrics.json")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    iterations = []
    for line in lines:
        try:
            iterations.append(json.loads(line)["iteration"])
        except (ValueError, KeyError):
            pass  # a line being written at the moment of the kill
    return max(iterations, default=-1) + 1


def _resumed_at(out_dir) -> list[int]:
    with open(os.path.join(out_dir, "log.txt")) as f:
        return [int(m) for m in re.findall(r"continuing at iteration (\d+)", f.read())]


@pytest.mark.slow
def test_sigkill_at_arbitrary_moments_then_resume(tmp_path):
    max_iter, period = 12, 3
    full = _train(tmp_path / "full", tmp_path / "full.json", max_iter)
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "run"
    # Kill points: mid-interval after iteration 4 (last checkpoint at 2), right after iteration 8
    # was logged (its checkpoint model_0000008 may be complete, half written or not started), and
    # 0.37 s into the steps after the next logged iteration.
    for attempt, kill_when_logged in enumerate((5, 9, None)):
        cmd = [
            sys.executable,
            SCRIPT,
            *(["--resume"] if attempt else []),
            *tiny_cfg_opts(str(run), max_iter, **{"SOLVER.CHECKPOINT_PERIOD": period}),
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(tmp_path / "unused.json", FAULT_SLOW_STEP=0.2),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        start_logged = _iterations_logged(run)
        while time.time() < deadline and proc.poll() is None:
            logged = _iterations_logged(run)
            if kill_when_logged is not None and logged >= kill_when_logged:
                break
            if kill_when_logged is None and logged >= start_logged + 1:
                time.sleep(0.37)  # somewhere inside a later step
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        marker = (run / "last_checkpoint").read_text().strip()
        data = read_checkpoint(str(run / marker))  # the checkpoint it names is complete
        assert (data["iteration"] + 1) % period == 0
        # at most the work since that checkpoint is lost
        assert _iterations_logged(run) - (data["iteration"] + 1) <= period

    resumed = _train(run, tmp_path / "resumed.json", max_iter, args=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    starts = _resumed_at(run)
    assert len(starts) == 3 and all(s % period == 0 for s in starts)
    assert _params(tmp_path / "resumed.json") == _params(tmp_path / "full.json")


@pytest.mark.slow
def test_killed_between_checkpoint_file_and_marker_then_resume(tmp_path):
    full = _train(tmp_path / "full", tmp_path / "full.json", 6)
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "run"
    # Period 3, 6 iterations: writes config.yaml (rename 1), saves model_0000002 (renames 2: .pth,
    # 3: marker), then model_final (rename 4: .pth). Killed right after rename 4: model_final.pth
    # is complete but the marker still names model_0000002.pth.
    killed = _train(run, tmp_path / "unused.json", 6, FAULT_KILL_AFTER_REPLACE=4)
    assert killed.returncode == -signal.SIGKILL
    assert (run / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    assert read_checkpoint(str(run / "model_final.pth"))["iteration"] == 5
    resumed = _train(run, tmp_path / "resumed.json", 6, args=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _resumed_at(run) == [3]
    assert _params(tmp_path / "resumed.json") == _params(tmp_path / "full.json")


@pytest.mark.slow
def test_half_written_checkpoint_of_a_killed_run_is_cleaned_up_on_resume(tmp_path):
    full = _train(tmp_path / "full", tmp_path / "full.json", 6)
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "run"
    # killed in the middle of writing model_final.pth (the second torch.save of the run)
    killed = _train(run, tmp_path / "unused.json", 6, TINY_KILL_IN_SAVE=2)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [f for f in os.listdir(run) if f.startswith(".model_final.pth.tmp.")]
    assert len(leftovers) == 1 and not (run / "model_final.pth").exists()
    resumed = _train(run, tmp_path / "resumed.json", 6, args=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _resumed_at(run) == [3]
    assert not [f for f in os.listdir(run) if ".tmp." in f]
    assert _params(tmp_path / "resumed.json") == _params(tmp_path / "full.json")


@pytest.mark.slow
def test_torchrun_restarts_a_sigkilled_worker(tmp_path):
    def torchrun(out_dir, report, torchrun_args=(), **env):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *torchrun_args,
            SCRIPT,
            *tiny_cfg_opts(str(out_dir), 5, **{"SOLVER.CHECKPOINT_PERIOD": 2}),
        ]
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=_env(report, PYTHONFAULTHANDLER=1, **env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, torchrun_failure(proc)
        with open(report) as f:
            return json.load(f)["ranks"]

    full = torchrun(tmp_path / "full", tmp_path / "full.json")
    # rank 1 is SIGKILLed (no Python exception, no cleanup) when it starts iteration 3
    restarted = torchrun(
        tmp_path / "run",
        tmp_path / "run.json",
        ("--max-restarts=1",),
        FAULT_SIGKILL_AT_ITER=3,
        FAULT_RANK=1,
    )
    assert [r["start_iter"] for r in restarted] == [2, 2]
    assert restarted[0]["params"] == full[0]["params"] == restarted[1]["params"]
