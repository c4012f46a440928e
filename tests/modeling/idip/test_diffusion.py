"""IDIP's diffusion utilities: schedule, batched training corruption and the DDIM sampler."""

import math

import pytest
import torch

from idip.modeling.idip.diffusion import (
    DDIMSampler,
    DiffusionSchedule,
    cosine_beta_schedule,
    prepare_diffusion_targets,
)
from idip.ops import reference as ref

from ...conftest import DEVICES

SCHEDULE = DiffusionSchedule(1000)


def _cxcywh(b):
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def _random_gt(counts, sizes, gen):
    out = []
    for g, (w, h) in zip(counts, sizes):
        xy = torch.rand(g, 2, generator=gen) * torch.tensor([w, h]) * 0.7
        wh = torch.rand(g, 2, generator=gen) * torch.tensor([w, h]) * 0.3 + 1
        out.append(torch.cat([xy, xy + wh], dim=1))
    return out


def _image_size(sizes, device="cpu"):
    return torch.tensor([[w, h, w, h] for w, h in sizes], dtype=torch.float32, device=device)


# ---- schedule ----------------------------------------------------------------------------------


def test_cosine_beta_schedule_hand_values():
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T, s)
    assert betas.dtype == torch.float64 and betas.shape == (T,)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 1, 500, 998):
        assert betas[t].item() == pytest.approx(1 - f(t + 1) / f(t), rel=1e-9)
    assert betas[-1].item() == 0.999  # 1 - f(T)/f(T-1) = 1 - ~0 is clipped
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (betas[1:] >= betas[:-1]).all()


