"""semedge.mt2st: schedules, the loss combiner's skipping, FLOP savings, checkpoints and resume."""

from __future__ import annotations

import math

import pytest

from semedge.errors import InputError
from semedge.mt2st import (
    AuxiliaryHeads,
    AuxTask,
    Constant,
    Diminish,
    MT2STLoss,
    MT2STTrainer,
    Off,
    Switch,
    TrainConfig,
    cost_savings,
    load_checkpoint,
    primary_state_dict,
    save_checkpoint,
    schedule_from_name,
)

torch = pytest.importorskip("torch")


# ---- schedules -------------------------------------------------------------------------------


def test_diminish_values_at_known_steps():
    s = Diminish(gamma0=2.0, eta=0.1, nu=2.0)
    assert s(0) == pytest.approx(2.0)
    assert s(3) == pytest.approx(2.0 * math.exp(-0.1 * 9))
    assert s(10) == pytest.approx(2.0 * math.exp(-10.0))
    assert s(5) < s(4) < s(3)


def test_diminish_zero_step_is_first_numerically_zero_step():
    s = Diminish(gamma0=1.0, eta=0.5, nu=1.0)
    t = s.zero_step(eps=1e-3)
    assert s(t) <= 1e-3 < s(t - 1)
    assert s.active(t - 1, eps=1e-3) and not s.active(t, eps=1e-3)


def test_switch_constant_off_values():
    sw = Switch(gamma0=0.5, at_step=3)
    assert [sw(t) for t in range(5)] == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert Constant(0.3)(0) == Constant(0.3)(10_000) == 0.3
    assert Off()(0) == Off()(7) == 0.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Diminish(1.0, eta=0.0, nu=1.0), "eta must be > 0"),
        (lambda: Diminish(1.0, eta=-1.0, nu=1.0), "eta must be > 0"),
        (lambda: Diminish(1.0, eta=0.1, nu=0.5), "nu must be >= 1"),
        (lambda: Diminish(-1.0, eta=0.1, nu=1.0), "gamma0 must be"),
        (lambda: Switch(1.0, at_step=-1), "at_step must be an integer >= 0"),
        (lambda: Switch(1.0, at_step=2.5), "at_step must be an integer >= 0"),
        (lambda: Constant(float("nan")), "gamma0 must be"),
        (lambda: schedule_from_name("bogus", 10), "unknown strategy"),
        (lambda: schedule_from_name("switch", 0), "steps must be > 0"),
        (lambda: TrainConfig(steps=0), "steps must be > 0"),
    ],
)
def test_invalid_schedule_parameters_raise_input_error(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_named_strategies_reach_zero_inside_the_budget():
    d = schedule_from_name("diminish", 100)
    assert d(0) == 1.0 and d.active(50) and not d.active(60) and not d.active(99)
    s = schedule_from_name("switch", 100)
    assert s.active(39) and not s.active(40)
    assert schedule_from_name("mtl", 100).active(99) and not schedule_from_name("stl", 100).active(
        0
    )


# ---- a tiny multi-task model -----------------------------------------------------------------


class TinyMultiTask(AuxiliaryHeads, torch.nn.Module):
    """Shared trunk, a primary regression head, an auxiliary classification head."""

    AUXILIARY_MODULES = ("aux_head",)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh())
        self.head = torch.nn.Linear(32, 1)
        self.aux_head = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                            torch.nn.Linear(64, 4))  # fmt: skip


def _data(n_batches: int = 4):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(16, 8, generator=g)
        y = x @ w
        out.append((x, y, (y.squeeze(1) > 0).long() + 2 * (x[:, 0] > 0).long()))
    return out


def _primary(model, batch):
    x, y, _ = batch
    h = model.trunk(x)
    return torch.nn.functional.mse_loss(model.head(h), y), h


def _aux(model, batch, h):
    return torch.nn.functional.cross_entropy(model.aux_head(h), batch[2])


def _trainer(schedule, steps=40, **cfg):
    model = TinyMultiTask()
    task = AuxTask("cls", _aux, schedule)
    config = TrainConfig(steps=steps, lr=1e-2, **cfg)
    return model, MT2STTrainer(model, _primary, [task], config)


