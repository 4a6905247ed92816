"""The report, built from real (tiny) experiment results: self-contained, corpus strings escaped, and opened as a
person would, in headless Chromium from file:// with no network."""

import json
import re
import shutil
from pathlib import Path

import pytest

from circuitlab.data import load_corpus, prepare_tokens
from circuitlab.experiments.framework import analyze_run, framework_claims
from circuitlab.experiments.framework.run import FrameworkResults
from circuitlab.experiments.grokking import GrokkingResults, grokking_preset, run_grokking_experiment
from circuitlab.experiments.induction import run_induction_experiment
from circuitlab.experiments.reproduce import build_report
from circuitlab.model import ModelConfig
from circuitlab.report.page import script_json
from circuitlab.training import TrainConfig, train
from circuitlab.training.presets import ExperimentPreset
from tests.planted_ioi import planted_ioi_model, word_tokenizer
from tests.test_induction_experiment import TINY

QUOTED = 'say "hi" & <b>bold</b>'  # Plotly's own label markup (<b>) and entities must show as typed
EVIL = ["<script>window.__pwned = 1</script>", "</div></section><h1>injected", "<img src=x onerror=\"window.__pwned=2\">"]


@pytest.fixture(scope="module")
def results_dir(small_corpus_dir, tmp_path_factory):
    """A directory laid out as `circuitlab reproduce` leaves it, from tiny real runs, with hostile strings planted
    where corpus tokens appear (viewer tokens, bigram and skip-trigram tables)."""
    out = tmp_path_factory.mktemp("reproduce")
    corpus = {"text": str(small_corpus_dir)}
    run_induction_experiment(TINY, out / "induction", workers=2, progress=False, corpus=corpus)
    data = prepare_tokens(load_corpus(**corpus), 320)
    train(ModelConfig(n_layers=0, d_model=32, n_heads=2, d_head=16, n_ctx=32, d_vocab=320),
          TrainConfig(batch_size=8, max_steps=30, eval_every=30, log_checkpoints=2), data,
          out / "circuits" / "attn0" / "run", progress=False)
    analyses = {"attn0": analyze_run(out / "circuits" / "attn0" / "run", out / "circuits" / "attn0" / "analysis.json")}
    for n, name in (("attn1", "1L"), ("attn2", "2L")):
        analyses[n] = analyze_run(out / "induction" / "runs" / name, out / "circuits" / n / "analysis.json")
    FrameworkResults("framework", "tiny", {}, framework_claims(analyses)).save(out / "circuits" / "results.json")
    run_grokking_experiment(grokking_preset("paper", p=13, epochs=60, checkpoint_every=20, log_every=10, d_model=32,
                                            d_mlp=64, n_heads=2, d_head=16), out / "grokking", progress=False)
    from circuitlab.experiments.ioi import analyze_ioi, ioi_claims

    tok = word_tokenizer()
    ioi = analyze_ioi(planted_ioi_model(tok), tok, EVIL[0], [EVIL[2]], {"n_prompts": 16, "n_exact": 8, "n_eval": 8,
                                                                     "top": 8, "seed": 0},
                      bos=tok.token_to_id("[BOS]"), pad=tok.token_to_id("[PAD]"))
    ioi.claims = ioi_claims(ioi)
    ioi.vocabulary["example"] = EVIL[1]
    ioi.save(out / "ioi" / "results.json")
    # plant hostile strings where corpus text is shown
    ind = json.loads((out / "induction" / "results.json").read_text())
    ind["attention_viewer"][0]["tokens"][1:5] = EVIL + [QUOTED]
    (out / "induction" / "results.json").write_text(json.dumps(ind))
    a0 = json.loads((out / "circuits" / "attn0" / "analysis.json").read_text())
    a0["bigram_agreement"]["strongest"][0]["prev"] = EVIL[1]
    a0["bigram_agreement"]["strongest"][0]["next"] = EVIL[2]
    (out / "circuits" / "attn0" / "analysis.json").write_text(json.dumps(a0))
    a1 = json.loads((out / "circuits" / "attn1" / "analysis.json").read_text())
    a1["skip_trigrams"][0]["rows"][0]["source"] = EVIL[0]
    (out / "circuits" / "attn1" / "analysis.json").write_text(json.dumps(a1))
    # the run's summary as `reproduce` writes it, with the grokking stage beside the others
    stages = {"induction heads (Olsson et al. 2022)": ("ran", 40.0), "circuits (Elhage et al. 2021)": ("ran", 5.0),
              "grokking (Nanda et al. 2023)": ("ran in parallel", 60.0), "IOI circuit (Wang et al. 2022)": ("ran", 9.0)}
    (out / "summary.json").write_text(json.dumps({k: {"status": st, "seconds": sec, "claims": {}}
                                                  for k, (st, sec) in stages.items()}))
    return out


