"""The training loop in one process: outputs, exact resume, non-finite losses, AMP, config errors."""

import json
import os
import re

import pytest
import torch

import train
from idip.config import setup_cfg
from idip.engine.checkpoint import Checkpointer, read_checkpoint
from tests.engine.tiny_model import TinyTrainer, tiny_cfg_opts


def _cfg(out, max_iter=4, **extra):
    return setup_cfg(None, tiny_cfg_opts(str(out), max_iter, **extra))


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class FailingTrainer(TinyTrainer):
    fail_at = -1

    def run_step(self, loader, iteration):
        if iteration == self.fail_at:
            raise RuntimeError("simulated crash")
        return super().run_step(loader, iteration)


def test_run_writes_outputs(tmp_path):
    trainer = TinyTrainer(_cfg(tmp_path, max_iter=5, LOG_PERIOD=2))
    trainer.train()
    files = sorted(os.listdir(tmp_path))
    for name in (
        "config.yaml",
        "last_checkpoint",
        "log.txt",
        "metrics.json",
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
    ):
        assert name in files
    assert any(f.startswith("events.out.tfevents") for f in files)
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert [r["iteration"] for r in records] == [1, 3, 4]  # every LOG_PERIOD and the last
    assert {"total_loss", "loss_cls", "loss_box", "lr", "time", "data_time"} <= set(records[0])
    # lr of iteration 1 of a 2-iteration linear warmup from factor 0.01 (default): 0.01 * (0.01 * 0.5 + 0.5)
    assert records[0]["lr"] == pytest.approx(0.01 * (0.01 * 0.5 + 0.5))
    log = open(tmp_path / "log.txt").read()
    assert "eta: " in log and "iter: 3" in log and "total_loss: " in log and "lr: " in log
    assert re.search(
        r"overall training speed: 5 iterations in \d+:\d\d:\d\d \([0-9.]+ s / it\)", log
    )
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert read_checkpoint(str(tmp_path / "model_final.pth"))["iteration"] == 4
    assert "TinyTestModel" in open(tmp_path / "config.yaml").read()


