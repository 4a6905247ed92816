"""The shared vocabulary: typed results that survive JSON, the Head type, the one head-role definition, and the one
way saved configs are reloaded."""

import json
import math
from dataclasses import dataclass

import pytest
import torch

from circuitlab.errors import CircuitlabError
from circuitlab.heads import INDUCTION, Head, best_head, head_roles, induction_heads
from circuitlab.model import ModelConfig
from circuitlab.results import Result, from_jsonable, to_jsonable
from circuitlab.training import TrainConfig


@dataclass
class Inner(Result):
    head: Head
    score: float
    note: str | None = None


@dataclass
class Outer(Result):
    heads: list[Head]
    inner: list[Inner]
    by_name: dict[str, Inner]
    matrix: torch.Tensor
    maybe: Inner | None = None
    counts: dict[int, int] | None = None


def test_typed_results_round_trip_through_json(tmp_path):
    r = Outer([Head(1, 2)], [Inner(Head(0, 3), 0.5)], {"a": Inner(Head(2, 0), float("nan"), "x")},
              torch.tensor([[1.0, float("nan")]]), None, {3: 7})
    data = json.loads(json.dumps(r.to_json()))
    assert data["heads"] == ["1.2"] and data["inner"][0]["head"] == "0.3" and data["matrix"] == [[1.0, None]]
    back = Outer.from_json(data)
    assert back.heads == [Head(1, 2)] and isinstance(back.heads[0], Head)
    assert back.inner[0] == Inner(Head(0, 3), 0.5) and back.counts == {3: 7}
    assert math.isnan(back.by_name["a"].score) and back.by_name["a"].note == "x"
    assert torch.isnan(back.matrix[0, 1]) and back.matrix[0, 0] == 1.0
    back.save(tmp_path / "r.json")
    assert Outer.load(tmp_path / "r.json").to_json() == r.to_json()


def test_damaged_or_foreign_results_are_one_clear_error(tmp_path):
    with pytest.raises(KeyError, match="no fields"):
        from_jsonable(Inner, {"head": "0.1", "score": 1.0, "surprise": 2})
    with pytest.raises(TypeError):
        from_jsonable(Inner, {"head": "0.1", "score": "high"})
    (tmp_path / "bad.json").write_text('{"head": "0.1"')
    with pytest.raises(CircuitlabError, match="damaged"):
        Inner.load(tmp_path / "bad.json")
    with pytest.raises(CircuitlabError, match="does not exist"):
        Inner.load(tmp_path / "missing.json")


def test_head_is_a_tuple_that_indexes_scores_and_prints_as_in_the_papers():
    h = Head.parse("1.3")
    assert h == Head(1, 3) == (1, 3) and str(h) == "1.3" and to_jsonable(h) == "1.3"
    scores = torch.arange(8.0).view(2, 4)
    assert scores[h] == 7.0 and Head.of_index(6, 4) == Head(1, 2)
    assert best_head(scores) == Head(1, 3) and best_head(torch.tensor([[9.0, 0], [1, 2]]), min_layer=1) == Head(1, 1)


def test_one_induction_head_definition():
    s = torch.tensor([[0.02, 0.5], [0.3, 0.2]])
    # >= INDUCTION and >= half the best: 0.3 passes, 0.2 is under half of 0.5
    assert induction_heads(s) == [Head(0, 1), Head(1, 0)]
    assert induction_heads(torch.full((2, 2), INDUCTION / 2)) == []  # an untrained model has none
    assert induction_heads(torch.tensor([[0.0, 0.0], [0.0, INDUCTION]])) == [Head(1, 1)]
    assert head_roles(Head(1, 0), previous_token=0.9, ov_copying=0.7, induction_group=[Head(1, 0)]) == [
        "previous-token", "induction", "copying"]
    assert head_roles(Head(1, 0), previous_token=0.1, ov_copying=-0.7, induction_group=[]) == []


def test_saved_configs_with_unknown_fields_are_refused():
    for cls, what in ((ModelConfig, "model"), (TrainConfig, "training")):
        d = cls().to_dict()
        assert cls.from_dict(d) == cls()
        with pytest.raises(CircuitlabError, match=f"{what} config has unknown fields \\['from_the_future'\\]"):
            cls.from_dict({**d, "from_the_future": 1})


