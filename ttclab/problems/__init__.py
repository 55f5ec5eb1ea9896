"""Physical systems: fields, grid, boundary conditions, conserved quantities and reference solvers."""

from ..registry import Registry

PROBLEMS: Registry = Registry("problem")


def make_problem(cfg):
    """Instantiate the problem a config dataclass describes (its `type` names the registry entry)."""
    return PROBLEMS.get(cfg.type)(cfg)


from . import burgers, control, euler  # noqa: E402,F401  (registration)
