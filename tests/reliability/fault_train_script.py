"""``train.py`` with TinyTestModel and the synthetic loader, plus fault injection (test-only).

Environment knobs, on top of those of ``tests/engine/tiny_train_script.py`` (TINY_REPORT,
TINY_KILL_IN_SAVE, ...):
  FAULT_KILL_AFTER_REPLACE=n  SIGKILL this process right after its n-th atomic rename in
                              idip.utils.file_io (1: config.yaml; then each save renames the
                              .pth, then the last_checkpoint marker: an even n dies between them)
  FAULT_SIGKILL_AT_ITER=k     SIGKILL the worker of rank FAULT_RANK (default 1) when it starts
                              iteration k, on the first torchrun attempt only
  FAULT_SLOW_STEP=s           sleep s seconds in every step (gives an outside killer time)
"""

import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from idip.utils.distributed import get_rank  # noqa: E402
from tests.engine.tiny_train_script import ScriptTrainer  # noqa: E402


def _kill_after_replace(n: int) -> None:
    import idip.utils.file_io as file_io

    real_replace, calls = file_io.os.replace, [0]

    class _Os:  # the atomic writer's view of `os`, with a lethal `replace`
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            real_replace(src, dst)
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    file_io.os = _Os()


class FaultTrainer(ScriptTrainer):
    def run_step(self, loader, iteration):
        kill_at = int(os.environ.get("FAULT_SIGKILL_AT_ITER", "-1"))
        first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
        if (
            iteration == kill_at
            and first_attempt
            and get_rank() == int(os.environ.get("FAULT_RANK", "1"))
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(os.environ.get("FAULT_SLOW_STEP", "0")))
        return super().run_step(loader, iteration)


if __name__ == "__main__":
    if os.environ.get("TINY_KILL_IN_SAVE"):
        from tests.engine.tiny_train_script import _kill_in_save

        _kill_in_save(int(os.environ["TINY_KILL_IN_SAVE"]))
    if os.environ.get("FAULT_KILL_AFTER_REPLACE"):
        _kill_after_replace(int(os.environ["FAULT_KILL_AFTER_REPLACE"]))
    sys.exit(train.cli(trainer_cls=FaultTrainer))