def test_a_verdict_that_float_noise_flips_is_unstable(tmp_path):
    """The float-noise check (`experiments/noise.py`): runs that agree keep their verdict; runs that disagree make
    it 'unstable', not a result; run k > 0 gets `init_noise` k in every model, run 0 the preset itself."""
    from circuitlab.experiments.claims import Claim
    from circuitlab.experiments.noise import NoiseResults, run_noise, stability, with_noise
    from circuitlab.experiments.seeds import SeedClaim
    from circuitlab.training.presets import ExperimentPreset, Preset

    assert stability(["reproduced"] * 3) == "reproduced" and stability(["differs"] * 2) == "differs"
    assert stability(["not reproduced"] * 2) == "not reproduced"
    assert stability(["reproduced", "not reproduced", "reproduced"]) == "unstable: reproduced in 2 of 3 runs"
    preset = ExperimentPreset("quick", {"m": Preset("m", {"seed": 0}), "n": Preset("n", {"seed": 1})})
    assert with_noise(preset, 0) is preset
    assert [p.model["init_noise"] for p in with_noise(preset, 2).models.values()] == [2, 2]
    assert with_noise(preset, 2).settings["init_noise"] == 2 and "init_noise" not in preset.settings
    seen = []

    class Ran:  # a planted experiment: its first claim's value sits on the threshold, so noise decides it
        def __init__(self, noise):
            value = 0.70 + (0.01 if noise % 2 == 0 else -0.01)
            self.claims = [Claim("P", "near its threshold", ">= 0.70", f"{value:.2f}", "reproduced" if value >= 0.7
                                 else "not reproduced"), Claim("P", "far from it", ">= 0.70", "0.95", "reproduced")]

    def run(p, d, k):
        seen.append((d, p.models["m"].model.get("init_noise", 0)))
        assert k == seen[-1][1]
        return Ran(seen[-1][1])

    r = run_noise("planted", run, preset, tmp_path, 2)
    assert seen == [(tmp_path, 0), (tmp_path / "float-noise" / "1", 1), (tmp_path / "float-noise" / "2", 2)]
    near, far = r.claims
    assert near.verdict == "unstable: reproduced in 2 of 3 runs" and near.measured == "0.69…0.71"
    assert far.verdict == "reproduced" and r.unstable == 1 and r.runs == [0, 1, 2]
    from circuitlab.experiments.seeds import spread

    assert spread(["window none", "window 1.0M"], "run") == "run 0: window none | run 1: window 1.0M"
    saved = NoiseResults.load(tmp_path / "float-noise.json")
    assert isinstance(saved.claims[0], SeedClaim) and saved.claims[0].verdicts == ["reproduced", "not reproduced",
                                                                                    "reproduced"]
    with pytest.raises(CircuitlabError, match="at least 1"):
        run_noise("planted", run, preset, tmp_path, 0)


