"""Plotly figures of the recursive controller, as HTML that loads the run's figures/plotly.min.js
(so an MLflow artifact opens offline)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS
from plotly.subplots import make_subplots

from .figures import to_html


def refinement_figure(cost_mean, improvement, control_mse, total_improvement, example_costs, title: str) -> str:
    """cost_mean, control_mse (K+1,), improvement (K,), total_improvement (B,), example_costs
    (E, K+1) -> the 4-panel refinement figure."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "cost per refinement iteration", "mean improvement per iteration (c[k-1] - c[k])",
        "control MSE to the teacher", "total improvement c[0] - c[K] per problem"))
    iters = np.arange(len(cost_mean))
    for i, ex in enumerate(np.asarray(example_costs)):
        fig.add_trace(go.Scatter(x=iters, y=ex, mode="lines", line=dict(width=1, color="lightgray"),
                                 name="examples", legendgroup="ex", showlegend=i == 0), 1, 1)
    fig.add_trace(go.Scatter(x=iters, y=cost_mean, mode="lines+markers", name="mean cost"), 1, 1)
    fig.add_trace(go.Bar(x=iters[1:], y=improvement, name="improvement"), 1, 2)
    fig.add_trace(go.Scatter(x=iters, y=control_mse, mode="lines+markers", name="control MSE"), 2, 1)
    fig.add_trace(go.Histogram(x=np.asarray(total_improvement), nbinsx=50, name="total improvement"), 2, 2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    for col, row in ((1, 1), (2, 1), (1, 2)):
        fig.update_xaxes(title_text="iteration k", dtick=1, row=row, col=col)
    fig.update_layout(title=title, height=750, bargap=0.1)
    return to_html(fig)


def trajectory_figure(dt: float, model_traj, teacher_traj, model_u, teacher_u, targets, title: str) -> str:
    """model_traj, teacher_traj (E, T+1, 2), model_u, teacher_u (E, T, 1), targets (E, 2) ->
    phase portraits and control signals of E example problems, controller solid, teacher dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("state trajectories (x1, x2)", "controls u(t)"))
    steps = np.arange(model_u.shape[1] + 1) * dt
    for i in range(len(model_traj)):
        color = DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]
        group = f"problem {i}"
        fig.add_trace(go.Scatter(x=model_traj[i, :, 0], y=model_traj[i, :, 1], mode="lines", line=dict(color=color),
                                 name=group, legendgroup=group), 1, 1)
        fig.add_trace(go.Scatter(x=teacher_traj[i, :, 0], y=teacher_traj[i, :, 1], mode="lines",
                                 line=dict(color=color, dash="dash"), name=f"{group} teacher",
                                 legendgroup=group, showlegend=False), 1, 1)
        fig.add_trace(go.Scatter(x=[targets[i, 0]], y=[targets[i, 1]], mode="markers", marker=dict(color=color,
                                 symbol="x", size=10), legendgroup=group, showlegend=False), 1, 1)
        # Zero-order hold: draw each control as a step held over its interval.
        for u, dash in ((model_u, None), (teacher_u, "dash")):
            fig.add_trace(go.Scatter(x=steps, y=np.append(u[i, :, 0], u[i, -1, 0]), mode="lines", line_shape="hv",
                                     line=dict(color=color, dash=dash), legendgroup=group, showlegend=False), 1, 2)
    fig.update_xaxes(title_text="x1", row=1, col=1)
    fig.update_yaxes(title_text="x2", row=1, col=1)
    fig.update_xaxes(title_text="t", row=1, col=2)
    fig.update_layout(title=f"{title} (solid: controller, dashed: teacher, x: target)", height=550)
    return to_html(fig)
