"""Where `reproduce`'s time went (issue 16): every stage on one wall-clock axis, for the report's last section.

Read from what the run leaves: OUT/summary.json (each stage's status and seconds, in the order the stages ran) and
the `seconds` of the induction and grokking results (their parts). The stages run one after another, but for the
grokking stage where it ran beside the others ("ran in parallel": its own process from the start, its seconds
counted from then); the stage after it (IOI) starts once both it and the circuits stage are done. So a stage's span
is [start, start + seconds] with start the end of the stage before it, which is what the run did up to the
fractions of a second between stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.report.figures import esc, fig, label
from circuitlab.report.page import Page, table
from circuitlab.results import Result

PARALLEL = "ran in parallel"
COLORS = {"training": "#1f77b4", "analysis": "#ff7f0e", "stage": "#7f7f7f"}


@dataclass
class Span(Result):
    """One bar: `row` (a stage), `part` (training, analysis or the whole stage) from `start` to `end` seconds."""

    row: str
    part: str
    start: float
    end: float


@dataclass
class Mark(Result):
    """A point on a row: e.g. a model done at `at` seconds, or the moment the grokking run took every core."""

    row: str
    text: str
    at: float


@dataclass
class Timeline(Result):
    """The run's stages as spans on one axis (seconds from `reproduce`'s start), marks inside them, each stage's
    (status, start, end) in the order it ran, and `total`: the end of the last stage."""

    spans: list[Span] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    stages: list[list] = field(default_factory=list)  # [name, status, start, end]
    total: float = 0.0


def _kind(name: str) -> str:
    """The results folder of a stage from its name in summary.json ('induction heads (Olsson et al. 2022)' ->
    'induction')."""
    n = name.lower()
    for k in ("induction", "circuits", "grokking", "ioi"):
        if n.startswith(k):
            return k
    return n


def _one_run(parts: dict, seconds: float) -> bool:
    """Whether a stage's parts (training, analysis) make up its time, as in a run of one seed; over several seeds or
    float-noise runs the stage took longer than run 0's parts, so it is drawn whole."""
    total = sum(float(parts.get(k, 0.0)) for k in ("train", "train_and_measure", "analysis"))
    return 0.8 * seconds <= total <= seconds + 1.0


def timeline(summary: dict, seconds: dict[str, dict]) -> Timeline:
    """The run's timeline from summary.json's {stage: {status, seconds, ...}} and {'induction' | 'grokking': their
    results' `seconds`} (either may be missing: that stage is then one span)."""
    t = Timeline()
    clock, parallel_end = 0.0, 0.0
    for name, s in summary.items():
        if name == "report":
            continue
        kind, status, secs = _kind(name), s["status"], float(s["seconds"])
        if status == PARALLEL:
            start = 0.0
            parallel_end = secs
            # it waited for the stages before it, then took every core: mark where they ended
            t.marks.append(Mark(name, "every core from here", clock))
        else:
            start = max(clock, parallel_end) if kind not in ("induction", "circuits") else clock
            clock = start + secs
        end = start + secs
        t.stages.append([name, status, round(start, 1), round(end, 1)])
        parts = seconds.get(kind) or {}
        if status == "reused":
            continue
        if not _one_run(parts, secs):  # several seeds or float-noise runs: the parts are run 0's only
            parts = {}
        if kind == "grokking" and "train" in parts:
            train = float(parts["train"])
            t.spans.append(Span(name, "training", start, start + train))
            t.spans.append(Span(name, "analysis", start + train, end))
        elif kind == "induction" and "train_and_measure" in parts:
            train = float(parts["train_and_measure"])
            t.spans.append(Span(name, "training", start, start + train))
            t.spans.append(Span(name, "analysis", start + train, end))
            for model, at in sorted(parts.get("per_model_done_at", {}).items(), key=lambda kv: kv[1]):
                t.marks.append(Mark(name, f"{model} done", start + float(at)))
        else:
            t.spans.append(Span(name, "stage", start, end))
    t.total = round(max([e for *_, e in t.stages], default=0.0), 1)
    return t


def timeline_figure(t: Timeline) -> dict | None:
    """Horizontal bars, one row per stage (the first stage on top), and the marks as labelled points."""
    if not t.spans:
        return None
    rows = [name for name, *_ in t.stages]
    data = []
    for part in ("training", "analysis", "stage"):
        spans = [s for s in t.spans if s.part == part]
        if spans:
            data.append({"type": "bar", "orientation": "h", "name": part, "y": [label(s.row) for s in spans],
                         "base": [round(s.start, 1) for s in spans], "x": [round(s.end - s.start, 1) for s in spans],
                         "marker": {"color": COLORS[part]},
                         "hovertemplate": "%{y}<br>" + part + ": %{base:.0f} s to %{customdata:.0f} s<extra></extra>",
                         "customdata": [round(s.end, 1) for s in spans]})
    if t.marks:
        # labelled where a row has one or two marks; a row with more (the induction models, one after another) is
        # read by hovering, as its labels would overlap
        crowded = {m.row for m in t.marks if sum(n.row == m.row for n in t.marks) > 2}
        data.append({"type": "scatter", "mode": "markers+text", "name": "a model done (hover), the grokking run on every core",
                     "x": [round(m.at, 1) for m in t.marks], "y": [label(m.row) for m in t.marks],
                     "text": ["" if m.row in crowded else label(m.text) for m in t.marks],
                     "hovertext": [label(f"{m.text}: {m.at:.0f} s") for m in t.marks], "hoverinfo": "text",
                     "textposition": "middle right", "textfont": {"size": 11, "color": "#ffffff"},
                     "marker": {"symbol": "line-ns-open", "size": 22, "color": "#ffffff", "line": {"width": 2}}})
    return fig(data, f"Where the time went: {t.total:.0f} s from the start to the last stage's end", "seconds", "",
               barmode="overlay", height=130 + 70 * len(rows),
               yaxis={"categoryorder": "array", "categoryarray": [label(r) for r in reversed(rows)]},
               margin={"l": 230})


def timeline_section(page: Page, t: Timeline) -> None:
    rows = [[esc(name), esc(status), f"{start:.0f}", f"{end:.0f}", f"{end - start:.0f}"]
            for name, status, start, end in t.stages]
    intro = ("Each stage's wall-clock span in this run (OUT/summary.json and the stages' own <code>seconds</code>). "
             "A stage that ran in parallel trained in its own process from the start, on one thread while the "
             "others ran and on every core after; a reused stage was finished by an earlier run, whose times are "
             "not kept.")
    page.section("time", "Where the time went",
                 page.plot("timeline", timeline_figure(t)) + table(["stage", "status", "start (s)", "end (s)", "seconds"],
                                                                   rows), intro)
