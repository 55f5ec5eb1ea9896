"""Reliability plot of a PRM (or any scorer) from `metrics.prm.calibration`, as self-contained HTML
(plotly.js from the run's figures/plotly.min.js, so it renders offline)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import to_html


def reliability_html(calib: dict, summary: dict | None = None, name: str = "PRM") -> str:
    """Two panels over the same score buckets (x = mean within-state score quantile, 1 = top score):
    left, the realized goodness quantile of the error against the diagonal of a perfect ranker;
    right, the realized MSE relative to the state's mean candidate MSE (below 1 = better than an
    average pick). `summary` values (e.g. prm/spearman, prm/ece) go into the title."""
    q = np.asarray(calib["q_mean"], dtype=float)
    count = np.asarray(calib["count"], dtype=float)
    hover = [f"{int(c)} candidates" for c in count]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "realized error rank vs score rank", "realized MSE / state mean MSE"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect ranker",
                             line={"dash": "dash", "color": "#7f7f7f"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0.5, 0.5], mode="lines", name="random scorer",
                             line={"dash": "dot", "color": "#bcbd22"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=q, y=np.asarray(calib["goodness"], dtype=float), mode="lines+markers",
                             name=name, text=hover, line={"color": "#1f77b4"}), row=1, col=1)
    fig.add_trace(go.Bar(x=q, y=np.asarray(calib["rel_mse"], dtype=float), width=0.8 / max(len(q), 1),
                         name=f"{name} rel. MSE", text=hover, marker={"color": "#ff7f0e"}), row=1, col=2)
    fig.add_hline(y=1.0, line={"dash": "dash", "color": "#7f7f7f"}, row=1, col=2)
    fig.update_xaxes(title_text="score quantile within state (1 = top score)", range=[0, 1])
    fig.update_yaxes(title_text="goodness quantile (1 = lowest MSE)", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="MSE / mean MSE of the state's candidates", row=1, col=2)
    keys = [k for k in ("prm/triplet_acc", "prm/spearman", "prm/ece") if summary and k in summary]
    values = ", ".join(f"{k.split('/')[-1]} {summary[k]:.3f}" for k in keys)
    title = f"{name} reliability" + (f" ({values})" if keys else "")
    fig.update_layout(title=title, template="plotly_white", bargap=0.1)
    return to_html(fig)
