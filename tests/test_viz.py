"""The explorer (`circuitlab view`, `circuitlab.viz`): what it packs is what the model computes (a planted induction
circuit), the page is offline and escapes hostile text, and in headless Chromium the slider, the heads and the tokens
redraw the view with no error and no network request."""

import re

import pytest
import torch
from typer.testing import CliRunner

from circuitlab.cli import app
from circuitlab.errors import CircuitlabError
from circuitlab.experiments.grokking import grokking_preset, run_grokking_experiment
from circuitlab.model import ModelConfig
from circuitlab.training import TrainConfig, train
from circuitlab.viz import Text, attention, explore
from circuitlab.viz.explore import build, choose_checkpoints
from circuitlab.viz.views import language_text, unpack_view
from tests.planted import induction_model
from tests.test_report import EVIL, _chrome

runner = CliRunner()


def _repeated(V=200, n=20, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    half = torch.randperm(V - 1, generator=g)[:n] + 1  # distinct: each token has one earlier copy
    return torch.cat([torch.tensor([0]), half, half])


def test_view_of_a_planted_induction_head_is_what_the_model_computes():
    m = induction_model()
    ids = _repeated()
    v = attention(m, ids)
    d = v.data
    a = unpack_view(d, 0)
    T = len(ids)
    assert d["T"] == T and d["n_layers"] == 2 and a["pattern"].shape == (4, T, T)
    # the kept weights are the model's pattern, to 1/255, for every head
    _, cache = m.run_with_cache(ids[None])
    for l in range(2):
        full = cache[f"blocks.{l}.attn.hook_pattern"][0].numpy()
        kept = a["pattern"][l * 2:(l + 1) * 2]
        assert abs(kept - full)[kept > 0].max() <= 0.5 / 255 + 1e-6
    # 1.1 attends from the second copy of a token to the token after its first copy, and writes that token
    ind = 1 * 2 + 1
    for q in range(22, T - 1):
        assert a["pattern"][ind, q].argmax() == q - 19
        assert a["dla_ids"][ind, q, 0] == ids[q + 1]
        assert a["dla_next"][ind, q] > 1.0
    # the previous-token head 0.0 attends one back
    assert all(a["pattern"][0, q].argmax() == q - 1 for q in range(1, T))
    # the per-token loss and the model's top prediction are the model's
    loss = m(ids[None], return_type="loss", loss_per_token=True)[0].detach().numpy()
    assert abs(a["loss"][:-1] - loss).max() < 1e-4 and torch.isnan(torch.tensor(a["loss"][-1]))
    logits = m(ids[None])[0]
    assert (a["pred_ids"][:, 0] == logits.argmax(-1).numpy()).all()
    # the induction head is the second half's whole story: low loss there, high in the first half
    assert a["loss"][22:T - 1].mean() < 0.1 < a["loss"][1:20].mean()


def test_windows_cut_a_long_text_with_bos_and_keep_each_tokens_text(tiny_data):
    tok = tiny_data.tokenizer
    text = "def f(x):\n    return x + 1\n" * 30
    t = language_text(text, tok, n_ctx=32, bos=0, max_tokens=100)
    assert t.windows.shape[1] == 32 and t.windows.shape[0] == 4  # 100 tokens, 31 per window
    assert [int(w[0]) for w in t.windows] == [0] * 4
    assert t.strings.count("⟨BOS⟩") == 4 and len(t.strings) == 104
    assert "".join(s for s in t.strings if s != "⟨BOS⟩") == text[:len("".join(s for s in t.strings if s != "⟨BOS⟩"))]
    assert t.notes and "first 100" in t.notes[0]
    # a target is the next token of the same window; the last position of a window has none
    n0 = t.lengths[0]
    assert t.targets[n0 - 1] == -1 and t.targets[0] == int(t.windows[0, 1])


def test_checkpoints_are_spread_evenly_with_the_first_and_the_last():
    steps = list(range(0, 1000, 10))
    got = choose_checkpoints(steps, 7)
    assert got[0] == 0 and got[-1] == 990 and len(got) == 7
    assert choose_checkpoints(steps[:5], 7) == steps[:5]
    with pytest.raises(CircuitlabError):
        choose_checkpoints(steps, 0)


@pytest.fixture(scope="module")
def lm_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "run"
    train(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=320),
          TrainConfig(batch_size=8, max_steps=60, eval_every=30, checkpoint_every=20, log_checkpoints=4), tiny_data,
          out, progress=False)
    return out


