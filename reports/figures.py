"""Plotly figures drawn from `reports.data`; nothing here computes a number the page reports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from reports.data import Importances, RankCorrelation, ReportData, StudyFacts, arrows, state_counts

FEASIBLE = "#1f77b4"
INFEASIBLE = "#a8a8a8"
FRONT = "#ff7f0e"
DISTILLED = "#2ca02c"
THRESHOLD = "#d62728"
NOT_FINISHED = "#7f7f7f"
TEMPLATE = "plotly_white"

_TRIAL_HOVER = (
    "trial %{customdata[0]}<br>%{customdata[1]}<br>%{x:.4g} UNIT"
    "<br>accuracy %{y:.3f} [%{customdata[2]:.3f}, %{customdata[3]:.3f}]<extra></extra>"
)


def cost_unit(facts: StudyFacts) -> str:
    """How objective 0's values read in hover text: GFLOPs, or a latency ratio to the teacher."""
    return "x the teacher's latency" if facts.latency_cost else "GFLOPs/question"


def cost_title(facts: StudyFacts) -> str:
    """The cost objective in a heading: "FLOPs" or "Measured latency"."""
    return "measured latency (relative to the teacher)" if facts.latency_cost else "FLOPs"


def _hover(facts: StudyFacts) -> str:
    return _TRIAL_HOVER.replace("UNIT", cost_unit(facts))


def _trial_data(frame: pd.DataFrame) -> np.ndarray:
    return frame[["number", "config", "ci_low", "ci_high"]].to_numpy(dtype=object)


def threshold_label(facts: StudyFacts) -> str:
    return f"{facts.ratio:g}·X = {facts.threshold:.3f}"


