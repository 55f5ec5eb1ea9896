"""The comparison dashboard `figures/compare.html`: every compared ttc run on one page, one colour
per run in every panel, each trace labelled with the run's name.

Panels: the table; rollout MSE and nRMSE vs step (log y, steps 1..T: step 0 is exact by
construction and would stretch a log axis to round-off); SampleGain per IC as one box per run;
conservation drift per quantity vs horizon (log y); final MSE vs forward passes per IC (log y);
for rows that used a PRM, its held-out reliability (realized error rank vs score rank per score
bucket, `metrics.prm.calibration`) against the perfect-ranker diagonal and a random scorer's 0.5.
Values <= 0 are left out of log axes (a projected run's drift can be exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .figures import to_html


@dataclass
class Series:
    """What the dashboard shows of one compared run."""

    name: str  # the run name, e.g. "ttc · arm · N5 · +proj"
    mse: list[tuple[int, float]]  # (step, mean MSE) from the metric history
    nrmse: list[tuple[int, float]]
    gain: np.ndarray  # SampleGain % per IC
    drift: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # quantity -> (horizon, mean)
    final_mse: float = float("nan")
    model_evals: float = float("nan")
    calibration: dict | None = None  # a PRM row: its PRM's buckets (q_mean, goodness, rel_mse, count, ece)
    prm_run: str = ""  # ... and that PRM's run name


def _positive(points):
    pts = [(x, y) for x, y in points if x > 0 and y > 0]
    return [x for x, _ in pts], [y for _, y in pts]


CHAR_PX = 7.5  # width of one character of the table's font, padding included


def column_widths(header: list[str], body: list[list[str]]) -> list[int]:
    """Widths in characters: each column's longest word of header or cells plus padding (cells wrap at
    spaces only, so a narrower column cuts `3.411e-02` or `euler1d_upt` off), between 6 and 26."""
    return [min(26, max(6, *(len(w) + 2 for text in column for w in text.split()))) for column in zip(header, *body)]


def dashboard(header: list[str], body: list[list[str]], series: list[Series], title: str) -> str:
    quantities = list(dict.fromkeys(q for s in series for q in s.drift))
    drift_rows = -(-len(quantities) // 3)
    rows = 3 + drift_rows
    specs = [[{"type": "table", "colspan": 3}, None, None]] + [[{}, {}, {}] for _ in range(rows - 1)]
    titles = ["", "Rollout MSE vs step", "Rollout nRMSE vs step", "SampleGain per IC vs baseline (%)"]
    titles += [f"Conservation drift: {q}" for q in quantities] + [""] * (3 * drift_rows - len(quantities))
    titles += ["Final MSE vs forward passes per IC"]
    titles += ["PRM reliability (held-out): error rank vs score rank"] if any(s.calibration for s in series) else []
    table_h = 110 + 76 * len(body)  # header and cells wrap to ~3 lines in 22 narrow columns; none may be cut off
    plot_h = 360
    fig = make_subplots(rows=rows, cols=3, specs=specs, subplot_titles=titles, vertical_spacing=0.06,
                        row_heights=[table_h] + [plot_h] * (rows - 1))
    widths = column_widths(header, body)
    fig.add_trace(go.Table(header={"values": header, "height": 44}, cells={"values": list(map(list, zip(*body))),
                                                                          "height": 58}, columnwidth=widths),
                  row=1, col=1)
    colours = qualitative.Plotly + qualitative.D3
    for i, s in enumerate(series):
        style = {"legendgroup": s.name, "name": s.name, "marker": {"color": colours[i % len(colours)]}}
        line = {"color": colours[i % len(colours)]}
        fig.add_trace(go.Scatter(x=_positive(s.mse)[0], y=_positive(s.mse)[1], mode="lines", line=line,
                                 showlegend=True, **style), row=2, col=1)
        fig.add_trace(go.Scatter(x=_positive(s.nrmse)[0], y=_positive(s.nrmse)[1], mode="lines", line=line,
                                 showlegend=False, **style), row=2, col=2)
        fig.add_trace(go.Box(y=s.gain, boxmean=True, showlegend=False, **style), row=2, col=3)
        for j, q in enumerate(quantities):
            x, y = _positive(s.drift.get(q, []))
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", line=line, showlegend=False, **style),
                          row=3 + j // 3, col=1 + j % 3)
        if s.final_mse > 0 and np.isfinite(s.model_evals):
            fig.add_trace(go.Scatter(x=[s.model_evals], y=[s.final_mse], mode="markers", showlegend=False,
                                     **{**style, "marker": {**style["marker"], "size": 11}}), row=rows, col=1)
        if s.calibration:
            calib = s.calibration
            hover = [f"PRM {s.prm_run}: {int(c)} candidates, ECE {calib['ece']:.3f}" for c in calib["count"]]
            fig.add_trace(go.Scatter(x=calib["q_mean"], y=calib["goodness"], mode="lines+markers", line=line,
                                     text=hover, showlegend=False, **style), row=rows, col=2)
    if any(s.calibration for s in series):
        for y, label, dash in (([0, 1], "perfect ranker", "dash"), ([0.5, 0.5], "random scorer", "dot")):
            fig.add_trace(go.Scatter(x=[0, 1], y=y, mode="lines", name=label, showlegend=True,
                                     line={"dash": dash, "color": "#7f7f7f"}), row=rows, col=2)
        fig.update_xaxes(title_text="score quantile within state (1 = top)", range=[0, 1], row=rows, col=2)
        fig.update_yaxes(title_text="error quantile (1 = lowest MSE)", range=[0, 1], row=rows, col=2)
    for r in range(2, rows):
        for c in (1, 2, 3):
            if (r, c) != (2, 3):
                fig.update_yaxes(type="log", row=r, col=c)
                fig.update_xaxes(title_text="step", row=r, col=c)
    fig.update_yaxes(type="log", title_text="final MSE", row=rows, col=1)
    fig.update_xaxes(title_text="model forward passes per IC", row=rows, col=1)
    # Wide enough for every column at its width (the page scrolls sideways), else the browser's width.
    fig.update_layout(title=title, template="plotly_white", height=table_h + plot_h * (rows - 1) + 200,
                      width=max(1400, int(CHAR_PX * sum(widths)) + 160),
                      margin={"t": 140, "b": 60}, legend={"orientation": "h", "y": 1.0, "yanchor": "bottom"},
                      boxmode="group")
    return to_html(fig)
