"""Learned components: the FNO operator (and, with later stages, PRM scorer and TRC controller)."""

from ..registry import Registry

MODELS: Registry = Registry("model")


def make_model(cfg, **dims):
    """Instantiate the model a config dataclass describes (its `type` names the registry entry)."""
    return MODELS.get(cfg.type)(cfg, **dims)


from . import fno, trc  # noqa: E402,F401  (registration)
