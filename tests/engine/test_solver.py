"""Learning-rate schedule values, linear batch scaling and the weight-decay parameter groups."""

import math

import pytest
import torch
from torch import nn

from detkit.engine.solver import (
    WarmupSchedule,
    build_optimizer,
    clip_and_step,
    param_groups,
    scaled_base_lr,
)


def schedule(**kw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    args = dict(
        base_lr=0.02,
        max_iter=100,
        schedule="multistep",
        steps=[60, 80],
        gamma=0.1,
        warmup_iters=10,
        warmup_factor=0.001,
    )
    args.update(kw)
    return WarmupSchedule(opt, **args), opt


def test_warmup_is_linear_from_factor_to_one():
    s, _ = schedule()
    assert s.lr_at(0) == pytest.approx(0.02 * 0.001)
    assert s.lr_at(5) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert s.lr_at(10) == pytest.approx(0.02)


def test_multistep_drops_at_each_step():
    s, opt = schedule()
    assert s.lr_at(59) == pytest.approx(0.02)
    assert s.lr_at(60) == pytest.approx(0.002)
    assert s.lr_at(79) == pytest.approx(0.002)
    assert s.lr_at(80) == pytest.approx(0.0002)
    assert s.step(80) == pytest.approx(0.0002)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0002)


def test_cosine_goes_from_base_to_zero():
    s, _ = schedule(schedule="cosine", warmup_iters=0)
    assert s.lr_at(0) == pytest.approx(0.02)
    assert s.lr_at(50) == pytest.approx(0.01)
    assert s.lr_at(25) == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.lr_at(100) == pytest.approx(0.0, abs=1e-12)


def test_cosine_with_warmup_multiplies():
    s, _ = schedule(schedule="cosine", warmup_iters=10, warmup_factor=0.1)
    assert s.lr_at(0) == pytest.approx(0.02 * 0.1)
    assert s.lr_at(5) == pytest.approx(0.02 * 0.55 * 0.5 * (1 + math.cos(math.pi * 5 / 100)))


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="lr_schedule"):
        schedule(schedule="poly")
    with pytest.raises(ValueError, match="solver.steps"):
        schedule(steps=[80, 60])
    with pytest.raises(ValueError, match="solver.steps"):
        schedule(steps=[150])


def test_linear_batch_scaling(caplog):
    assert scaled_base_lr(0.02, 16, 16) == 0.02
    with caplog.at_level("INFO", logger="detkit"):
        assert scaled_base_lr(0.02, 4, 16) == pytest.approx(0.005)
    assert "scaled linearly to 0.005" in caplog.text
    assert scaled_base_lr(0.02, 64, 16) == pytest.approx(0.08)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # weight decays, bias does not
        self.gn = nn.GroupNorm(2, 8)  # no decay on either
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_no_decay_on_norm_and_bias():
    net = Net()
    groups = param_groups(net, weight_decay=1e-4, weight_decay_norm=0.0)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(net.conv.weight), id(net.fc.weight)}
    assert no_decay == {
        id(net.conv.bias),
        id(net.gn.weight),
        id(net.gn.bias),
        id(net.bn.weight),
        id(net.bn.bias),
    }
    assert not ({id(p) for p in net.frozen.parameters()} & (decay | no_decay))


def test_optimizer_uses_the_groups():
    opt = build_optimizer(
        Net(), base_lr=0.1, momentum=0.9, weight_decay=1e-4, weight_decay_norm=1e-5
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-5]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)


