"""``train.py`` with TinyTestModel and the synthetic loader, for torchrun subprocess tests.

Extra environment knobs (test-only):
  TINY_FAIL_AT_ITER=k   raise at iteration k on the first attempt (TORCHELASTIC_RESTART_COUNT=0)
  TINY_REPORT=path      after training, rank 0 writes a JSON report of every rank's parameters
  TINY_KILL_IN_SAVE=n   SIGKILL this process in the middle of writing its n-th checkpoint file
"""

import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import train  # noqa: E402
from idip.engine.checkpoint import unwrap_model  # noqa: E402
from idip.utils.distributed import all_gather, get_rank, get_world_size, is_main_process  # noqa: E402
from tests.engine.tiny_model import TinyTrainer  # noqa: E402


def _kill_in_save(n: int) -> None:
    import idip.engine.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            real_save(obj, f, *args, **kwargs)
            f.truncate(1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    checkpoint.torch.save = save


class ScriptTrainer(TinyTrainer):
    steps_taken = 0

    def run_step(self, loader, iteration):
        fail_at = int(os.environ.get("TINY_FAIL_AT_ITER", "-1"))
        if iteration == fail_at and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
            raise RuntimeError(f"injected failure at iteration {iteration}")
        out = super().run_step(loader, iteration)
        ScriptTrainer.steps_taken += 1
        return out

    def train(self):
        results = super().train()
        flat = torch.cat([p.detach().flatten() for p in unwrap_model(self.model).parameters()])
        gathered = all_gather(
            {
                "rank": get_rank(),
                "steps": ScriptTrainer.steps_taken,
                "start_iter": self.start_iter,
                "seed": self.cfg.SEED,
                "params": flat.tolist(),
            }
        )
        report = os.environ.get("TINY_REPORT")
        if report and is_main_process():
            with open(report, "w") as f:
                json.dump({"world_size": get_world_size(), "ranks": gathered}, f)
        return results


if __name__ == "__main__":
    if os.environ.get("TINY_KILL_IN_SAVE"):
        _kill_in_save(int(os.environ["TINY_KILL_IN_SAVE"]))
    sys.exit(train.cli(trainer_cls=ScriptTrainer))
