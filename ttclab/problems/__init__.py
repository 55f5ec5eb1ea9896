"""Physical systems: fields, grid, boundary conditions, conserved quantities and reference solvers."""

from ..registry import Registry
from .base import PDEProblem

PROBLEMS: Registry = Registry("problem")


def make_problem(cfg):
    """Instantiate the problem a config dataclass describes (its `type` names the registry entry)."""
    return PROBLEMS.get(cfg.type)(cfg)


def physics_tags(cfg) -> dict[str, str]:
    """`physics.<key>` run tags: the physics a problem config means, defaults resolved (an unset gamma
    shows as the 1.4 it stands for), so every run records what it computed with; {} for problems
    without PDE physics (control)."""
    problem = make_problem(cfg)
    if not isinstance(problem, PDEProblem):
        return {}
    return {f"physics.{k}": str(v) for k, v in problem.physics().items()}


from . import burgers, control, euler  # noqa: E402,F401  (registration)
