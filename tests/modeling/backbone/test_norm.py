"""FrozenBatchNorm2d against nn.BatchNorm2d, conversion, and the get_norm factory."""

import pytest
import torch
from torch import nn

from idip.modeling.backbone import FrozenBatchNorm2d, get_norm


def _random_bn(channels: int, generator: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.1)
    return bn


def test_frozen_bn_equals_batchnorm_in_eval_mode():
    g = torch.Generator().manual_seed(0)
    bn = _random_bn(6, g).eval()
    frozen = FrozenBatchNorm2d(6).double()
    frozen.load_state_dict(bn.state_dict())  # includes num_batches_tracked, which is dropped
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn(x))
    # Training mode changes nothing for the frozen layer.
    frozen.train()
    torch.testing.assert_close(frozen(x), bn(x))


def test_frozen_bn_default_is_identity_and_has_no_parameters():
    frozen = FrozenBatchNorm2d(4)
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(frozen(x), x)
    assert list(frozen.parameters()) == []
    assert sorted(frozen.state_dict()) == ["bias", "running_mean", "running_var", "weight"]


def test_convert_frozen_batchnorm_replaces_nested_layers_and_keeps_outputs():
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3).double(), _random_bn(4, g), nn.Sequential(nn.ReLU(), _random_bn(4, g))
    )
    model.eval()
    x = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    expected = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[2][1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected)


def test_get_norm_names():
    assert isinstance(get_norm("FrozenBN", 64), FrozenBatchNorm2d)
    assert type(get_norm("BN", 64)) is nn.BatchNorm2d
    assert isinstance(get_norm("SyncBN", 64), nn.SyncBatchNorm)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32 and gn.num_channels == 64
    assert get_norm("", 64) is None


def test_get_norm_errors_name_the_problem():
    with pytest.raises(ValueError, match="'LN'"):
        get_norm("LN", 64)
    with pytest.raises(ValueError, match="channels=48"):
        get_norm("GN", 48)