def test_view_command_writes_an_offline_page_that_escapes_hostile_text(lm_run, tmp_path):
    text = tmp_path / "evil.txt"
    text.write_text("x = 1\n" + "\n".join(EVIL) + '\n"quoted" & <b>bold</b>\n')
    out = tmp_path / "view.html"
    r = runner.invoke(app, ["view", str(lm_run), "--text", str(text), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # no remote resource (the SVG namespace is a name)
    assert page.count("</script>") == 2  # the data and the script: the text closed none
    for evil in EVIL + ["<b>bold</b>"]:
        assert evil not in page
    assert "wrote" in r.output and "checkpoints" in r.output
    # the same page from the API, and a smaller slider
    v = explore(lm_run, text.read_text(), checkpoints=3)
    assert len(v.data["checkpoints"]) == 3 and v.data["checkpoints"][-1]["step"] == 60
    assert v.data["scores"] is not None and len(v.data["scores"]["induction"]) == 3
    assert len(v.data["scores"]["induction"][0]) == 8


def test_view_refuses_bad_input_in_one_line(lm_run, tmp_path):
    cases = [
        (["view", str(tmp_path / "nope"), "--text", "x"], "not a circuitlab run"),
        (["view", str(lm_run), "--text", "x", "--checkpoints", "0"], "--checkpoints must be at least 1"),
        (["view", str(lm_run), "--text", "x", "--max-tokens", "0"], "--max-tokens must be"),
        (["view", str(lm_run), "--text", str(tmp_path)], "is a folder"),
        (["view", str(lm_run), "--text", "x", "--out", str(tmp_path)], "is a folder"),
    ]
    for args, words in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert words in r.output and "Traceback" not in r.output, r.output


def test_view_of_a_grokking_run_reads_a_b_equals(tmp_path):
    out = tmp_path / "grok"
    run_grokking_experiment(grokking_preset("paper", p=13, epochs=40, checkpoint_every=20, log_every=20, d_model=16,
                                            d_mlp=32, n_heads=2, d_head=8), out, progress=False)
    run_dir = out / "run"
    page = tmp_path / "g.html"
    r = runner.invoke(app, ["view", str(run_dir), "--text", "3 5 =\n12 12 =", "--out", str(page)])
    assert r.exit_code == 0, r.output
    v = explore(run_dir, "3 5 =\n12 12")
    d = v.data
    assert d["tokens"] == ["3", "5", "=", "12", "12", "="] and d["targets"] == [-1, -1, 8, -1, -1, 11]
    assert d["scores"] is None and d["loss_shift"] == 0 and d["vocab"]["13"] == "="
    a = unpack_view(d, len(d["checkpoints"]) - 1)
    assert not torch.isnan(torch.tensor(a["loss"][[2, 5]])).any() and torch.isnan(torch.tensor(a["loss"][[0, 1]])).all()
    for bad, words in (("3 x =", "is not 'a b ='"), ("3 13 =", "from 0 to 12"), ("", "no 'a b =' line")):
        r = runner.invoke(app, ["view", str(run_dir), "--text", bad, "--out", str(page)])
        assert r.exit_code == 2 and words in r.output, r.output


def _views_page(path, views) -> None:
    from circuitlab.report.page import CSP

    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
                    f'content="{CSP}"></head><body>' + "".join(v._repr_html_() for v in views) + "</body></html>")


def test_explorer_in_headless_chromium(lm_run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    text = "def add(a, b):\n    return a + b\n\n" + EVIL[0] + EVIL[2] + "\ndef add(a, b):\n    return a + b\n"
    path = explore(lm_run, text).save(tmp_path / "view.html")
    driver = _chrome(tmp_path)
    try:
        driver.get(path.as_uri())
        root = driver.find_element(By.CSS_SELECTOR, ".cl-view")
        WebDriverWait(driver, 30).until(lambda d: root.get_attribute("data-draws") not in (None, ""))
        n_ck = int(driver.find_element(By.CSS_SELECTOR, "input.cl-ck").get_attribute("max")) + 1
        assert n_ck >= 4 and root.get_attribute("data-checkpoint") == str(n_ck - 1)
        # hover a token: the head's attention from it colours the tokens, and the panel says where it attends
        tokens = driver.find_elements(By.CSS_SELECTOR, ".cl-tok")
        ActionChains(driver).move_to_element(tokens[12]).perform()
        WebDriverWait(driver, 10).until(lambda d: root.get_attribute("data-query") == "12")
        info = driver.find_element(By.CSS_SELECTOR, ".cl-info").text
        assert "attends to:" in info and "direct logit attribution" in info and "the model predicts" in info
        coloured = lambda: driver.execute_script(  # noqa: E731
            "return Array.from(document.querySelectorAll('.cl-tok')).map(s => s.style.background).join('|')")
        pixels = lambda: driver.execute_script(  # noqa: E731
            "return document.querySelector('canvas.cl-pattern').toDataURL()")
        before, px0 = coloured(), pixels()
        assert "rgba" in before
        # the slider moves the checkpoint and redraws with that checkpoint's pattern
        slider = driver.find_element(By.CSS_SELECTOR, "input.cl-ck")
        draws = int(root.get_attribute("data-draws"))
        slider.send_keys(Keys.HOME)
        WebDriverWait(driver, 10).until(lambda d: root.get_attribute("data-checkpoint") == "0")
        WebDriverWait(driver, 10).until(lambda d: int(root.get_attribute("data-draws")) > draws)
        assert coloured() != before and pixels() != px0
        assert "step 0 " in driver.find_element(By.CSS_SELECTOR, ".cl-ck-label").text
        # clicking a head shows that head
        first = root.get_attribute("data-head")
        target = "0.1" if first != "0.1" else "0.2"
        driver.find_element(By.CSS_SELECTOR, f'button.cl-head[data-layer="0"][data-head="{target[-1]}"]').click()
        WebDriverWait(driver, 10).until(lambda d: root.get_attribute("data-head") == target)
        assert target in driver.find_element(By.CSS_SELECTOR, ".cl-info").text
        # the loss change between two checkpoints colours tokens green or red
        driver.find_element(By.CSS_SELECTOR, 'button.cl-mode[data-mode="change"]').click()
        slider.send_keys(Keys.END)
        WebDriverWait(driver, 10).until(lambda d: root.get_attribute("data-mode") == "change"
                                        and root.get_attribute("data-checkpoint") == str(n_ck - 1))
        assert "rgba(44, 160, 44" in coloured()  # the trained model is better than step 0 on some tokens
        # hostile text is shown as text and ran nothing
        assert driver.execute_script("return window.__pwned === undefined")
        shown = driver.find_element(By.CSS_SELECTOR, ".cl-tokens").text
        assert EVIL[0] + EVIL[2] in re.sub("⟨BOS⟩|⏎|\n", "", shown)
        assert not driver.find_elements(By.CSS_SELECTOR, ".cl-tokens img")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        remote = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                       ".filter(n => !/^(file|data|blob):/.test(n))")
        assert remote == []
        assert root.get_attribute("data-error") is None
        driver.save_screenshot(str(tmp_path / "explorer.png"))
        # two notebook outputs on one page draw independently
        m = induction_model()
        ids = _repeated()
        nb = tmp_path / "notebook.html"
        _views_page(nb, [attention(m, ids), attention(m, ids[:30])])
        driver.get(nb.as_uri())
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('.cl-view')).every(r => r.dataset.draws === '1')"))
        assert len(driver.find_elements(By.CSS_SELECTOR, ".cl-view")) == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, ".cl-view .cl-tok")) == len(ids) + 30
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_build_takes_any_sequence_of_models():
    m = induction_model()
    ids = _repeated()
    t = Text(ids[None], [str(int(i)) for i in ids], ids[1:].tolist() + [-1])
    v = build([({"step": s, "tokens": s, "label": f"s{s}"}, m) for s in (0, 1)], t, "two", str, bos=0)
    assert len(v.data["checkpoints"]) == 2 and v.data["scores"] is not None
    assert v.data["start"] == [1, 1]  # the best induction head is shown first
    assert v.size > 1000