def test_report_is_self_contained_and_escapes_corpus_strings(results_dir):
    path = build_report(results_dir)
    text = path.read_text()
    page = text.split('<script id="figures"')[0]  # the HTML before the inlined data and scripts
    assert "src=\"http" not in page and "href=\"http" not in page and "<link" not in page
    tags = re.findall(r"<script[^>]*>", text)
    assert len(tags) == 3 and not any("src=" in t for t in tags)  # data, Plotly, our viewer code: all inline
    for evil in EVIL:
        assert evil not in text  # neither raw in the HTML nor raw inside the JSON data
    assert "&lt;/div&gt;&lt;/section&gt;&lt;h1&gt;injected" in text  # shown as text in the bigram table
    for sid in ("claims", "circuits-bigram", "circuits-copying", "circuits-skip-trigrams", "circuits-composition",
                "circuits-heads", "circuits-terms", "attention-viewer", "induction-phase", "induction-position",
                "induction-pca", "induction-ablation", "induction-behaviours", "grokking-curves", "grokking-measures",
                "grokking-fourier", "grokking-ablation", "ioi-behaviour", "ioi-circuit", "ioi-evaluation", "time"):
        assert f'id="{sid}"' in text, sid
    # every claim links to a section that exists
    for target in set(re.findall(r'<a href="#([^"]+)">', text)):
        assert f'id="{target}"' in text, target


def test_time_section_only_where_the_run_left_its_summary(results_dir, tmp_path):
    text = build_report(results_dir, tmp_path / "with.html").read_text()
    assert 'id="time"' in text and 'data-fig="timeline"' in text
    assert "ran in parallel" in text  # the stages' table
    bare = tmp_path / "bare"
    shutil.copytree(results_dir, bare)
    (bare / "summary.json").unlink()  # results from single experiments, not from `reproduce`
    text = build_report(bare).read_text()
    assert 'id="time"' not in text and 'data-fig="timeline"' not in text
    for damaged in ('{"grokking (Nanda et al. 2023)": {"seconds": 3}}', "{not json", "[1, 2]"):
        (bare / "summary.json").write_text(damaged)  # the rest of the report does not depend on it
        text = build_report(bare).read_text()
        assert 'id="time"' not in text and 'id="claims"' in text, damaged


def test_script_json_cannot_close_the_script_element():
    s = script_json({"t": "</script><script>alert(1)</script>", "x": float("nan"), "c": "<!--"})
    assert "</" not in s and "<!--" not in s
    assert json.loads(s) == {"t": "</script><script>alert(1)</script>", "x": None, "c": "<!--"}


