"""Control problems for the tiny recursive controller: differentiable torch dynamics and teachers."""

from . import double_integrator, vanderpol  # noqa: F401  (registration)
from .base import SPLITS, ControlConfig, ControlProblem  # noqa: F401