def pareto_figure(data: ReportData) -> go.Figure:
    """Cost (log: GFLOPs per question, or measured latency relative to the teacher) vs accuracy: trials,
    constrained front, teacher, 0.85·X, references, arrows."""
    facts, trials = data.facts, data.trials
    complete = trials[trials["state"] == "COMPLETE"]
    fig = go.Figure()
    for feasible, name, colour in ((False, "infeasible", INFEASIBLE), (True, "feasible", FEASIBLE)):
        part = complete[complete["feasible"] == feasible]
        fig.add_scatter(
            x=part["cost"],
            y=part["accuracy"],
            mode="markers",
            name=f"{name} ({len(part)})",
            marker={"color": colour, "size": 7, "opacity": 0.75, "line": {"width": 0}},
            customdata=_trial_data(part),
            hovertemplate=_hover(facts),
        )
    front = data.front
    fig.add_scatter(
        x=front["cost"],
        y=front["accuracy"],
        mode="lines+markers+text",
        line={"color": FRONT, "width": 2, "shape": "hv"},  # the attainment staircase between front points
        marker={"color": FRONT, "size": 9},
        # Trial number and config on the point itself, so the static picture (PNG) names the answers too.
        text=[f"#{n}: {c}" for n, c in zip(front["number"], front["config"])],
        textposition="top right",
        textfont={"size": 10, "color": FRONT},
        name=f"constrained Pareto front ({len(front)})",
        customdata=_trial_data(front),
        hovertemplate=_hover(facts),
    )
    refs = complete[complete["reference"] != ""].sort_values("cost")
    fig.add_scatter(
        x=refs["cost"],
        y=refs["accuracy"],
        mode="markers+text",
        text=refs["reference"],
        # Alternate above/below so neighbours' labels do not overlap.
        textposition=["top center" if i % 2 else "bottom center" for i in range(len(refs))],
        textfont={"size": 11},
        marker={"symbol": "circle-open", "size": 13, "color": "black", "line": {"width": 1.5}},
        name="reference configs",
        customdata=_trial_data(refs),
        hovertemplate=_hover(facts),
    )
    fig.add_scatter(
        x=[facts.teacher_cost],
        y=[facts.accuracy],
        mode="markers",
        marker={"symbol": "star", "size": 18, "color": "black"},
        error_y={
            "type": "data",
            "array": [facts.ci_high - facts.accuracy],
            "arrayminus": [facts.accuracy - facts.ci_low],
            "color": "black",
        },
        name=f"teacher X = {facts.accuracy:.3f}",
        hovertemplate=(
            f"teacher<br>%{{x:.4g}} {cost_unit(facts)}<br>X = %{{y:.3f}} "
            f"[{facts.ci_low:.3f}, {facts.ci_high:.3f}] on {facts.n} questions<extra></extra>"
        ),
    )
    finalized = data.finalized
    if len(finalized):
        fig.add_scatter(
            x=finalized["distilled_cost"],
            y=finalized["distilled_accuracy"],
            mode="markers",
            marker={"symbol": "diamond", "size": 11, "color": DISTILLED},
            name=f"distilled, on all {_questions(finalized)} validation questions ({len(finalized)})",
            customdata=finalized[
                ["trial", "config", "distilled_ci_low", "distilled_ci_high", "posthoc_accuracy"]
            ].to_numpy(dtype=object),
            hovertemplate=(
                f"trial %{{customdata[0]}} distilled<br>%{{customdata[1]}}<br>%{{x:.4g}} {cost_unit(facts)}"
                "<br>MCQ %{y:.3f} [%{customdata[2]:.3f}, %{customdata[3]:.3f}] on full validation"
                "<br>post-hoc %{customdata[4]:.3f}<extra></extra>"
            ),
        )
    for arrow in arrows(finalized):
        # On a log axis, annotation coordinates are given as log10 of the data value.
        fig.add_annotation(
            x=math.log10(arrow.gflops_to),
            y=arrow.accuracy_to,
            ax=math.log10(arrow.gflops_from),
            ay=arrow.accuracy_from,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            text="",
            showarrow=True,
            arrowhead=2,
            arrowsize=1.2,
            arrowwidth=1.5,
            arrowcolor=DISTILLED,
        )
    fig.add_hline(
        y=facts.threshold,
        line={"color": THRESHOLD, "dash": "dash", "width": 1.5},
        annotation_text=threshold_label(facts),
        annotation_position="bottom right",
        annotation_font_color=THRESHOLD,
    )
    counts = state_counts(trials)
    left_out = ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if state != "COMPLETE")
    subtitle = f"{len(complete)} finished trials" + (
        f"; not shown: {left_out}" if left_out else "; none pruned or failed"
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": f"Study {facts.name}: {cost_title(facts)} vs accuracy<br><sup>{subtitle}</sup>"},
        xaxis={"type": "log", "title": f"{facts.cost_label} (log scale)"},
        # Two question sets share this axis: say so (the legend names each marker's set).
        yaxis={
            "title": f"MCQ accuracy: search trials on the {facts.n}-question subset"
            + ("; distilled on the full validation split" if len(finalized) else "")
        },
        legend={"orientation": "v", "x": 1.01, "y": 1},
        height=620,
        margin={"t": 80},
    )
    return fig


def _questions(finalized: pd.DataFrame) -> str:
    counts = sorted({int(n) for n in finalized["distilled_n"].dropna()})
    return "/".join(f"{n:,}" for n in counts) or "the"


def _jitter(values: pd.Series, seed: int) -> np.ndarray:
    """Spread points of a discrete parameter sideways by up to 20% of the gap between its values."""
    if not pd.api.types.is_numeric_dtype(values.dropna().infer_objects()):
        return values.to_numpy()  # categorical strings: plotly places them itself
    x = values.to_numpy(dtype=float)
    levels = np.unique(x[~np.isnan(x)])
    gap = float(np.min(np.diff(levels))) if len(levels) > 1 else 1.0
    return x + np.random.default_rng(seed).uniform(-0.2 * gap, 0.2 * gap, size=len(x))


