"""Two-process training with torchrun (gloo on CPU), and a worker restart that resumes."""

import json
import os
import subprocess
import sys

import pytest

from tests.engine.tiny_model import tiny_cfg_opts, torchrun_failure

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "engine", "tiny_train_script.py")


def _torchrun(out_dir, report, max_iter=4, extra_env=None, torchrun_args=(), **opts):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TINY_REPORT=str(report),
        PYTHONPATH=ROOT,
        PYTHONFAULTHANDLER="1",
    )
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *torchrun_args,
        SCRIPT,
        *tiny_cfg_opts(str(out_dir), max_iter, **opts),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, torchrun_failure(proc)
    with open(report) as f:
        return json.load(f), proc


@pytest.mark.slow
def test_two_process_training_and_restart(tmp_path):
    # SEED -1: rank 0 draws the seed and every rank uses it
    report, _ = _torchrun(tmp_path / "run", tmp_path / "report.json", max_iter=4, SEED=-1)
    seed = report["ranks"][0]["seed"]
    assert seed >= 0 and report["ranks"][1]["seed"] == seed
    assert f"SEED: {seed}" in open(tmp_path / "run" / "config.yaml").read()
    assert report["world_size"] == 2
    ranks = report["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["steps"] for r in ranks] == [4, 4]  # both ranks stepped every iteration
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept them identical
    # Only rank 0 writes: one metrics line per iteration (LOG_PERIOD 1), one log line per iteration.
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.json")]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    log = open(tmp_path / "run" / "log.txt").read()
    assert log.count("iter: 2 ") == 1
    assert "world size 2" in log
    assert sorted(f for f in os.listdir(tmp_path / "run") if not f.startswith("events.out")) == [
        "config.yaml",
        "last_checkpoint",
        "log.txt",
        "metrics.json",
        "model_0000001.pth",
        "model_final.pth",
    ]

    # A worker failure at iteration 3 on the first attempt: torchrun restarts both workers, which
    # resume from model_0000001.pth (iteration 1) and end with the same parameters.
    restarted, proc = _torchrun(
        tmp_path / "restart",
        tmp_path / "report2.json",
        max_iter=4,
        extra_env={"TINY_FAIL_AT_ITER": "3"},
        torchrun_args=("--max-restarts=1",),
        SEED=seed,
    )
    assert [r["start_iter"] for r in restarted["ranks"]] == [2, 2]
    assert restarted["ranks"][0]["params"] == ranks[0]["params"]
    assert restarted["ranks"][1]["params"] == ranks[0]["params"]
    assert "resumed from" in open(tmp_path / "restart" / "log.txt").read()


def _python(out_dir, report, max_iter, extra_env=None, args=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", TINY_REPORT=str(report), PYTHONPATH=ROOT)
    env.update(extra_env or {})
    cmd = [sys.executable, SCRIPT, *args, *tiny_cfg_opts(str(out_dir), max_iter)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_killed_during_checkpoint_write_then_resume(tmp_path):
    done = _python(tmp_path / "full", tmp_path / "full.json", 6)
    assert done.returncode == 0, done.stderr[-3000:]
    # checkpoints at iterations 1, 3, 5(final): killed while writing the second (iteration 3)
    killed = _python(
        tmp_path / "run", tmp_path / "unused.json", 6, extra_env={"TINY_KILL_IN_SAVE": "2"}
    )
    assert killed.returncode == -9
    assert (tmp_path / "run" / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert not (tmp_path / "run" / "model_0000003.pth").exists()
    resumed = _python(tmp_path / "run", tmp_path / "resumed.json", 6, args=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = json.load(open(tmp_path / "full.json"))["ranks"][0]
    again = json.load(open(tmp_path / "resumed.json"))["ranks"][0]
    assert again["start_iter"] == 2
    assert again["params"] == full["params"]


@pytest.mark.cuda
@pytest.mark.slow
def test_two_gpu_nccl_training(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    report, _ = _torchrun(
        tmp_path / "run",
        tmp_path / "report.json",
        max_iter=4,
        **{"MODEL.DEVICE": "cuda", "DETERMINISTIC": False, "SOLVER.AMP.ENABLED": True},
    )
    ranks = report["ranks"]
    assert [r["steps"] for r in ranks] == [4, 4]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert "max_mem: " in open(tmp_path / "run" / "log.txt").read()