def test_schedule_alphas_cumprod():
    ac = SCHEDULE.alphas_cumprod
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    torch.testing.assert_close(ac, torch.cumprod(1 - cosine_beta_schedule(1000), 0))
    # alphas_cumprod[t] = f(t+1)/f(0) while beta is not clipped
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert ac[0].item() == pytest.approx(f(1) / f(0), rel=1e-12)
    assert ac[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert SCHEDULE.alphas_cumprod_host == ac.tolist()
    assert "alphas_cumprod" not in SCHEDULE.state_dict()


def test_schedule_stays_float64_under_dtype_casts():
    schedule = DiffusionSchedule(1000).to(torch.float16)
    assert schedule.alphas_cumprod.dtype == torch.float64 and schedule.betas.dtype == torch.float64
    torch.testing.assert_close(schedule.alphas_cumprod, SCHEDULE.alphas_cumprod, rtol=0, atol=0)
    assert schedule.alphas_cumprod[-1].item() > 0


# ---- training corruption -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_prepare_targets_gt_rows_placeholders_and_noising(device):
    counts, sizes = [3, 0, 7, 5], [(640, 480), (800, 600), (333, 517), (1216, 800)]
    gen = torch.Generator().manual_seed(0)
    gts = [g.to(device) for g in _random_gt(counts, sizes, gen)]
    size = _image_size(sizes, device)
    N = 10
    g = torch.Generator(device=device).manual_seed(123)
    out = prepare_diffusion_targets(gts, size, N, SCHEDULE.to(device), generator=g)
    B = len(counts)
    for key in ("boxes", "x_t", "x_start", "noise"):
        assert out[key].shape == (B, N, 4) and out[key].dtype == torch.float32, key
    assert out["t"].shape == (B,) and out["t"].dtype == torch.int64
    assert ((out["t"] >= 0) & (out["t"] < 1000)).all()
    assert out["num_gt_in_x_start"] == [3, 0, 7, 5]

    # The documented draw order: t, placeholders, (subsets), noise.
    g2 = torch.Generator(device=device).manual_seed(123)
    t = torch.randint(0, 1000, (B,), generator=g2, device=device)
    placeholder_noise = torch.randn(B, N, 4, generator=g2, device=device)
    noise = torch.randn(B, N, 4, generator=g2, device=device)
    torch.testing.assert_close(out["t"], t)
    torch.testing.assert_close(out["noise"], noise)
    # IDIP's placeholders: cxcywh(to_abs(randn)) in the unit image.
    placeholders = (
        _cxcywh(ref.box_to_abs(placeholder_noise, torch.ones(B, 4, device=device))) * 2 - 1
    )
    for b, (count, (w, h)) in enumerate(zip(counts, sizes)):
        wh = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        gt_norm = _cxcywh(gts[b] / wh)
        torch.testing.assert_close(out["gt_cxcywh"][b], gt_norm)
        torch.testing.assert_close(out["x_start"][b, :count], gt_norm * 2 - 1)
        torch.testing.assert_close(out["x_start"][b, count:], placeholders[b, count:])
    a = SCHEDULE.alphas_cumprod.to(device)[t].float()[:, None, None]
    x_t = a.sqrt() * out["x_start"] + (1 - a).sqrt() * noise
    torch.testing.assert_close(out["x_t"], x_t)
    torch.testing.assert_close(out["boxes"], ref.box_to_abs(x_t, size), rtol=1e-5, atol=1e-3)
    boxes = out["boxes"]
    assert (boxes >= 0).all() and (boxes <= size[:, None]).all()
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    SCHEDULE.to("cpu")


def test_prepare_targets_more_gt_than_proposals_uses_a_deterministic_random_subset():
    counts, sizes = [25, 4, 40], [(640, 480), (500, 500), (900, 700)]
    gts = _random_gt(counts, sizes, torch.Generator().manual_seed(1))
    size = _image_size(sizes)
    N = 12

    def run(seed):
        return prepare_diffusion_targets(
            gts, size, N, SCHEDULE, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(7), run(7), run(8)
    for key in ("boxes", "x_t", "x_start", "noise", "t"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert a["num_gt_in_x_start"] == [12, 4, 12]
    for img in (0, 2):
        gt_signal = _cxcywh(gts[img] / size[img]) * 2 - 1
        # every row of x_start is a distinct GT box, in the GT's original order
        match = (a["x_start"][img][:, None, :] - gt_signal[None]).abs().amax(-1) < 1e-6
        assert (match.sum(1) == 1).all()
        idx = match.float().argmax(1)
        assert (idx[1:] > idx[:-1]).all()
        # the loss targets keep all GT boxes
        assert a["gt_cxcywh"][img].shape == (counts[img], 4)
    assert not torch.equal(a["x_start"][0], c["x_start"][0]) or not torch.equal(
        a["x_start"][2], c["x_start"][2]
    )


def test_prepare_targets_zero_gt_and_exactly_n():
    sizes = [(640, 480), (320, 240)]
    gts = [torch.zeros(0, 4), _random_gt([6], [sizes[1]], torch.Generator().manual_seed(2))[0]]
    size = _image_size(sizes)
    out = prepare_diffusion_targets(
        gts, size, 6, SCHEDULE, generator=torch.Generator().manual_seed(0)
    )
    assert out["gt_cxcywh"][0].shape == (0, 4)
    torch.testing.assert_close(out["x_start"][1], _cxcywh(gts[1] / size[1]) * 2 - 1)
    # all-placeholder image: non-empty boxes inside the unit image (the 1e-4 minimum size is
    # applied before clipping, so a box at the border can end up thinner)
    x0 = (out["x_start"][0] + 1) / 2
    assert (x0[:, 2:] > 0).all()
    assert (x0[:, :2] - x0[:, 2:] / 2 >= -1e-6).all() and (
        x0[:, :2] + x0[:, 2:] / 2 <= 1 + 1e-6
    ).all()
    # a batch without any GT
    out = prepare_diffusion_targets([torch.zeros(0, 4)] * 2, size, 5, SCHEDULE)
    assert out["boxes"].shape == (2, 5, 4) and out["num_gt_in_x_start"] == [0, 0]


def test_prepare_targets_kernels_match_reference_ops():
    counts, sizes = [3, 0, 40, 17], [(640, 480), (800, 600), (333, 517), (1216, 800)]
    gts = _random_gt(counts, sizes, torch.Generator().manual_seed(4))
    size = _image_size(sizes)
    ours = prepare_diffusion_targets(gts, size, 20, SCHEDULE, torch.Generator().manual_seed(3))
    refd = prepare_diffusion_targets(
        gts, size, 20, SCHEDULE, torch.Generator().manual_seed(3), use_reference_ops=True
    )
    for key in ("boxes", "x_t", "x_start", "noise", "t"):
        torch.testing.assert_close(ours[key], refd[key], rtol=1e-5, atol=1e-3)


def test_prepare_targets_rejects_bad_input():
    size = _image_size([(640, 480)])
    with pytest.raises(ValueError, match="got 2 gt_boxes tensors for 1 images"):
        prepare_diffusion_targets([torch.zeros(0, 4)] * 2, size, 5, SCHEDULE)
    with pytest.raises(ValueError, match=r"gt_boxes\[0\] must be \[G, 4\]"):
        prepare_diffusion_targets([torch.zeros(3, 5)], size, 5, SCHEDULE)
    with pytest.raises(ValueError, match="image_size must be"):
        prepare_diffusion_targets([torch.zeros(0, 4)], torch.ones(1, 2), 5, SCHEDULE)
    with pytest.raises(ValueError, match="num_proposals must be >= 1"):
        prepare_diffusion_targets([torch.zeros(0, 4)], size, 0, SCHEDULE)


# ---- DDIM sampler ------------------------------------------------------------------------------


class FakeHead:
    """A small deterministic head: scores and boxes are smooth functions of its inputs."""

    def __init__(self, num_classes=3):
        self.num_classes = num_classes
        self.calls = []

    def __call__(self, boxes, t):
        self.calls.append((boxes.clone(), t.clone()))
        k = torch.arange(self.num_classes, device=boxes.device, dtype=boxes.dtype)
        logits = 3 * torch.sin(boxes.sum(-1, keepdim=True) / 97 + k + t[:, None, None] / 100)
        pred = (
            boxes * 0.9
            + torch.tensor([5.0, 4.0, 30.0, 20.0], device=boxes.device)
            + t[:, None, None] / 50
        )
        return logits, pred, {"step": len(self.calls)}


def test_sampler_time_pairs():
    assert DDIMSampler(SCHEDULE, 1).time_pairs == [(999, -1)]
    assert DDIMSampler(SCHEDULE, 3).time_pairs == [(999, 665), (665, 332), (332, -1)]
    assert DDIMSampler(SCHEDULE, 4).time_pairs == [(999, 749), (749, 499), (499, 249), (249, -1)]


@pytest.mark.parametrize(
    "num_steps,eta,renewal", [(1, 1.0, True), (3, 1.0, True), (4, 0.0, True), (3, 1.0, False)]
)
def test_sampler_matches_an_independent_per_image_loop(num_steps, eta, renewal):
    sizes = [(640, 480), (800, 600), (333, 517)]
    size = _image_size(sizes)
    B, N = 3, 40
    head = FakeHead()
    sampler = DDIMSampler(SCHEDULE, num_steps=num_steps, eta=eta, box_renewal=renewal)
    out = sampler.sample(head, size, N, generator=torch.Generator().manual_seed(5))
    assert len(head.calls) == num_steps
    assert out[2] == {"step": num_steps}  # the last head output is returned as is

    # Oracle: the IDIP/DiffusionDet loop, one image at a time, with the sampler's draw order.
    g = torch.Generator().manual_seed(5)
    ac = SCHEDULE.alphas_cumprod.tolist()
    x = torch.randn(B, N, 4, generator=g)
    boxes = ref.box_to_abs(x, size)
    times = torch.linspace(-1, 999, num_steps + 1).long().flip(0).tolist()
    oracle = FakeHead()
    for t_now, t_next in zip(times[:-1], times[1:]):
        logits, pred, _ = oracle(boxes, torch.full((B,), t_now))
        if t_next < 0:
            break
        noise, renew = torch.randn(2, B, N, 4, generator=g)
        a, an = ac[t_now], ac[t_next]
        sigma = eta * math.sqrt((1 - a / an) * (1 - an) / (1 - a))  # DiffusionDet's form
        c = math.sqrt(1 - an - sigma**2)
        new_x = []
        for b in range(B):
            x0 = (_cxcywh(pred[b] / size[b])).clamp(0, 1) * 2 - 1
            eps = (x[b] - math.sqrt(a) * x0) / math.sqrt(1 - a)
            keep = (
                torch.sigmoid(logits[b]).max(-1).values > 0.5
                if renewal
                else torch.ones(N, dtype=torch.bool)
            )
            xb = x0[keep] * math.sqrt(an) + c * eps[keep] + sigma * noise[b][keep]
            new_x.append(torch.cat([xb, renew[b, : N - len(xb)]]))
        x = torch.stack(new_x)
        boxes = ref.box_to_abs(x, size)
    for (got_boxes, got_t), (exp_boxes, exp_t) in zip(head.calls, oracle.calls):
        assert torch.equal(got_t, exp_t)
        torch.testing.assert_close(got_boxes, exp_boxes, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(
        out[0], oracle(boxes, torch.full((B,), times[-2]))[0], rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_is_deterministic_given_a_generator(device):
    size = _image_size([(640, 480), (1216, 800)], device)
    sampler = DDIMSampler(SCHEDULE, num_steps=3)

    def run(seed):
        head = FakeHead()
        out = sampler.sample(
            head, size, 50, generator=torch.Generator(device=device).manual_seed(seed)
        )
        return out, head

    (a, ha), (b, hb), (c, _) = run(1), run(1), run(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(ha.calls, hb.calls))
    assert not torch.equal(a[1], c[1])


def test_sampler_renewal_happens_and_reference_ops_agree():
    size = _image_size([(640, 480)] * 2)
    head = FakeHead()
    out = DDIMSampler(SCHEDULE, 3).sample(head, size, 64, torch.Generator().manual_seed(0))
    head_ref = FakeHead()
    out_ref = DDIMSampler(SCHEDULE, 3, use_reference_ops=True).sample(
        head_ref, size, 64, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out[1], out_ref[1], rtol=1e-4, atol=1e-2)
    first_logits = FakeHead()(head.calls[0][0], head.calls[0][1])[0]
    kept = (first_logits.sigmoid().amax(-1) > 0.5).sum(1)
    assert (kept > 0).all() and (kept < 64).all()  # the fake head exercises renewal


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_steps must be in"):
        DDIMSampler(SCHEDULE, num_steps=0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        DDIMSampler(SCHEDULE, eta=-0.5)
    with pytest.raises(ValueError, match="image_size must be"):
        DDIMSampler(SCHEDULE).sample(FakeHead(), torch.ones(2, 3), 10)