@pytest.mark.parametrize("accum", [0, 2])
def test_resume_matches_uninterrupted_run(tmp_path, accum):
    extra = {"SOLVER.GRAD_ACCUM_STEPS": accum, "SOLVER.CHECKPOINT_PERIOD": 3}
    full = TinyTrainer(_cfg(tmp_path / "full", max_iter=7, **extra))
    full.train()
    expected = _params(full)

    crashed = FailingTrainer(_cfg(tmp_path / "resumed", max_iter=7, **extra))
    crashed.fail_at = 5  # after the checkpoint of iteration 2, before the one of iteration 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    assert (tmp_path / "resumed" / "last_checkpoint").read_text().strip() == "model_0000002.pth"

    resumed = TinyTrainer(_cfg(tmp_path / "resumed", max_iter=7, **extra), resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    got = _params(resumed)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # the optimizer moments and lr continue exactly too
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_resume_without_checkpoint_starts_fresh_and_random_seed_is_kept(tmp_path):
    first = TinyTrainer(_cfg(tmp_path, max_iter=2, SEED=-1), resume=True)
    assert first.start_iter == 0 and first.cfg.SEED >= 0
    first.train()
    again = TinyTrainer(_cfg(tmp_path, max_iter=4, SEED=-1), resume=True)
    assert again.start_iter == 2
    assert again.cfg.SEED == first.cfg.SEED  # data order of the resumed run is unchanged
    assert f"SEED is {first.cfg.SEED}" in open(tmp_path / "log.txt").read()


def test_non_finite_loss_names_term_and_iteration(tmp_path):
    trainer = TinyTrainer(_cfg(tmp_path, max_iter=6))
    trainer.model.nan_at_call = 4  # forward call 4 = iteration 3
    with pytest.raises(FloatingPointError, match=r"iteration 3: loss_box = nan") as info:
        trainer.train()
    assert "model_0000001.pth" in str(info.value)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    data = Checkpointer(torch.nn.Module(), str(tmp_path), "TinyTestModel").last_checkpoint_path()
    assert read_checkpoint(data)["iteration"] == 1
    assert not (tmp_path / "model_0000003.pth").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_runs_and_scaler_only_for_float16(tmp_path, dtype):
    trainer = TinyTrainer(
        _cfg(tmp_path, max_iter=2, **{"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.DTYPE": dtype})
    )
    before = _params(trainer)
    trainer.train()
    assert trainer.grad_scaler.is_enabled() == (dtype == "float16")
    assert not torch.equal(before["head.weight"], _params(trainer)["head.weight"])
    assert all(torch.isfinite(v).all() for v in _params(trainer).values())


@pytest.mark.parametrize(
    "machine, capability, warns",
    [
        ("x86_64", "AVX2", True),
        ("x86_64", "DEFAULT", True),
        ("x86_64", "AVX512", False),
        ("aarch64", "SVE256", False),
    ],
)
def test_amp_on_a_cpu_without_fast_half_kernels_warns(
    tmp_path, monkeypatch, machine, capability, warns
):
    import idip.engine.runtime as runtime

    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    monkeypatch.setattr(runtime.torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cfg = _cfg(tmp_path, max_iter=1, **{"SOLVER.AMP.ENABLED": True})
    message = runtime.slow_amp_warning(cfg, "cpu")
    assert (message is not None) == warns
    if warns:
        assert "SOLVER.AMP.ENABLED" in message and capability in message and "bfloat16" in message
        TinyTrainer(cfg)
        assert f"WARNING] {message}" in open(tmp_path / "log.txt").read()
    assert runtime.slow_amp_warning(cfg, "cuda") is None
    off = _cfg(tmp_path, max_iter=1)
    assert runtime.slow_amp_warning(off, "cpu") is None


def test_model_weights_loads_full_checkpoint(tmp_path):
    src = TinyTrainer(_cfg(tmp_path / "a", max_iter=2))
    src.train()
    dst = TinyTrainer(
        _cfg(
            tmp_path / "b", max_iter=2, **{"MODEL.WEIGHTS": str(tmp_path / "a" / "model_final.pth")}
        )
    )
    assert dst.start_iter == 0
    for key, value in _params(src).items():
        assert torch.equal(_params(dst)[key], value)


def test_config_errors_exit_2_with_one_line(tmp_path, capsys):
    code = train.cli(
        ["SOLVER.BASE_LRR", "0.1", "OUTPUT_DIR", str(tmp_path)], trainer_cls=TinyTrainer
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: unknown config key 'SOLVER.BASE_LRR'")

    code = train.cli(
        tiny_cfg_opts(
            str(tmp_path), 2, **{"SOLVER.IMS_PER_BATCH": 3, "SOLVER.GRAD_ACCUM_STEPS": 2}
        ),
        trainer_cls=TinyTrainer,
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "error: config key 'SOLVER.IMS_PER_BATCH' is 3, which does not split evenly over 1 process(es) "
        "x 2 accumulation step(s) (SOLVER.GRAD_ACCUM_STEPS)"
    ]

    code = train.cli(
        tiny_cfg_opts(str(tmp_path / "w"), 2, **{"MODEL.WEIGHTS": str(tmp_path / "none.pth")}),
        trainer_cls=TinyTrainer,
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.pth" in err[0]


class RecordingEvalTrainer(TinyTrainer):
    """Stands in for the COCO evaluation: records when it runs."""

    def evaluate(self, cfg, model):
        self.eval_calls = getattr(self, "eval_calls", [])
        self.eval_calls.append(model.training)
        n = len(self.eval_calls)
        return {"shapes_val": {"bbox": {"AP": 10.0 * n, "AP50": 20.0}, "segm": {"AP": 5.0 * n}}}


def test_periodic_and_final_evaluation_written_to_metrics(tmp_path):
    trainer = RecordingEvalTrainer(
        _cfg(tmp_path, max_iter=5, **{"TEST.EVAL_PERIOD": 2, "LOG_PERIOD": 5})
    )
    trainer.train()
    assert len(trainer.eval_calls) == 3  # after iterations 1 and 3, and at the end (4)
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert [r["iteration"] for r in evals] == [1, 3, 4]
    assert [r["eval/shapes_val/bbox/AP"] for r in evals] == [10.0, 20.0, 30.0]
    assert evals[0]["eval/shapes_val/segm/AP"] == 5.0


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_amp_run(tmp_path, dtype):
    trainer = TinyTrainer(
        _cfg(
            tmp_path,
            max_iter=3,
            **{
                "MODEL.DEVICE": "cuda",
                "SOLVER.AMP.ENABLED": True,
                "SOLVER.AMP.DTYPE": dtype,
                "DETERMINISTIC": False,
                "CUDNN_BENCHMARK": True,
            },
        )
    )
    trainer.train()
    assert next(trainer.model.parameters()).is_cuda
    assert "max_mem: " in open(tmp_path / "log.txt").read()
    assert all(torch.isfinite(v).all() for v in _params(trainer).values())