def test_aux_loss_gets_gradients_while_weight_is_positive():
    model = TinyMultiTask()
    batch = _data(1)[0]
    combiner = MT2STLoss([AuxTask("cls", _aux, Constant(0.5))])
    loss0, h = _primary(model, batch)
    total, parts = combiner(0, loss0, model, batch, h)
    total.backward()
    grads = [p.grad for p in model.aux_head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert "cls" in parts and combiner.calls["cls"] == 1


def test_aux_task_is_not_computed_after_a_switch():
    model, trainer = _trainer(Switch(1.0, at_step=5), steps=12)
    res = trainer.fit(_data())
    assert res.aux_calls["cls"] == 5
    assert all("cls" not in h for h in res.history[5:])
    assert all(h["w_cls"] == 0.0 for h in res.history[5:])
    # after the switch the aux head gets no gradient at all (it is not in the graph)
    assert all(p.grad is None for p in model.aux_head.parameters())


@pytest.mark.parametrize(
    "schedule", [Diminish(1.0, 0.05, 1.0), Switch(1.0, 10), Constant(1.0), Off()],
    ids=["diminish", "switch", "mtl", "stl"],
)  # fmt: skip
def test_primary_loss_falls_under_each_strategy(schedule):
    _, trainer = _trainer(schedule, steps=40, measure_flops=False)
    res = trainer.fit(_data())
    first = sum(h["primary"] for h in res.history[:4]) / 4
    assert res.final_primary < 0.5 * first


def test_flops_saved_vs_multitask_for_diminish_and_switch():
    costs = {}
    for name, sched in {
        "diminish": Diminish(1.0, 2.0, 1.0), "switch": Switch(1.0, 5),
        "mtl": Constant(1.0), "stl": Off(),
    }.items():  # fmt: skip
        costs[name] = _trainer(sched, steps=20)[1].fit(_data()).cost
    assert costs["mtl"].flops > costs["stl"].flops > 0
    saved = cost_savings(costs)
    assert saved["diminish"]["flops_saved_vs_mtl"] > 0
    assert saved["switch"]["flops_saved_vs_mtl"] > 0
    assert saved["mtl"]["flops_saved_vs_mtl"] == 0
    assert costs["switch"].flops > costs["stl"].flops  # 5 steps of multi-task were paid for


def test_primary_state_dict_drops_auxiliary_heads():
    model = TinyMultiTask()
    keys = set(primary_state_dict(model))
    assert keys and not any(k.startswith("aux_head") for k in keys)
    assert {"trunk.0.weight", "head.bias"} <= keys
    assert model.export_modules() == ("trunk", "head")


# ---- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model, trainer = _trainer(Constant(1.0), steps=3, measure_flops=False)
    trainer.fit(_data())
    save_checkpoint(tmp_path / "ck", 3, trainer.params, trainer.optimizer, {"note": "x"})
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.step == 3 and ck.state["note"] == "x"
    for name, p in trainer.params.items():
        assert torch.equal(ck.params[name], p.detach())
    sd = trainer.optimizer.state_dict()
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            assert torch.equal(ck.optimizer["state"][idx][key], value)
    assert ck.optimizer["param_groups"] == sd["param_groups"]
    assert not list(tmp_path.glob(".ck.tmp-*"))


def test_resume_matches_uninterrupted_run(tmp_path):
    data = _data()
    sched = Switch(1.0, at_step=4)
    full_model, full = _trainer(sched, steps=8, measure_flops=False)
    full_res = full.fit(data)
    # interrupted: 5 steps with a checkpoint every step, then a fresh process resumes to 8
    _, first = _trainer(sched, steps=5, measure_flops=False, checkpoint_every=1)
    first.fit(data, checkpoint_dir=tmp_path / "ck")
    resumed_model, second = _trainer(sched, steps=8, measure_flops=False)
    torch.manual_seed(123)  # the RNG state must come from the checkpoint, not from here
    res = second.fit(data, checkpoint_dir=tmp_path / "ck", resume=True)
    assert [h["step"] for h in res.history] == list(range(8))
    resumed = resumed_model.state_dict()
    for name, a in full_model.state_dict().items():
        assert torch.equal(a, resumed[name]), name
    assert res.aux_calls == full_res.aux_calls == {"cls": 4}
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full_res.history]