def params_figure(data: ReportData) -> go.Figure:
    """Each searched parameter against accuracy (top row) and GFLOPs (bottom row); pruned/failed as x."""
    trials, params = data.trials, data.params
    fig = make_subplots(
        rows=2,
        cols=max(1, len(params)),
        shared_yaxes=True,
        subplot_titles=params,
        horizontal_spacing=0.02,
        vertical_spacing=0.08,
    )
    complete = trials[trials["state"] == "COMPLETE"]
    unfinished = trials[trials["state"].isin(["PRUNED", "FAIL"])]
    # Trials without objectives sit just below the lowest value of each row.
    accuracy_floor = complete["accuracy"].min() - 0.05 if len(complete) else 0.0
    gflops_floor = complete["gflops"].min() / 1.5 if len(complete) else 1.0
    for col, param in enumerate(params, start=1):
        for row, (objective, floor) in enumerate(
            (("accuracy", accuracy_floor), ("gflops", gflops_floor)), start=1
        ):
            first = col == 1 and row == 1
            for feasible, name, colour in ((False, "infeasible", INFEASIBLE), (True, "feasible", FEASIBLE)):
                part = complete[complete["feasible"] == feasible]
                fig.add_scatter(
                    x=_jitter(part[param], seed=col),
                    y=part[objective],
                    mode="markers",
                    marker={"color": colour, "size": 5, "opacity": 0.7},
                    name=name,
                    legendgroup=name,
                    showlegend=first,
                    customdata=np.column_stack([part["number"], part[param]]),
                    hovertemplate=(
                        f"trial %{{customdata[0]}}<br>{param} = %{{customdata[1]}}<br>"
                        f"{objective} %{{y:.4g}}<extra></extra>"
                    ),
                    row=row,
                    col=col,
                )
            stuck = unfinished[unfinished[param].notna()]
            fig.add_scatter(
                x=_jitter(stuck[param], seed=col),
                y=[floor] * len(stuck),
                mode="markers",
                marker={"symbol": "x", "color": NOT_FINISHED, "size": 6},
                name="pruned / failed",
                legendgroup="unfinished",
                showlegend=first,
                customdata=np.column_stack([stuck["number"], stuck["state"], stuck["reason"]]),
                hovertemplate="trial %{customdata[0]} %{customdata[1]}<br>%{customdata[2]}<extra></extra>",
                row=row,
                col=col,
            )
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(type="log", row=2)
    fig.update_yaxes(title_text="GFLOPs (log)", row=2, col=1)
    fig.update_layout(
        template=TEMPLATE,
        title="Each searched parameter vs accuracy and GFLOPs per question",
        height=560,
        legend={"orientation": "h", "y": -0.08},
    )
    return fig


def importance_figure(imp: Importances) -> go.Figure | None:
    """Horizontal bars per objective; None when no objective has importances."""
    if imp.frame.empty:
        return None
    objectives = list(dict.fromkeys(imp.frame["objective"]).keys()) + [
        name for name in imp.notes if name not in set(imp.frame["objective"])
    ]
    fig = make_subplots(rows=1, cols=len(objectives), subplot_titles=objectives, horizontal_spacing=0.15)
    for col, name in enumerate(objectives, start=1):
        part = imp.frame[imp.frame["objective"] == name].sort_values("importance")
        if part.empty:
            fig.add_annotation(
                text=imp.notes.get(name, "no importances"),
                showarrow=False,
                xref=f"x{col} domain",
                yref=f"y{col} domain",
                x=0.5,
                y=0.5,
            )
            continue
        fig.add_bar(
            x=part["importance"],
            y=part["param"],
            orientation="h",
            marker_color=FEASIBLE,
            showlegend=False,
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="importance (sums to 1)", range=[0, 1])
    fig.update_layout(template=TEMPLATE, title="Parameter importances per objective", height=380)
    return fig


def hypervolume_figure(
    curve: pd.DataFrame, reference: tuple[float, float], unit: str = "GFLOPs"
) -> go.Figure:
    """Hypervolume of the feasible front after each trial."""
    fig = go.Figure()
    fig.add_scatter(
        x=curve["number"],
        y=curve["hypervolume"],
        mode="lines",
        line={"shape": "hv", "color": FEASIBLE},
        customdata=curve[["fraction_of_box", "feasible_so_far"]].to_numpy(),
        hovertemplate=(
            "after trial %{x}: %{y:.4g}<br>%{customdata[0]:.1%} of the box"
            "<br>%{customdata[1]} feasible trials<extra></extra>"
        ),
        name="hypervolume",
    )
    fig.update_layout(
        template=TEMPLATE,
        title=(
            "Hypervolume of the feasible front by trial number"
            f"<br><sup>area dominated up to the reference point ({reference[0]:.4g} {unit}, "
            f"accuracy {reference[1]:g})</sup>"
        ),
        xaxis_title="trial number",
        yaxis_title=f"hypervolume ({unit} x accuracy)",
        height=380,
    )
    return fig