def test_claims_over_seeds_give_k_of_n_and_the_spread_of_every_number():
    from circuitlab.experiments.claims import Claim
    from circuitlab.experiments.seeds import aggregate, spread

    assert spread(["window 9.2M–14.6M tokens; score 0.041 → 0.166", "window 8.1M–15.0M tokens; score 0.050 → 0.151"]) \
        == "window 8.1…9.2M–14.6…15.0M tokens; score 0.041…0.050 → 0.151…0.166"
    assert spread(["same 1.0", "same 1.0"]) == "same 1.0"
    # lists, exponents, thousands and ranges keep their punctuation: each number is ranged as a number
    assert spread(["freqs [19, 22]; loss 3.27e-07, then 1,350", "freqs [19, 22]; loss 5.44e-08, then 1,360"]) \
        == "freqs [19, 22]; loss 5.44e-08…3.27e-07, then 1,350…1,360"
    assert spread(["freqs [19, 22] {19: 93}", "freqs [22, 24] {22: 90}"], "run") == \
        "run 0: freqs [19, 22] {19: 93} | run 1: freqs [22, 24] {22: 90}"  # named things are listed, not ranged
    assert spread(["head 1.0: 0.95 of its attention", "head 1.3: 0.94 of its attention"]) == \
        "seed 0: head 1.0: 0.95 of its attention | seed 1: head 1.3: 0.94 of its attention"
    assert spread(["K-composition 0.1 → 1.3: 0.226; 1.3's margin", "K-composition 0.1 → 1.3: 0.227; 1.3's margin"]) \
        == "K-composition 0.1 → 1.3: 0.226…0.227; 1.3's margin"
    assert spread(["individual heads 2.59, virtual heads 0.09 nats", "individual heads 2.52, virtual heads 0.09 nats"]) \
        == "individual heads 2.52…2.59, virtual heads 0.09 nats"
    assert spread(["rise 2,304,000-5,632,000 tokens", "rise 2,304,000-4,540,416 tokens"]) \
        == "rise 2,304,000-4,540,416…5,632,000 tokens"
    assert spread(["ICL -0.129 → -0.418", "ICL -0.123 → -0.388"]) == "ICL -0.129…-0.123 → -0.418…-0.388"
    assert spread(["window none found", "window 1.0M–2.0M"]) == "seed 0: window none found | seed 1: window 1.0M–2.0M"
    c = lambda v, m: Claim("P", "claim", "e", m, v)  # noqa: E731
    # the IOI claims name heads as the claims write them (`_heads`, `_set`): a head is never ranged with another
    from circuitlab.experiments.ioi.claims import _heads, _set

    movers = [f"{_heads(hs)}; copy score {s}%" for hs, s in (([(23, 0), (23, 2), (23, 7)], 86),
                                                                ([(23, 0), (23, 5), (23, 7)], 80))]
    assert movers[0] == "heads 23.0, 23.2, 23.7; copy score 86%"
    assert spread(movers) == f"seed 0: {movers[0]} | seed 1: {movers[1]}"  # not "23.2…23.5"
    assert spread([movers[0], movers[0].replace("86", "80")]) == "heads 23.0, 23.2, 23.7; copy score 80…86%"
    ends = [_heads([(19, 2), (20, h)]) for h in (0, 1)]  # a list at the end of the text, or before the gate's " —"
    assert spread(ends) == "seed 0: heads 19.2, 20.0 | seed 1: heads 19.2, 20.1"
    assert spread([f"{_heads([(16, h)])} — judged only on a model that does IOI" for h in (0, 1)]).startswith("seed 0")
    assert spread([f"largest 4.{d} (class: negative name mover: {_set([(24, h)])}) of 10 K" for d, h in
                   ((58, 4), (61, 5))]) == ("seed 0: largest 4.58 (class: negative name mover: {24.4}) of 10 K | "
                                            "seed 1: largest 4.61 (class: negative name mover: {24.5}) of 10 K")
    assert spread([f"shared: {_heads([(9, h)])})" for h in (9, 6)]) == "seed 0: shared: head 9.9) | seed 1: shared: head 9.6)"
    # ... and the numbers beside them still range
    assert spread([f"weakest {_heads([(19, 2)])}: {x} (3.9% of F(M)); a random set of 13 heads: F {f}" for x, f in
                   (("0.199", "0.15"), ("0.210", "0.20"))]) == \
        "weakest head 19.2: 0.199…0.210 (3.9% of F(M)); a random set of 13 heads: F 0.15…0.20"
    assert _heads([]) == "none" and _set(["16.0", (24, 4)]) == "{16.0, 24.4}"
    seeds = [[c("reproduced", "x 1"), c("differs", "y")], [c("not reproduced", "x 3"), c("differs", "y")],
             [c("reproduced", "x 2"), c("differs", "y")]]
    a, b = aggregate(seeds)
    assert (a.verdict, a.reproduced, a.seeds, a.measured) == ("reproduced in 2 of 3 seeds", 2, 3, "x 1…3")
    assert b.verdict == "differs" and aggregate([[c("reproduced", "x")]] * 2)[0].verdict == "reproduced"
    with pytest.raises(ValueError, match="differ"):
        aggregate([[c("reproduced", "x")], [c("reproduced", "x"), c("reproduced", "x")]])
