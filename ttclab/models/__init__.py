"""Learned components: operators (the `Operator` contract in operator.py; fno), the PRM scorer and
the TRC controller. MODELS holds every `model.type`; `operator_names()` the ones that are operators."""

from ..registry import Registry
from .operator import Operator, OperatorError, Perturbation  # noqa: F401  (the contract)

MODELS: Registry = Registry("model")


def make_model(cfg, **dims):
    """Instantiate the model a config dataclass describes (its `type` names the registry entry)."""
    return MODELS.get(cfg.type)(cfg, **dims)


def operator_names() -> list[str]:
    """Registered model types that implement the operator contract (the rest are controllers)."""
    return [name for name in MODELS.names() if issubclass(MODELS.get(name), Operator)]


def make_operator(cfg, n_fields: int, ndim: int) -> Operator:
    """make_model for the simulator slot: a model.type that is not an operator (a controller) is refused."""
    if not issubclass(MODELS.get(cfg.type), Operator):
        raise OperatorError(f"model.type {cfg.type!r} is not an operator; use one of {', '.join(operator_names())}")
    return make_model(cfg, n_fields=n_fields, ndim=ndim)


from . import fno, trc, upt  # noqa: E402,F401  (registration)