def _chrome(tmp_path: Path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Chromium is not installed (`make test` installs Debian's chromium and chromium-driver with "
                    "apt-get when it runs as root); the browser test is skipped")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1400,1000",
              f"--user-data-dir={tmp_path / 'profile'}",
              # no network: every request goes to a closed local port
              "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def test_report_in_headless_chromium(results_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = build_report(results_dir)
    driver = _chrome(tmp_path)
    try:
        driver.get(path.as_uri())
        n_plots = len(driver.find_elements(By.CSS_SELECTOR, ".plot[data-fig]"))
        assert n_plots >= 15
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return document.querySelectorAll('.plot[data-fig] .main-svg').length") >= n_plots)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # every plot drew something: Plotly attached its data, and the SVG has trace elements
        empty = driver.execute_script("""
            return Array.from(document.querySelectorAll('.plot[data-fig]')).filter(function(d){
              return !d.data || d.data.length === 0 || !d.querySelector('.main-svg .plot, .main-svg .cartesianlayer');
            }).map(function(d){ return d.id; });""")
        assert not empty, empty
        # only local resources were loaded
        remote = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                       ".filter(n => !/^(file|data|blob):/.test(n))")
        assert remote == []
        # hostile corpus strings are text: nothing ran, and they are visible as typed
        assert driver.execute_script("return window.__pwned === undefined")
        assert "</div></section><h1>injected" in driver.find_element(By.ID, "circuits-bigram").text
        # the attention viewer: clicking another head changes the pattern shown
        viewer = driver.find_element(By.ID, "viewer")
        first = viewer.get_attribute("data-head")
        z0 = driver.execute_script("return JSON.stringify(document.getElementById('viewer-plot').data[0].z)")
        button = driver.find_element(By.CSS_SELECTOR, '#viewer button.head[data-layer="0"][data-head="1"]')
        button.click()
        WebDriverWait(driver, 10).until(lambda d: viewer.get_attribute("data-head") == "0.1")
        z1 = driver.execute_script("return JSON.stringify(document.getElementById('viewer-plot').data[0].z)")
        assert first != "0.1" and z1 != z0
        # Plotly's labels show corpus tokens as typed: hover a cell of the hostile rows and read the hover label.
        # Plotly.Fx.hover draws the label the mouse would (the same hover code), at a cell named by its coordinates:
        # moving the mouse onto the cell lost its moves on a busy machine (failed a full `make test` in session 14).
        plot = driver.find_element(By.ID, "viewer-plot")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)

        def hovered(d):
            return d.execute_script("""
                const gd = document.getElementById('viewer-plot');
                Plotly.Fx.hover(gd, {xval: 1, yval: 4});  // key 1, query 4: a cell of the hostile rows
                return gd.querySelector('.hoverlayer').textContent.length > 0;""")

        WebDriverWait(driver, 30, poll_frequency=0.5).until(hovered)
        hover = driver.execute_script("return document.querySelector('#viewer-plot .hoverlayer').textContent")
        assert "query 4 " + QUOTED in hover and "key 1 " + EVIL[0] in hover, hover
        assert "&quot;" not in hover and "&lt;" not in hover and "&amp;" not in hover
        ticks = driver.execute_script("return Array.from(document.querySelectorAll('#viewer-plot .xtick text, "
                                      "#viewer-plot .ytick text')).map(t => t.textContent)")
        assert ticks and not any("&quot;" in t or "&lt;" in t for t in ticks)
        assert not driver.find_elements(By.CSS_SELECTOR, "#viewer-plot img, #viewer-plot script")
        assert driver.execute_script("return window.__pwned === undefined")
        assert "active" in button.get_attribute("class")
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def _tiny_reproduce(monkeypatch, tiny_gpt2_ioi) -> None:
    """reproduce.PRESETS["tiny"]: every stage on the tests' tiny presets."""
    from circuitlab.experiments import framework, grokking, induction, ioi, reproduce

    monkeypatch.setitem(induction.PRESETS, "tiny", TINY)
    monkeypatch.setitem(grokking.PRESETS, "tiny", grokking_preset("tiny", p=13, epochs=40, checkpoint_every=20,
                                                                  log_every=10, d_model=32, d_mlp=64, n_heads=2,
                                                                  d_head=16))
    zero = framework.PRESETS["quick"].models["attn0"].but(train={"max_tokens": 8_000})
    monkeypatch.setitem(framework.PRESETS, "tiny", ExperimentPreset("tiny", {"attn0": zero}))
    monkeypatch.setitem(ioi.PRESETS, "tiny", ExperimentPreset("tiny", settings={"n_prompts": 8, "n_exact": 4,
                                                                                "n_eval": 4, "top": 2, "seed": 0}))
    monkeypatch.setitem(reproduce.PRESETS, "tiny", ExperimentPreset(
        "tiny", settings={"induction": "tiny", "framework": "tiny", "grokking": "tiny", "ioi": "tiny",
                          "ioi_model": str(tiny_gpt2_ioi)}))