def correlation_figure(finalized: pd.DataFrame, corr: RankCorrelation) -> go.Figure | None:
    """Post-hoc (search subset) vs distilled (full validation) accuracy of the finalized trials."""
    if finalized.empty:
        return None
    low = float(np.nanmin(finalized[["posthoc_accuracy", "distilled_accuracy", "distilled_ci_low"]]))
    high = float(np.nanmax(finalized[["posthoc_accuracy", "distilled_accuracy", "distilled_ci_high"]]))
    fig = go.Figure()
    fig.add_scatter(
        x=[low, high],
        y=[low, high],
        mode="lines",
        line={"color": NOT_FINISHED, "dash": "dot"},
        name="distilled = post-hoc",
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=finalized["posthoc_accuracy"],
        y=finalized["distilled_accuracy"],
        mode="markers+text",
        text=[f"#{n}" for n in finalized["trial"]],
        textposition="middle right",
        marker={"symbol": "diamond", "size": 11, "color": DISTILLED},
        error_y={
            "type": "data",
            "array": finalized["distilled_ci_high"] - finalized["distilled_accuracy"],
            "arrayminus": finalized["distilled_accuracy"] - finalized["distilled_ci_low"],
        },
        name="finalized trials",
        hovertemplate="post-hoc %{x:.3f}<br>distilled %{y:.3f}<extra>%{text}</extra>",
    )
    fig.update_layout(
        template=TEMPLATE,
        title=f"Did the search's accuracy predict the distilled one?<br><sup>{corr.note}</sup>",
        xaxis_title="post-hoc accuracy (search subset)",
        yaxis_title="distilled MCQ accuracy (full validation)",
        height=420,
    )
    return fig


def speedup_figure(speed: pd.DataFrame | None) -> go.Figure | None:
    """Measured speed-up against FLOP reduction of the finalized trials, with the y = x line."""
    if speed is None or speed.empty:
        return None
    top = float(np.nanmax(speed[["flop_reduction_x", "speedup_x"]].to_numpy())) * 1.1
    low = min(1.0, float(np.nanmin(speed[["flop_reduction_x", "speedup_x"]].to_numpy()))) * 0.9
    fig = go.Figure()
    fig.add_scatter(
        x=[low, top],
        y=[low, top],
        mode="lines",
        line={"color": NOT_FINISHED, "dash": "dot"},
        name="speed-up = FLOP reduction (y = x)",
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=speed["flop_reduction_x"],
        y=speed["speedup_x"],
        mode="markers+text",
        text=[f"#{n}" for n in speed["trial"]],
        textposition="middle right",
        marker={"symbol": "diamond", "size": 11, "color": DISTILLED},
        customdata=speed[["config", "speedup_per_flop_reduction", "speed_device"]].to_numpy(dtype=object),
        name="finalized trials",
        hovertemplate=(
            "%{text}: %{customdata[0]}<br>FLOP reduction %{x:.2f}x<br>measured speed-up %{y:.2f}x"
            "<br>speed-up / FLOP reduction %{customdata[1]:.2f}<br>%{customdata[2]}<extra></extra>"
        ),
    )
    devices = ", ".join(sorted(set(speed["speed_device"])))
    fig.update_layout(
        template=TEMPLATE,
        title=(
            "Measured speed-up vs FLOP reduction (MCQ latency at batch 1, teacher / student)"
            f"<br><sup>timed by distill.finalize on {devices}</sup>"
        ),
        xaxis={"type": "log", "title": "FLOP reduction (teacher FLOPs / student FLOPs, log scale)"},
        yaxis={"type": "log", "title": "measured speed-up (teacher latency / student latency, log scale)"},
        height=460,
    )
    return fig
