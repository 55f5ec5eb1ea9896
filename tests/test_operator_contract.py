"""The operator contract (models/operator.py), checked for every registered operator in 1D and 2D.

A new `@MODELS.register` operator joins these tests automatically. `Pointwise1D` below is the
smallest operator the contract allows (forward only, 1D only, non-latent, with dropout): it covers
the base class's non-latent path and the refusal of an undeclared grid dimension.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ttclab.data.datasets import Normalizer
from ttclab.errors import UserError
from ttclab.models import MODELS, Operator, OperatorError, Perturbation, checkpoint, make_model, make_operator
from ttclab.models import operator_names
from ttclab.models.trc import TRCModelConfig
from ttclab.stages import Context
from ttclab.tracking.store import Tracker
from ttclab.sampling import SamplingConfig, candidates, perturbation

# Registered models that are not operators, with the reason.
CONTROLLERS = {"trc": "maps a control problem to a control sequence, not a state to the next state"}
LOCAL = "pointwise1d"
GRIDS = {1: (24,), 2: (12, 10)}
N_FIELDS = 3
KINDS = {
    "mc_dropout": Perturbation(dropout=True),
    "latent_noise": Perturbation(latent_sigma=0.1),
    "input_perturb": Perturbation(input_eps=0.05),
    "all": Perturbation(dropout=True, latent_sigma=0.1, input_eps=0.05),
}


@dataclasses.dataclass
class PointwiseConfig:
    type: str = LOCAL
    width: int = 16
    dropout: float = 0.0


class Pointwise1D(Operator):
    Config, ndims = PointwiseConfig, (1,)

    def __init__(self, cfg: PointwiseConfig, n_fields: int, ndim: int):
        super().__init__(n_fields, ndim)
        self.cfg, self.dropout_rate = cfg, cfg.dropout
        self.net = nn.Sequential(nn.Conv1d(n_fields, cfg.width, 3, padding=1, padding_mode="circular"), nn.GELU(),
                                 nn.Conv1d(cfg.width, n_fields, 1))

    def forward(self, u):
        return u + self.drop(self.net(u))


def operator_class(name: str) -> type[Operator]:
    return Pointwise1D if name == LOCAL else MODELS.get(name)


def build(name: str, ndim: int, dropout: float = 0.2) -> Operator:
    """Default config of the type; dropout switched on where the config has it."""
    torch.manual_seed(0)
    cfg = operator_class(name).Config()
    if "dropout" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, dropout=dropout)
    return operator_class(name)(cfg, n_fields=N_FIELDS, ndim=ndim).eval()


CASES = [(name, ndim) for name in [*operator_names(), LOCAL] for ndim in (1, 2)]


@pytest.fixture(params=CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def case(request):
    name, ndim = request.param
    cls = operator_class(name)
    if ndim not in cls.ndims:
        with pytest.raises(OperatorError, match=f"not {ndim}D; choose another model.type"):
            build(name, ndim)
        pytest.skip(f"{name} declares ndims={cls.ndims} and refuses {ndim}D (checked)")
    u = torch.randn(2, N_FIELDS, *GRIDS[ndim], generator=torch.Generator().manual_seed(1))
    return build(name, ndim), u


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_registered_model_is_an_operator_or_a_declared_controller():
    assert "fno" in operator_names()
    assert set(MODELS.names()) == set(operator_names()) | set(CONTROLLERS)
    assert not set(operator_names()) & set(CONTROLLERS)


def test_shapes_and_declared_capabilities(case):
    model, u = case
    out = model(u)
    assert out.shape == u.shape and torch.isfinite(out).all()
    assert model.sample_next(u, 5).shape == (2, 5, *u.shape[1:])
    assert isinstance(model.latent, bool) and 0 <= model.dropout_rate < 1
    if model.latent:  # forward is the composition of the latent hooks
        torch.testing.assert_close(model.decode(model.step(model.encode(u)), u), out, rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 4])
def test_no_perturbation_gives_n_copies_of_forward(case, n):
    model, u = case
    first = model(u)
    assert torch.equal(model(u), first)
    cands = model.sample_next(u, n, Perturbation(), gen(0))
    if n == 1:  # the same batch through the same network: bit-identical (greedy N=1 == plain rollout)
        assert torch.equal(cands[:, 0], first)
    for k in range(n):
        torch.testing.assert_close(cands[:, k], first, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
def test_noise_gives_distinct_seeded_candidates(case, kind):
    model, u = case
    noise, before = KINDS[kind], u.clone()
    if (noise.latent_sigma > 0 and not model.latent) or (noise.dropout and model.dropout_rate == 0):
        with pytest.raises(OperatorError, match="sampling.sampler"):
            model.sample_next(u, 5, noise, gen(7))
        return
    cands = model.sample_next(u, 5, noise, gen(7))
    assert cands.shape == (2, 5, *u.shape[1:]) and torch.isfinite(cands).all()
    flat = cands.flatten(2)
    gaps = torch.cdist(flat, flat)[:, ~torch.eye(5, dtype=torch.bool)]  # pairwise, off-diagonal
    assert (gaps > 1e-4).all()
    assert torch.equal(model.sample_next(u, 5, noise, gen(7)), cands)
    assert not torch.allclose(model.sample_next(u, 5, noise, gen(8)), cands)
    one = model.sample_next(u, 1, noise, gen(7))
    assert one.shape == (2, 1, *u.shape[1:]) and not torch.allclose(one[:, 0], model(u))
    assert not model.training and torch.equal(u, before)  # no mode flip, no in-place change
    assert not model._mc  # MC-dropout is off again after sampling


@pytest.mark.parametrize("kind", ["latent_noise", "input_perturb"])
def test_gaussian_noise_enters_where_the_contract_says(case, kind):
    """input_eps: the network reads u + eps z; latent_sigma: h = encode(u) + sigma z before step.
    A latent operator advances the clean u in decode; z comes from the generator in that order."""
    model, u = case
    noise = KINDS[kind]
    if noise.latent_sigma > 0 and not model.latent:
        pytest.skip("non-latent operator (refusal checked above)")
    g = gen(3)
    seen = u + noise.input_eps * torch.randn(u.shape, generator=g) if noise.input_eps > 0 else u
    if model.latent:
        h = model.encode(seen)
        h = h + noise.latent_sigma * torch.randn(h.shape, generator=g) if noise.latent_sigma > 0 else h
        want = model.decode(model.step(h), u)
    else:
        want = model(seen)
    torch.testing.assert_close(model.sample_next(u, 1, noise, gen(3))[:, 0], want, rtol=0, atol=1e-6)


def test_sampling_config_builds_the_contract_perturbation():
    cfg = SamplingConfig(sampler="latent_noise+input_perturb", latent_sigma=0.1, input_eps=0.2)
    assert perturbation(cfg) == Perturbation(dropout=False, latent_sigma=0.1, input_eps=0.2)
    assert perturbation(SamplingConfig(sampler="mc_dropout")) == Perturbation(dropout=True)


def test_mc_dropout_on_an_operator_without_dropout_is_a_user_error():
    model = build("fno", 1, dropout=0.0)
    u = torch.randn(2, N_FIELDS, 24)
    with pytest.raises(UserError, match="sampling.sampler mc_dropout needs an operator with dropout"):
        candidates(model, u, 3, SamplingConfig(sampler="mc_dropout"), gen(0))


def test_a_controller_is_refused_where_an_operator_is_needed(tmp_path):
    with pytest.raises(OperatorError, match="model.type 'trc' is not an operator; use one of fno"):
        make_operator(TRCModelConfig(), n_fields=N_FIELDS, ndim=1)
    path = checkpoint.save(tmp_path / "op.pt", problem_cfg={"type": "euler1d"}, model_cfg={"type": "trc"},
                           normalizer=Normalizer(torch.zeros(3), torch.ones(3)), model=build("fno", 1))
    with pytest.raises(checkpoint.CheckpointError, match="op.pt: stored config is invalid .*not an operator"):
        checkpoint.load_operator(path)


def test_a_new_operator_needs_only_its_registration(isolated_tracking, tiny_project, monkeypatch):
    """Registered under a new model.type, the forward-only operator goes through generate -> train
    -> ttc (input noise + MC-dropout candidates) and comes back from its checkpoint as itself."""
    monkeypatch.setitem(MODELS._items, LOCAL, Pointwise1D)
    cfg = tiny_project("euler1d")
    cfg = dataclasses.replace(cfg, model=PointwiseConfig(dropout=0.1),
                              sampling=dataclasses.replace(cfg.sampling, sampler="input_perturb+mc_dropout"))
    ctx = Context(Tracker(isolated_tracking), progress=False)
    _, out = ctx.run("ttc", cfg)
    assert torch.isfinite(torch.tensor(out["rollout_mse/h1"])) and out["cost/model_evals"] > 0
    train_run = ctx.upstream("train", cfg)
    model, _, _ = checkpoint.load_operator(ctx.tracker.artifact_dir(train_run) / "model" / "operator.pt")
    assert isinstance(model, Pointwise1D) and model.dropout_rate == 0.1
