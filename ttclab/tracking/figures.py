"""Plotly figures of TTC runs, returned as HTML pages that load plotly.js from `plotly.min.js` beside
them: a run logs that file once into its figures/ folder (Run.text), so every figure renders
offline in the MLflow artifact viewer while a run holds one copy of plotly.js (4.8 MB) instead of one
per figure. The only plotly importer for PDE figures."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


PLOTLY_JS = "plotly.min.js"  # relative script src; tracking.store.PLOTLY_JS must agree


def to_html(fig: go.Figure) -> str:
    return fig.to_html(include_plotlyjs=PLOTLY_JS, full_html=True)


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def _colours(names) -> dict[str, str]:
    """One colour per series name, the same in every panel of a figure."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def _steps(y: np.ndarray, log_y: bool) -> tuple[np.ndarray, np.ndarray]:
    """x = 0..len-1, less step 0 on a log axis: it is the exact initial state (error 0, drift 0) and
    would stretch the axis down to round-off."""
    x, y = np.arange(len(y)), np.asarray(y)
    return (x[1:], y[1:]) if log_y else (x, y)


def curves(series: dict[str, np.ndarray], title: str, xlabel: str, ylabel: str, log_y: bool = True) -> str:
    """One line per named series over the steps (e.g. rollout MSE vs horizon per selector)."""
    fig = go.Figure()
    for name, y in series.items():
        x, y = _steps(y, log_y)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white")
    if log_y:
        fig.update_yaxes(type="log")
    return to_html(fig)


def panels(groups: dict[str, dict[str, np.ndarray]], title: str, xlabel: str, log_y: bool = True) -> str:
    """One subplot per group (e.g. conserved quantity), one line per named series in each."""
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=list(groups))
    colours = _colours(n for g in groups.values() for n in g)
    for col, series in enumerate(groups.values(), start=1):
        for name, y in series.items():
            x, y = _steps(y, log_y)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name,
                                     line={"color": colours[name]}, legendgroup=name, showlegend=col == 1),
                          row=1, col=col)
        fig.update_xaxes(title_text=xlabel, row=1, col=col)
        if log_y:
            fig.update_yaxes(type="log", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white")
    return to_html(fig)


def histogram(values: np.ndarray, title: str, xlabel: str) -> str:
    fig = go.Figure(go.Histogram(x=np.asarray(values), nbinsx=30))
    fig.add_vline(x=0.0, line_dash="dash", line_color="gray")
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title="ICs", template="plotly_white")
    return to_html(fig)


def fields_at_times(x: np.ndarray, fields: list[str], times: list[int], series: dict[str, np.ndarray]) -> str:
    """1D snapshots: rows = fields, cols = times; series name -> (T+1, C, X) trajectory of one IC."""
    titles = [f"{f}, step {t}" for f in fields for t in times]
    fig = make_subplots(rows=len(fields), cols=len(times), subplot_titles=titles)
    names, colours = list(series), _colours(series)
    for r, _ in enumerate(fields):
        for c, t in enumerate(times):
            for name in names:
                fig.add_trace(go.Scatter(x=x, y=series[name][t, r], mode="lines", name=name, legendgroup=name,
                                         showlegend=(r == 0 and c == 0),
                                         line={"dash": "dash" if name == "truth" else "solid",
                                               "color": colours[name]}),
                              row=r + 1, col=c + 1)
    fig.update_layout(title="Example trajectory", template="plotly_white", height=260 * len(fields))
    return to_html(fig)


def heatmaps_at_times(x: np.ndarray, y: np.ndarray, fields: list[str], times: list[int],
                      series: dict[str, np.ndarray]) -> str:
    """2D snapshots as heat maps: rows = series (truth first), cols = times, one field at a time
    (a menu switches fields); series name -> (T+1, C, X, Y) trajectory of one IC. Every panel of a
    field shares one colour scale, the range of the truth at those times, so colours compare
    across series and times (a prediction outside it saturates)."""
    names = list(series)
    fig = make_subplots(rows=len(names), cols=len(times),
                        subplot_titles=[f"{n}, step {t}" for n in names for t in times],
                        horizontal_spacing=0.04, vertical_spacing=0.1)
    per_field = len(names) * len(times)
    for f, field in enumerate(fields):
        truth = series.get("truth", series[names[0]])[times, f]
        lo, hi = float(truth.min()), float(truth.max())
        for r, name in enumerate(names):
            for c, t in enumerate(times):
                # Heatmap z is indexed [row = y][col = x]: the field's (X, Y) transposed.
                fig.add_trace(go.Heatmap(x=x, y=y, z=series[name][t, f].T, zmin=lo, zmax=hi, colorscale="Viridis",
                                         showscale=(r == 0 and c == 0), visible=(f == 0), name=f"{name} {field}",
                                         colorbar={"title": field}), row=r + 1, col=c + 1)
    buttons = [{"label": field, "method": "update",
                "args": [{"visible": [i // per_field == f for i in range(len(fields) * per_field)]},
                         {"title": f"Example trajectory: {field}"}]} for f, field in enumerate(fields)]
    fig.update_layout(title=f"Example trajectory: {fields[0]}", template="plotly_white",
                      height=260 * len(names) + 80, updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.12}])
    for i in range(len(names) * len(times)):  # square cells: each panel's y axis scaled to its own x axis
        fig.layout[f"yaxis{i + 1 if i else ''}"].update(scaleanchor=f"x{i + 1 if i else ''}", constrain="domain")
    return to_html(fig)
