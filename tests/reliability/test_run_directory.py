"""OUTPUT_DIR and checkpoints of a training run (#21 items 4-7, 9, 10): one run per folder, no
silent reuse, last_checkpoint stays inside, non-finite weights are never checkpointed, and
file-system failures are one line naming the file."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

import train
from idip.engine import checkpoint as checkpoint_module
from idip.engine import run_directory
from idip.engine.run_directory import RunLock
from tests.engine.tiny_model import TinyTrainer, tiny_cfg_opts
from tests.reliability.conftest import one_error_line


def _train(out, capsys, *flags, max_iter=4, trainer_cls=TinyTrainer, **extra):
    code = train.cli([*flags, *tiny_cfg_opts(str(out), max_iter, **extra)], trainer_cls=trainer_cls)
    err = capsys.readouterr().err
    return code, (one_error_line(err) if code else "")


def test_a_second_run_into_the_same_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = RunLock(str(out))  # another run holds the folder
    try:
        code, err = _train(out, capsys)
        assert (
            code == 2 and "is in use by another training run" in err and f"pid {os.getpid()}" in err
        )
        assert not (out / "metrics.json").exists() and not (out / "last_checkpoint").exists()
    finally:
        holder.release()
    assert _train(out, capsys) == (0, "")  # released: the folder is free again
    assert not (out / ".train.lock").exists()


def test_a_lock_file_left_by_a_crashed_run_does_not_block(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".train.lock").write_text("pid 999999 on elsewhere\n")  # no process holds its flock
    assert _train(out, capsys) == (0, "")


def test_a_plain_rerun_into_a_finished_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys)[0] == 0
    metrics = (out / "metrics.json").read_text()
    code, err = _train(out, capsys)
    assert code == 2 and "--resume" in err and "--start-over" in err and "another OUTPUT_DIR" in err
    assert (out / "metrics.json").read_text() == metrics  # untouched


def test_start_over_moves_the_previous_run_aside(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys)[0] == 0
    first = (out / "model_final.pth").read_bytes()
    assert _train(out, capsys, "--start-over")[0] == 0
    (old,) = [p for p in out.iterdir() if p.name.startswith("replaced_run_")]
    assert (old / "model_final.pth").read_bytes() == first
    iterations = [
        json.loads(line)["iteration"]
        for line in (out / "metrics.json").read_text().splitlines()
        if "total_loss" in line
    ]
    assert iterations == sorted(set(iterations))  # one history, no duplicates
    code, err = _train(out, capsys, "--resume", "--start-over")
    assert code == 2 and "exclude each other" in err


@pytest.mark.parametrize("name", ["../other/model_final.pth", "/etc/passwd", "sub/model.pth", ".."])
def test_last_checkpoint_must_name_a_file_of_the_folder(tmp_path, capsys, name):
    out = tmp_path / "run"
    assert _train(out, capsys)[0] == 0
    (out / "last_checkpoint").write_text(name + "\n")
    code, err = _train(out, capsys, "--resume")
    assert code == 2 and "is not a file in OUTPUT_DIR" in err and name in err


def test_resuming_from_a_missing_file_says_file_not_found(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys)[0] == 0
    (out / "last_checkpoint").write_text("model_0000099.pth\n")
    code, err = _train(out, capsys, "--resume")
    assert code == 2 and "file not found" in err and "model_0000099.pth" in err
    assert "shared by every node" not in err


class DivergingTrainer(TinyTrainer):
    """After the step of iteration 1 the weights become NaN (the loss of iteration 1 was finite)."""

    def run_step(self, loader, iteration):
        out = super().run_step(loader, iteration)
        if iteration == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return out


def test_non_finite_weights_are_never_checkpointed(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _train(
        out, capsys, max_iter=6, trainer_cls=DivergingTrainer, **{"SOLVER.CHECKPOINT_PERIOD": 2}
    )
    assert code == 1 and "after iteration 1" in err and "not finite" in err
    assert "checkpoint not written" in err
    assert not (out / "last_checkpoint").exists() and not (out / "model_0000001.pth").exists()


@pytest.mark.parametrize("lr", [".nan", ".inf", "0", "-0.1", "fast"])
def test_base_lr_must_be_a_finite_positive_number(tmp_path, capsys, lr):
    config = tmp_path / "bad.yaml"
    config.write_text(f"SOLVER:\n  BASE_LR: {lr}\n")
    opts = tiny_cfg_opts(str(tmp_path / "run"), 2)
    i = opts.index("SOLVER.BASE_LR")
    del opts[i : i + 2]  # the file's value stands
    code = train.cli(["--config-file", str(config), *opts], trainer_cls=TinyTrainer)
    err = one_error_line(capsys.readouterr().err)
    assert code == 2 and "SOLVER.BASE_LR" in err


def test_a_failed_save_names_the_file_and_keeps_the_previous_checkpoint(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real = checkpoint_module.atomic_torch_save
    calls = []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: torch's zip writer hits a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real(obj, path)

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", full_disk)
    code, err = _train(out, capsys, max_iter=6)
    assert code == 2 and "could not write checkpoint" in err and "model_0000003.pth" in err
    assert "is the disk full?" in err and "model_0000001.pth is intact" in err
    assert (out / "last_checkpoint").read_text().strip() == "model_0000001.pth"


def test_a_read_only_output_dir_is_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes anywhere: let the permission check see what a user would
        monkeypatch.setattr(run_directory.os, "access", lambda path, mode: False)
    code, err = _train(out, capsys)
    assert code == 2 and "cannot be written" in err


def test_an_output_dir_under_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _train(tmp_path / "file" / "run", capsys)
    assert code == 2 and "OUTPUT_DIR" in err and "cannot be created" in err


def _resume(out, capsys, *flags, **extra):
    code = train.cli(
        ["--resume", *flags, *tiny_cfg_opts(str(out), 8, **extra)], trainer_cls=TinyTrainer
    )
    err = capsys.readouterr().err
    return code, (one_error_line(err) if code else "")


@pytest.mark.parametrize(
    "key, value",
    [
        ("SOLVER.IMS_PER_BATCH", 2),
        ("SEED", 8),
        ("MODEL.META_ARCHITECTURE", "TinyTestModel"),
        ("DATASETS.TRAIN", ("other",)),
    ],
)
def test_resuming_with_a_config_change_that_breaks_exactness_is_refused(
    tmp_path, capsys, key, value
):
    """#21 item 8: the changed key is named; --allow-config-change continues (logging it)."""
    out = tmp_path / "run"
    assert _train(out, capsys, max_iter=8, **{"SOLVER.CHECKPOINT_PERIOD": 2})[0] == 0
    (out / "last_checkpoint").write_text("model_0000003.pth\n")  # resume mid-run
    if key == "MODEL.META_ARCHITECTURE":
        key, value = "MODEL.PIXEL_STD", (2.0, 2.0, 2.0)  # the same model class, other inputs
    code, err = _resume(out, capsys, **{"SOLVER.CHECKPOINT_PERIOD": 2, key: value})
    assert code == 2 and f"changed {key}" in err and "--allow-config-change" in err
    if key == "DATASETS.TRAIN":
        return  # the synthetic loader of the tiny trainer has no such dataset to continue with
    code, err = _resume(
        out, capsys, "--allow-config-change", **{"SOLVER.CHECKPOINT_PERIOD": 2, key: value}
    )
    assert code == 0, err
    assert f"config differs from the checkpoint's: {key}:" in (out / "log.txt").read_text()


def test_resuming_with_a_harmless_change_logs_it_and_continues(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, capsys, max_iter=8, **{"SOLVER.CHECKPOINT_PERIOD": 2})[0] == 0
    (out / "last_checkpoint").write_text("model_0000003.pth\n")
    code, err = _resume(out, capsys, **{"SOLVER.CHECKPOINT_PERIOD": 2, "LOG_PERIOD": 3})
    assert code == 0, err
    assert (
        "config differs from the checkpoint's: LOG_PERIOD: 1 -> 3" in (out / "log.txt").read_text()
    )