def test_reproduce_runs_every_stage_then_reuses_them(small_corpus_dir, tiny_gpt2_ioi, tmp_path, monkeypatch):
    from circuitlab.experiments import reproduce
    from circuitlab.experiments.framework.results import ModelAnalysis

    _tiny_reproduce(monkeypatch, tiny_gpt2_ioi)
    out, corpus = tmp_path / "r", {"text": str(small_corpus_dir)}
    lines: list[str] = []
    first = reproduce.reproduce("tiny", out, progress=False, log=lines.append, corpus=corpus, overlap=True)
    # grokking trained in its own process from the start, beside induction and circuits
    assert [s.status for s in first.values()] == ["ran", "ran", "ran in parallel", "ran", "ran"]
    assert lines[0].startswith("grokking (Nanda et al. 2023) starts in its own process")
    assert GrokkingResults.load(out / "grokking" / "results.json").seconds["train"] > 0
    assert [line for line in lines if line.startswith("[")][0].startswith("[1/5] induction")
    assert sum(line.startswith("[") for line in lines) == 5
    assert (out / "report.html").exists()
    for n in ("attn0", "attn1", "attn2"):
        assert ModelAnalysis.load(out / "circuits" / n / "analysis.json").model["n_layers"] == int(n[-1])
    assert first["circuits (Elhage et al. 2021)"].claims["total"] >= 4
    ckpts = out / "circuits" / "attn0" / "run" / "checkpoints"
    mtimes = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    second = reproduce.reproduce("tiny", out, progress=False, log=lines.append, corpus=corpus)
    assert [s.status for s in second.values()] == ["reused"] * 4 + ["ran"]
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == mtimes
    assert {k: v.claims for k, v in second.items()} == {k: v.claims for k, v in first.items()}
    # --float-noise 1: the stages that train run once more from weights one ulp away, run 0 reused as it is; run 1's
    # circuits read run 1's induction models; IOI (a pretrained model) runs once
    from circuitlab.experiments.noise import NoiseResults

    noisy = reproduce.reproduce("tiny", out, progress=False, log=lines.append, corpus=corpus, float_noise=1)
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == mtimes
    for stage in ("induction", "circuits", "grokking"):
        s = NoiseResults.load(out / stage / "float-noise.json")
        assert s.runs == [0, 1] and all(len(c.verdicts) == 2 for c in s.claims), stage
    assert not (out / "ioi" / "float-noise").exists()
    run1 = out / "circuits" / "float-noise" / "1"
    assert ModelAnalysis.load(run1 / "attn1" / "analysis.json").run == str(out / "induction" / "float-noise" / "1" /
                                                                            "runs" / "1L")
    assert json.loads((run1 / "attn0" / "run" / "run.json").read_text())["model"]["init_noise"] == 1
    assert json.loads((out / "grokking" / "float-noise" / "1" / "run" / "run.json").read_text())["model"][
        "init_noise"] == 1
    assert sum(v.claims["total"] for v in noisy.values()) == sum(v.claims["total"] for v in first.values())
    with pytest.raises(Exception, match="one at a time"):
        reproduce.reproduce("tiny", out, seeds=2, float_noise=1)
    with pytest.raises(Exception, match="unknown preset"):
        reproduce.reproduce("nope", out)


def test_reproduce_float_noise_from_scratch_trains_run_0_beside_the_others(small_corpus_dir, tiny_gpt2_ioi, tmp_path,
                                                                            monkeypatch):
    """`reproduce --float-noise 1` on an empty OUT: grokking's run 0 trains in its own process beside stages 1 and 2
    as in `make demo`, its run 1 after them; the report counts the claims over both runs."""
    from circuitlab.experiments import reproduce
    from circuitlab.experiments.noise import NoiseResults

    _tiny_reproduce(monkeypatch, tiny_gpt2_ioi)
    out = tmp_path / "r"
    s = reproduce.reproduce("tiny", out, progress=False, log=lambda _: None, corpus={"text": str(small_corpus_dir)},
                            overlap=True, float_noise=1)
    assert [v.status for v in s.values()] == ["ran", "ran", "ran in parallel", "ran", "ran"]
    g = NoiseResults.load(out / "grokking" / "float-noise.json")
    assert g.runs == [0, 1] and GrokkingResults.load(out / "grokking" / "float-noise" / "1" / "results.json")
    assert s["grokking (Nanda et al. 2023)"].claims["unstable"] == g.unstable
    text = (out / "report.html").read_text()
    assert all(c.verdict in text for c in g.claims)


def test_spread_over_seeds_is_drawn_as_a_band(results_dir, tmp_path):
    from circuitlab.experiments.grokking.report import grokking_figures
    from circuitlab.experiments.induction.report import induction_figures
    from circuitlab.report.figures import band

    hi, lo = band([([1, 2, 3], [1.0, 5.0, 2.0]), ([1, 2, 4], [3.0, 4.0, 9.0]), ([1, 3], [2.0, None])], "m", "#d62728")
    assert (lo["x"], lo["y"], hi["y"]) == ([1, 2], [1.0, 4.0], [3.0, 5.0])  # only where >= 2 seeds share the x
    assert lo["fill"] == "tonexty" and "3 seeds" in lo["name"] and band([([1], [1.0])], "m") == []
    g = json.loads((results_dir / "grokking" / "results.json").read_text())
    other = json.loads(json.dumps(g))
    other["curves"]["test_loss"] = [2 * v for v in g["curves"]["test_loss"]]
    traces = grokking_figures(g, [other])["loss"]["data"]
    filled = [t for t in traces if t.get("fill") == "tonexty"]
    assert len(filled) == 1 and filled[0]["y"] == g["curves"]["test_loss"][: len(filled[0]["y"])]
    assert len(grokking_figures(g)["loss"]["data"]) == 2  # one seed: no band
    ind = json.loads((results_dir / "induction" / "results.json").read_text())
    names = [t["name"] for t in induction_figures(ind, [ind])["induction_score"]["data"]]
    assert sum("2 seeds" in n for n in names) == len(ind["models"])
    # the report reads the other seeds from STAGE/seeds.json
    from circuitlab.experiments.reproduce import _other_seeds

    stage = tmp_path / "grokking"
    (stage / "seeds" / "1").mkdir(parents=True)
    (stage / "seeds" / "1" / "results.json").write_text(json.dumps(other))
    (stage / "seeds.json").write_text(json.dumps({"seeds": [0, 1]}))
    assert _other_seeds(stage, None) == [other] and _other_seeds(stage, 1) == []


