"""Checkpoints: atomic writes survive interruptions, weights_only loading, clear errors, RNG state."""

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import idip.engine.checkpoint as ckpt_mod
from idip.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_weights,
    read_checkpoint,
)
from idip.engine.seeding import capture_rng_state, restore_rng_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Small(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.backbone = nn.Linear(4, 5)
        self.head = nn.Linear(5, out)

    def forward(self, x):
        return self.head(self.backbone(x))


def _checkpointer(model, folder, arch="IDIP"):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()  # optimizer state exists
    return Checkpointer(model, str(folder), arch, optimizer=opt, config_text="SEED: 3\n")


def test_save_writes_file_and_marker_loadable_weights_only(tmp_path):
    model = Small()
    ck = _checkpointer(model, tmp_path)
    path = ck.save("model_0000004", 4, rng_states=[capture_rng_state()])
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    data = torch.load(
        path, weights_only=True
    )  # RNG states and optimizer state are weights_only-safe
    assert data["iteration"] == 4 and data["meta_architecture"] == "IDIP"
    assert torch.equal(data["model"]["head.weight"], model.head.weight)
    assert ck.last_checkpoint_path() == path
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]


def test_exception_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = Small()
    ck = _checkpointer(model, tmp_path)
    good = ck.save("model_0000001", 1)
    good_bytes = open(good, "rb").read()
    real_save = torch.save

    def torn_save(obj, f):
        real_save(obj, f)
        f.truncate(100)  # half-written
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000003", 3)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000001", 5)  # even overwriting the same name leaves the old file
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert ck.last_checkpoint_path() == good
    assert open(good, "rb").read() == good_bytes
    fresh = Small()
    data = Checkpointer(fresh, str(tmp_path), "IDIP").load(good)
    assert data["iteration"] == 1


def test_process_killed_mid_write_leaves_target_intact(tmp_path):
    target = tmp_path / "model_final.pth"
    torch.save({"format": "old"}, target)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from idip.utils.file_io import atomic_write
        def write(f):
            f.write(b"x" * 4096)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert torch.load(target, weights_only=True) == {"format": "old"}


def test_max_keep_prunes_old_periodic_checkpoints(tmp_path):
    ck = _checkpointer(Small(), tmp_path)
    ck.max_keep = 2
    for it in (1, 3, 5):
        ck.save(f"model_{it:07d}", it)
    ck.save("model_final", 6)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000003.pth",
        "model_0000005.pth",
        "model_final.pth",
    ]


def test_read_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        read_checkpoint(str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth is corrupt"):
        read_checkpoint(str(garbage))
    truncated = tmp_path / "trunc.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="trunc.pth is corrupt"):
        read_checkpoint(str(truncated))


def test_weights_from_other_architecture_or_shape_are_rejected(tmp_path):
    src = Small()
    path = _checkpointer(src, tmp_path, arch="CondInst").save("model_final", 9)
    with pytest.raises(
        CheckpointError, match="holds a CondInst model but MODEL.META_ARCHITECTURE is IDIP"
    ):
        load_weights(Small(), path, "IDIP")
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: head.weight \(checkpoint \(3, 5\) vs model \(7, 5\)\)",
    ):
        load_weights(Small(out=7), path, "CondInst")

    class Extra(Small):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(1, 1)

    with pytest.raises(CheckpointError, match="missing keys: extra.weight, extra.bias"):
        load_weights(Extra(), path, "CondInst")
    fresh = Small()
    report = load_weights(fresh, path, "CondInst")
    assert "iteration 9" in report
    assert torch.equal(fresh.head.weight, src.head.weight)


def test_missing_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS file not found: .*absent.pth"):
        load_weights(Small(), str(tmp_path / "absent.pth"), "IDIP")


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    (
        random.random(),
        np.random.randn(),
        torch.randn(1),
    )  # move off the seeded positions (gauss cache)
    path = tmp_path / "rng.pth"
    torch.save(capture_rng_state(), path)
    first = (
        random.random(),
        random.gauss(0, 1),
        np.random.randn(3).tolist(),
        torch.randn(3).tolist(),
    )
    restore_rng_state(torch.load(path, weights_only=True))
    second = (
        random.random(),
        random.gauss(0, 1),
        np.random.randn(3).tolist(),
        torch.randn(3).tolist(),
    )
    assert first == second