def test_adamw_decays_decoupled_and_only_the_decay_group():
    net = Net()
    opt = build_optimizer(
        net,
        base_lr=0.01,
        momentum=0.9,
        weight_decay=0.05,
        weight_decay_norm=0.0,
        optimizer="AdamW",
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"]  # the one-pass kernel on CPU (4-5x faster than the default)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # a zero gradient moves nothing but the decay group, which shrinks by exactly lr * wd (an L2
    # penalty added to the gradient would instead move it by ~lr after Adam's normalisation)
    torch.testing.assert_close(net.conv.weight, before["conv.weight"] * (1 - 0.01 * 0.05))
    torch.testing.assert_close(net.fc.weight, before["fc.weight"] * (1 - 0.01 * 0.05))
    for name in ("conv.bias", "gn.weight", "gn.bias", "bn.weight", "bn.bias"):
        assert torch.equal(dict(net.named_parameters())[name], before[name]), name


def test_unknown_optimizer_is_rejected():
    from detkit.config import load_config
    from detkit.engine.solver import check_solver
    from detkit.errors import ConfigError

    with pytest.raises(ValueError, match="solver.optimizer must be one of SGD, AdamW; got 'Adam'"):
        build_optimizer(
            Net(), base_lr=0.1, momentum=0.9, weight_decay=0, weight_decay_norm=0, optimizer="Adam"
        )
    check_solver(load_config(None, ["solver.optimizer=AdamW"]))
    with pytest.raises(
        ConfigError,
        match=r"'solver.optimizer' \(command line\): expected SGD \| AdamW, got 'adam'",
    ):
        load_config(None, ["solver.optimizer=adam"])


def test_solver_values_are_checked_as_config_errors():
    from detkit.config import load_config
    from detkit.engine.solver import check_solver
    from detkit.errors import ConfigError

    check_solver(load_config(None))  # the defaults are valid
    for override in ("solver.amp_dtype=fp32", "solver.accumulate=0"):  # refused at load
        with pytest.raises(ConfigError, match=r"\(command line\): expected "):
            load_config(None, [override])
    bad = load_config(None, ["solver.steps=[95000]"])
    with pytest.raises(ConfigError) as info:
        check_solver(bad)
    message = str(info.value)
    for part in ("solver.steps must be increasing", "(set in command line)"):
        assert part in message


def test_rescale_ends_the_schedule_at_its_final_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cos = WarmupSchedule(opt, base_lr=1.0, max_iter=600, schedule="cosine", warmup_iters=100)
    cos.rescale(300)
    assert cos.max_iter == 300 and cos.lr_at(300) == pytest.approx(0.0, abs=1e-12)
    assert cos.lr_at(150) == pytest.approx(0.5)
    step = WarmupSchedule(opt, base_lr=1.0, max_iter=100, steps=[60, 80], gamma=0.1)
    step.rescale(10)
    assert step.steps == [6, 8] and step.lr_at(10) == pytest.approx(0.01)
    step.rescale(1)  # steps stay within (0, max_iter]
    assert step.steps == [1, 1] and step.lr_at(1) == pytest.approx(0.01)


def test_negative_time_budget_is_a_config_error():
    from detkit.config import load_config
    from detkit.engine.solver import check_solver
    from detkit.errors import ConfigError

    assert load_config(None).solver.max_time_minutes == 0.0
    check_solver(load_config(None, ["solver.max_time_minutes=7"]))  # an int is a float
    with pytest.raises(ConfigError, match="'solver.max_time_minutes' .*expected a number >= 0"):
        load_config(None, ["solver.max_time_minutes=-1"])


def _one_parameter_step(grad, clip):
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor(grad)
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return w, clip_and_step(opt, scaler, clip)


def test_clip_and_step_clips_to_the_total_norm():
    # gradient (3, 4) has norm 5; clipped to norm 1: (0.6, 0.8); one SGD step of lr 1 from (3, 4)
    w, stepped = _one_parameter_step([3.0, 4.0], clip=1.0)
    assert stepped and w.grad is None
    assert w.detach().tolist() == pytest.approx([2.4, 3.2], abs=1e-5)
    # no clipping: the whole gradient
    w, stepped = _one_parameter_step([3.0, 4.0], clip=0.0)
    assert stepped and w.detach().tolist() == [0.0, 0.0]


def test_clip_and_step_refuses_a_non_finite_norm():
    w, stepped = _one_parameter_step([float("nan"), 1.0], clip=1.0)
    assert not stepped and w.detach().tolist() == [3.0, 4.0]
