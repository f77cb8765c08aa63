"""The over-optimisation study engine: end to end on tiny models, its fits, its JSON, its checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from auq.testbed.policy import PolicyConfig
from auq.training.overoptimization import (
    CURVE_FIELDS,
    SELECTORS,
    StudyConfig,
    StudyResult,
    default_ns,
    gao_fit,
    run_study,
)

TINY_POLICY = PolicyConfig(
    n_layer=1, n_head=2, n_embd=16, n_positions=256, steps=4, batch_size=8, n_train=48,
    n_eval=0, wide_fraction=0.5,
)  # fmt: skip
SEEDS, NOISES, POOL = (0, 1), (0.0, 0.25), 8
THREADS = torch.get_num_threads()


@pytest.fixture(scope="module")
def policy_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("policy-cache"))


@pytest.fixture(scope="module")
def study(tiny_bert_dir, policy_cache):
    config = StudyConfig(
        seeds=SEEDS,
        label_noises=NOISES,
        n_train=40,
        n_calibration=20,
        n_test=16,
        n_prompts=2,
        pool_size=POOL,
        n_heads=3,
        backbone=str(tiny_bert_dir),
        policy_config=TINY_POLICY,
        cache_dir=policy_cache,
        max_new_tokens=24,
        proxy_options={"pyro": {"num_steps": 20, "n_samples": 16}},
        num_threads=1,
        progress=False,
    )
    return run_study(config)


def test_study_runs_end_to_end_with_curves_of_the_right_shape(study):
    config = study.config
    assert config.ns == (1, 2, 4, 8) and set(config.selectors) == {
        s for s in SELECTORS if not s.startswith("deep")
    }
    assert len(study.curves) == len(SEEDS) * len(NOISES) * len(config.selectors) * len(config.ns)
    assert all(tuple(row) == CURVE_FIELDS for row in study.curves)
    for seed in SEEDS:
        for noise in NOISES:
            for name in config.selectors:
                c = study.curve(name, noise, seed)
                assert c["n"].tolist() == [1, 2, 4, 8]
                assert c["kl"][0] == 0 and np.all(np.diff(c["kl"]) >= -1e-12)
                assert np.all(c["kl"] <= c["kl_bound"] + 1e-9)
                assert np.all(np.isfinite(c["gold"])) and np.all(c["std"] >= 0)
                assert abs(c["gap"][0]) < 1e-6  # the gap map is fitted on the pool itself
    assert {r["proxy"] for r in study.costs} == {"single", "heads", "laplace", "pyro"}
    assert len(study.costs) == len(study.fits) == len(SEEDS) * len(NOISES) * 4
    assert all(r["score_seconds"] > 0 and r["fit_seconds"] > 0 for r in study.costs)
    for unit in ("", "_cpu"):
        assert [r[f"score_ratio{unit}"] for r in study.costs if r["proxy"] == "single"] == [1.0] * 4
    splits = {(r["seed"], r["label_noise"], r["split"]) for r in study.noise}
    assert len(splits) == len(study.noise) == len(SEEDS) * len(NOISES) * 3
    assert all(r["n_flipped"] == 0 for r in study.noise if r["label_noise"] == 0.0)
    assert len(study.early_warning) == len(SEEDS) * len(NOISES) * len(config.selectors)
    for noise in NOISES:
        rel = study.reliability[noise]
        assert len(rel["y_true"]) == len(rel["prob_after"]) == 2 * 16 * len(SEEDS)
        assert set(np.unique(rel["y_true"])) == {0.0, 1.0} and len(rel["temperature"]) == 2
    assert [p["seed"] for p in study.meta["pools"]] == list(SEEDS)
    assert study.meta["torch_threads"] == 1 and torch.get_num_threads() == THREADS  # restored


def test_a_deep_ensemble_scores_the_pool_with_its_own_backbones(study, tiny_bert_dir, policy_cache):
    config = StudyConfig(
        seeds=(0,), label_noises=(0.25,), n_train=12, n_calibration=8, n_test=4, n_prompts=2,
        pool_size=POOL, selectors=("mean", "deep_mean", "deep_uwo_0.5"), deep_members=2,
        backbone=str(tiny_bert_dir), policy_config=TINY_POLICY, cache_dir=policy_cache,
        max_new_tokens=24, num_threads=1, progress=False,
    )  # fmt: skip
    result = run_study(config)
    costs = {c["proxy"]: c for c in result.costs}
    assert set(costs) == {"heads", "deep"}  # heads always: the reliability data and the monitor
    assert costs["deep"]["shared_backbone"] is False and costs["deep"]["backbone_seconds"] == 0
    assert costs["deep"]["score_seconds"] > 0 and costs["deep"]["n_members"] == 2
    deep_fit = next(f for f in result.fits if f["proxy"] == "deep")
    assert math.isnan(deep_fit["accuracy_test"]) and 0 <= deep_fit["accuracy_calibration"] <= 1
    same_pool = study.meta["pools"][0]["gold_mean"]  # seed 0's pool: same policy, prompts, seed
    assert result.curve("deep_mean", 0.25)["gold"][0] == pytest.approx(same_pool, abs=1e-12)
    assert np.all(result.curve("deep_uwo_0.5", 0.25)["std"] >= 0)


def test_best_of_one_is_the_pool_mean_gold_for_every_selector(study):
    for pool in study.meta["pools"]:
        for row in study.curves:
            if row["seed"] == pool["seed"] and row["n"] == 1:
                assert row["gold"] == pytest.approx(pool["gold_mean"], abs=1e-12)
                assert row["kl"] == 0.0 and row["kl_bound"] == 0.0


def test_summary_and_coste_ordering_read_the_curves(study):
    rows = study.summary()
    assert len(rows) == len(NOISES) * len(study.config.selectors)
    for row in rows:
        c = [study.curve(row["selector"], row["label_noise"], s) for s in SEEDS]
        assert row["gold_n_max"] == pytest.approx(np.mean([x["gold"][-1] for x in c]))
        assert row["peak_gold"] >= row["gold_n_max"] - 1e-12
        assert row["peak_gold"] >= row["gold_n1"] - 1e-12
    single = next(r for r in rows if r["selector"] == "single")
    assert single["warning_std_source"] == "heads"  # one head has no spread of its own
    verdict = study.coste_ordering(0.25)
    gold = verdict["gold"]
    assert verdict["holds"] == (
        max(gold[s] for s in ("wco", "uwo_0.1", "uwo_0.5", "uwo_1", "lcb"))
        >= gold["mean"]
        > gold["single"]
    )
    with pytest.raises(ValueError, match=r"label_noise=0.1 was not studied"):
        study.coste_ordering(0.1)


def test_json_round_trip_is_strict_and_lossless(study, tmp_path):
    path = study.to_json(tmp_path / "study.json")
    raw = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert raw["config"]["seeds"] == list(SEEDS)
    back = StudyResult.from_json(path)
    assert back.config == study.config
    assert back.curves == study.curves and back.costs == study.costs
    assert back.noise == study.noise and back.fits == study.fits
    for noise in NOISES:
        np.testing.assert_array_equal(back.reliability[noise]["prob_after"],
                                      study.reliability[noise]["prob_after"])  # fmt: skip
    for a, b in zip(back.summary(), study.summary(), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (
                isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])
            )


def test_study_plots_write_figures(study, tmp_path):
    from auq.training.study_plots import (
        plot_overoptimization,
        plot_pick_std,
        plot_study_reliability,
    )

    plot_overoptimization(study, save_path=tmp_path / "o.png")
    plot_pick_std(study, 0.25, save_path=tmp_path / "s.png")
    plot_study_reliability(study, 0.0, save_path=tmp_path / "r.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("o.png", "s.png", "r.png"))
    with pytest.raises(ValueError, match=r"selectors \['deep_mean'\] are not in this study"):
        plot_overoptimization(study, selectors=["deep_mean"])


def _synthetic(alpha: float, beta: float) -> StudyResult:
    """Curves gold(n) − gold(1) = d·(α − β·d) exactly, two seeds, two selectors."""
    config = StudyConfig(
        seeds=(0, 1), label_noises=(0.25,), pool_size=64, selectors=("single", "mean")
    )
    curves = []
    for seed in config.seeds:
        for name in config.selectors:
            for n in config.ns:
                kl = math.log(n) - (n - 1) / n
                d = math.sqrt(kl)
                row = dict.fromkeys(CURVE_FIELDS, 0.0)
                row.update(seed=seed, label_noise=0.25, selector=name, n=n, kl=kl, kl_bound=kl)
                row["gold"] = -1.0 + 0.1 * seed + d * (alpha - beta * d)
                row["gold"] -= 0.3 * d if name == "single" else 0.0
                curves.append(row)
    return StudyResult(config=config, curves=curves)


def test_gao_fit_recovers_alpha_and_beta_exactly():
    d = np.sqrt(np.log(np.arange(1, 300)) - (np.arange(1, 300) - 1) / np.arange(1, 300))
    fit = gao_fit(d, d * (1.7 - 0.45 * d))
    assert fit["alpha"] == pytest.approx(1.7, abs=1e-10)
    assert fit["beta"] == pytest.approx(0.45, abs=1e-10)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["d_peak"] == pytest.approx(1.7 / 0.9)
    assert math.isnan(gao_fit([0.0, 0.0], [0.0, 0.0])["alpha"])  # nothing to fit
    row = next(r for r in _synthetic(1.2, 0.5).summary() if r["selector"] == "mean")
    assert row["gao_alpha"] == pytest.approx(1.2, abs=1e-10)  # pooled over seeds, offsets removed
    assert row["gao_beta"] == pytest.approx(0.5, abs=1e-10)
    assert row["gao_r2"] == pytest.approx(1.0, abs=1e-12)
    assert row["gao_kl_peak"] == pytest.approx((1.2 / 1.0) ** 2)


def test_peak_and_coste_ordering_on_known_curves():
    result = _synthetic(1.2, 0.5)  # single = mean − 0.3·d: mean beats single beyond n = 1
    rows = {r["selector"]: r for r in result.summary()}
    ns = np.array(result.config.ns)
    d = np.sqrt(np.log(ns) - (ns - 1) / ns)
    assert rows["mean"]["peak_n"] == ns[np.argmin(np.abs(d - 1.2))]  # parabola in d, top at 1.2
    assert rows["mean"]["peak_n_std"] == 0.0
    verdict = result.coste_ordering(0.25)
    assert verdict["mean_gt_single"] is True and verdict["holds"] is None  # no conservative run
    assert "needs a conservative selector" in verdict["note"]


def test_default_ns_are_powers_of_two_ending_at_the_pool():
    assert default_ns(1024) == tuple(2**i for i in range(11))
    assert default_ns(12) == (1, 2, 4, 8, 12)
    assert default_ns(1) == (1,)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seeds": ()}, r"StudyConfig.seeds must be a non-empty sequence"),
        ({"seeds": (0, 0)}, r"StudyConfig.seeds must be free of repeats"),
        ({"seeds": (-1,)}, r"StudyConfig.seeds\[0\] must be an integer >= 0"),
        ({"label_noises": (0.5,)}, r"StudyConfig.label_noises must be .* in \[0, 0.5\)"),
        ({"n_train": 1}, r"StudyConfig.n_train must be an integer >= 2"),
        ({"n_calibration": 0}, r"StudyConfig.n_calibration must be an integer >= 2"),
        ({"n_test": 1.5}, r"StudyConfig.n_test must be an integer >= 2"),
        ({"n_prompts": 0}, r"StudyConfig.n_prompts must be an integer >= 1"),
        ({"pool_size": True}, r"StudyConfig.pool_size must be an integer >= 1"),
        (
            {"pool_size": 8, "ns": (1, 16)},
            r"StudyConfig.ns must be increasing integers in \[1, pool_size=8\]",
        ),
        ({"ns": (2, 4)}, r"StudyConfig.ns must be .* starting at 1"),
        ({"ns": (1, 4, 2)}, r"StudyConfig.ns must be increasing"),
        ({"selectors": ("mean", "best")}, r"unknown name\(s\) \['best'\]; valid choices: 'single'"),
        ({"selectors": ("deep_mean",)}, r"StudyConfig.deep_members=0 fits no deep ensemble"),
        ({"selectors": "mean"}, r"StudyConfig.selectors must be a non-empty sequence"),
        ({"n_heads": 1}, r"StudyConfig.n_heads must be an integer >= 2"),
        ({"deep_members": 1}, r"StudyConfig.deep_members must be 0 \(no deep ensemble\)"),
        ({"deep_epochs": 0}, r"StudyConfig.deep_epochs must be an integer >= 1"),
        ({"backbone": 3}, r"StudyConfig.backbone must be None, a str or a path"),
        ({"policy_config": {"steps": 3}}, r"StudyConfig.policy_config must be None or an auq"),
        ({"max_new_tokens": 0}, r"StudyConfig.max_new_tokens must be an integer >= 1"),
        ({"progress": "yes"}, r"StudyConfig.progress must be True, False or None"),
        ({"calibration": "platt"}, r"StudyConfig.calibration='platt' is not supported; valid"),
        ({"proxy_options": {"lora": {}}}, r"proxy_options names unknown proxy\(ies\) \['lora'\]"),
        ({"max_length": 4}, r"StudyConfig.max_length must be an integer >= 8"),
        ({"num_threads": 0}, r"StudyConfig.num_threads must be an integer >= 1"),
    ],
)
def test_bad_config_fields_are_refused_naming_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**options)


def test_deep_selectors_come_with_a_deep_ensemble_and_run_study_wants_a_config():
    assert "deep_uwo_0.5" in StudyConfig(deep_members=5).selectors
    assert "deep" in StudyConfig(deep_members=5).proxies
    assert StudyConfig(selectors=("laplace",)).proxies == ("heads", "laplace")
    with pytest.raises(TypeError, match=r"config must be a StudyConfig, got dict"):
        run_study({"seeds": (0,)})
