"""The report's timeline of a `reproduce` run (`experiments/timeline.py`): each stage's span from summary.json and
the stages' own `seconds`, with the grokking stage beside the others or after them."""

from circuitlab.experiments.timeline import timeline, timeline_figure

IND, CIRC, GROK, IOI = ("induction heads (Olsson et al. 2022)", "circuits (Elhage et al. 2021)",
                        "grokking (Nanda et al. 2023)", "IOI circuit (Wang et al. 2022)")
PARTS = {"induction": {"train_and_measure": 650.0, "analysis": 25.0, "per_model_done_at": {"1L": 500.0, "2L": 300.0}},
         "grokking": {"train": 900.0, "analysis": 20.0}}


def summary(**stages):
    return {name: {"status": st, "seconds": sec, "claims": {}} for name, (st, sec) in stages.items()} | \
        {"report": {"status": "ran", "seconds": 0.1, "claims": {}}}


def spans(t):
    return {(s.row, s.part): (round(s.start, 1), round(s.end, 1)) for s in t.spans}


def test_grokking_beside_the_others_then_ioi_after_both():
    t = timeline(summary(**{IND: ("ran", 680.0), CIRC: ("ran", 20.0), GROK: ("ran in parallel", 925.0),
                            IOI: ("ran", 230.0)}), PARTS)
    assert t.stages == [[IND, "ran", 0.0, 680.0], [CIRC, "ran", 680.0, 700.0], [GROK, "ran in parallel", 0.0, 925.0],
                        [IOI, "ran", 925.0, 1155.0]]
    assert t.total == 1155.0
    s = spans(t)
    assert s[(IND, "training")] == (0.0, 650.0) and s[(IND, "analysis")] == (650.0, 680.0)
    assert s[(GROK, "training")] == (0.0, 900.0) and s[(GROK, "analysis")] == (900.0, 925.0)
    assert s[(CIRC, "stage")] == (680.0, 700.0) and s[(IOI, "stage")] == (925.0, 1155.0)
    marks = {(m.row, m.text): m.at for m in t.marks}
    assert marks == {(IND, "2L done"): 300.0, (IND, "1L done"): 500.0, (GROK, "every core from here"): 700.0}


def test_grokking_after_the_others_when_it_ran_alone():
    t = timeline(summary(**{IND: ("ran", 680.0), CIRC: ("ran", 20.0), GROK: ("ran", 925.0), IOI: ("ran", 230.0)}),
                 PARTS)
    assert [s[2:] for s in t.stages] == [[0.0, 680.0], [680.0, 700.0], [700.0, 1625.0], [1625.0, 1855.0]]
    assert spans(t)[(GROK, "training")] == (700.0, 1600.0)
    assert not any(m.text == "every core from here" for m in t.marks)


def test_reused_stages_have_no_bar_and_several_runs_are_drawn_whole():
    # the induction stage reused; the grokking stage over three seeds took far longer than its run 0's parts
    t = timeline(summary(**{IND: ("reused", 0.4), CIRC: ("ran", 20.0), GROK: ("ran", 2800.0)}), PARTS)
    s = spans(t)
    assert not any(row == IND for row, _ in s)
    assert s[(GROK, "stage")] == (20.4, 2820.4) and (GROK, "training") not in s
    assert [name for name, *_ in t.stages] == [IND, CIRC, GROK]  # the table still lists the reused stage


def test_figure_bars_start_where_the_stages_start():
    t = timeline(summary(**{IND: ("ran", 680.0), CIRC: ("ran", 20.0), GROK: ("ran in parallel", 925.0)}), PARTS)
    f = timeline_figure(t)
    bars = {tr["name"]: tr for tr in f["data"] if tr["type"] == "bar"}
    assert bars["training"]["base"] == [0.0, 0.0] and bars["training"]["x"] == [650.0, 900.0]
    assert bars["stage"]["y"] == [CIRC] and bars["stage"]["base"] == [680.0]
    assert f["layout"]["yaxis"]["categoryarray"][-1] == IND  # the first stage on top
    assert timeline_figure(timeline(summary(**{IND: ("reused", 0.3)}), {})) is None  # nothing ran: no figure