def test_tampered_results_are_escaped_or_refused_in_one_line(results_dir, tmp_path):
    import shutil

    from circuitlab.errors import CircuitlabError

    d = tmp_path / "r"
    shutil.copytree(results_dir, d)
    g = json.loads((d / "grokking" / "results.json").read_text())
    g["p"] = EVIL[2]
    g["key_frequencies"] = EVIL[0]
    (d / "grokking" / "results.json").write_text(json.dumps(g))
    text = build_report(d).read_text()
    assert EVIL[2] not in text and EVIL[0] not in text and "&lt;img src=x" in text
    # the claims table: every field of a claim, with attribute breakouts that carry no angle bracket at all
    breakout = ['x" onmouseover="window.__pwned=3" y="', "x' onfocus='window.__pwned=4' autofocus '"]
    claim = g["claims"][0]
    for i, key in enumerate(("claim", "expected", "measured", "verdict", "section")):
        claim[key] = (EVIL + breakout)[i]
    (d / "grokking" / "results.json").write_text(json.dumps(g))
    text = build_report(d).read_text()
    for payload in EVIL + breakout:
        assert payload not in text, payload
    assert "onmouseover=&quot;window.__pwned=3&quot;" in text and "onfocus=&#x27;window.__pwned=4&#x27;" in text
    g["ablation"]["full_loss"] = "not a number"
    (d / "grokking" / "results.json").write_text(json.dumps(g))
    with pytest.raises(CircuitlabError, match="damaged or from another version"):
        build_report(d)


def test_report_shows_the_float_noise_check_and_ignores_a_stale_one(results_dir, tmp_path):
    """STAGE/float-noise.json (`circuitlab experiment grokking --float-noise N`) puts each claim over the runs in the
    claims table, a flipped one as 'unstable'; one made from an earlier run 0 (other verdicts) is not used."""
    from circuitlab.experiments.claims import Claim
    from circuitlab.experiments.noise import NoiseResults, stability
    from circuitlab.experiments.seeds import aggregate

    d = tmp_path / "r"
    shutil.copytree(results_dir, d)
    unchecked = re.compile(r"The verdicts of ([a-z, ]+) are one training run's")
    assert unchecked.search(build_report(d).read_text())[1] == "circuits, induction, grokking"  # IOI trains nothing
    own = GrokkingResults.load(d / "grokking" / "results.json").claims
    flip = {"reproduced": "not reproduced", "not reproduced": "reproduced"}
    i = next(i for i, c in enumerate(own) if c.verdict in flip)
    other = [Claim(c.paper, c.claim, c.expected, c.measured, flip[c.verdict] if j == i else c.verdict, c.section)
             for j, c in enumerate(own)]
    noise = NoiseResults("grokking", "paper", [0, 1], ["a", "b"], aggregate([own, other], stability), 1)
    noise.save(d / "grokking" / "float-noise.json")
    text = build_report(d).read_text()
    assert "unstable: reproduced in 1 of 2 runs" in text and "1 unstable" in text  # one of the two reproduces it
    assert unchecked.search(text)[1] == "circuits, induction"  # grokking's verdicts are checked now
    stale = NoiseResults("grokking", "paper", [0, 1], ["a", "b"], aggregate([other, other], stability), 0)
    stale.save(d / "grokking" / "float-noise.json")
    text = build_report(d).read_text()
    assert "unstable: reproduced" not in text and "1 unstable" not in text
    assert unchecked.search(text)[1] == "circuits, induction, grokking"  # a stale check checks nothing
