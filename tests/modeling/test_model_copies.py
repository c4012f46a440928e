"""Both built models can be deep-copied, pickled and saved whole (EMA, ``torch.save(model)``),
and a copy computes what the original computes, with the kernels and with the references."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from idip.modeling import build_model

from .condinst.test_condinst_model import shapes_samples
from .condinst.test_condinst_model import tiny_cfg as condinst_cfg
from .idip.test_detector import tiny_cfg as idip_cfg


def _cfg(arch: str, use_reference: bool):
    cfg = idip_cfg() if arch == "IDIP" else condinst_cfg()
    cfg.MODEL.USE_REFERENCE_OPS = use_reference
    return cfg


def _same_outputs(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=key)


# One model with the kernels and one with the references: the switch is the same bool in both.
@pytest.mark.parametrize(("arch", "use_reference"), [("IDIP", False), ("CondInst", True)])
def test_deepcopy_pickle_and_torch_save_of_a_built_model(arch, use_reference):
    torch.manual_seed(0)
    model = build_model(_cfg(arch, use_reference)).eval()
    batch = shapes_samples(1, height=64, width=96)
    with torch.no_grad():
        want = model(batch)

    copies = {
        "deepcopy": copy.deepcopy(model),
        "pickle": pickle.loads(pickle.dumps(model)),
    }
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies["torch.save"] = torch.load(buffer, weights_only=False)
    for how, clone in copies.items():
        assert clone is not model
        assert clone.use_reference_ops is use_reference, how
        with torch.no_grad():
            _same_outputs(want, clone(batch))
        # The copy owns its parameters: changing them leaves the original alone.
        first = next(clone.parameters())
        with torch.no_grad():
            first.add_(1.0)
        assert not torch.equal(first, next(model.parameters())), how
