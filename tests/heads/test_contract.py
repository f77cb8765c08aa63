"""One contract for every head: the same fit, the same fitted state, the same refusals."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from auq.heads import EnsembleHead, LaplaceHead, PreferenceHead, load_head, save_head
from auq.utils.io import CheckpointError

D = 5


def _make(kind: str, **kwargs) -> PreferenceHead:
    if kind == "ensemble":
        return EnsembleHead(D, n_members=4, **kwargs)
    if kind == "laplace":
        return LaplaceHead(D, **{"prior_precision": 1.0, **kwargs})
    from auq.heads import PyroHead

    return PyroHead(D, **{"guide": "mvn", "num_steps": 60, "n_samples": 32, **kwargs})


KINDS = ["ensemble", "laplace", "pyro"]


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, generator=g)
    a, b = torch.randn(300, D, generator=g), torch.randn(300, D, generator=g)
    a_wins = torch.rand(300, generator=g) < torch.sigmoid(2 * (a - b) @ w)
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    return chosen[:240], rejected[:240], chosen[240:], rejected[240:]


def _fit(head, pairs, **kwargs):
    c, r, ec, er = pairs
    if isinstance(head, EnsembleHead):
        kwargs.setdefault("epochs", 25)
        kwargs.setdefault("lr", 0.05)
    return head.fit(c, r, eval_pairs=(ec, er), progress=False, **kwargs)


def test_every_head_shares_the_one_fit():
    from auq.heads import PyroHead

    for cls in (EnsembleHead, LaplaceHead, PyroHead):
        assert cls.fit is PreferenceHead.fit, f"{cls.__name__} overrides fit"
    params = inspect.signature(PreferenceHead.fit).parameters
    assert list(params)[:3] == ["self", "phi_chosen", "phi_rejected"]
    assert {"margin", "weight", "eval_pairs", "warm_start", "progress"} <= set(params)


@pytest.mark.parametrize("kind", KINDS)
def test_not_fitted_until_fit_then_fitted_state(kind, pairs):
    head = _make(kind)
    assert not head.is_fitted
    with pytest.raises(RuntimeError, match="is not fitted yet; call .fit"):
        head.predict(pairs[0])
    _fit(head, pairs)
    assert head.is_fitted and int(head.n_pairs_) == 240
    history = head.history_
    assert history.train_loss and history.train_accuracy
    assert history.eval_loss and 0.5 < history.eval_accuracy[-1] <= 1.0
    fitted = [name for name, _ in head.named_buffers() if not name.startswith("anchor_")]
    assert all(name.endswith("_") for name in fitted), fitted


@pytest.mark.parametrize(
    ("kind", "option", "message"),
    [
        ("laplace", {"epochs": 3}, r"LaplaceHead does not use the training option\(s\) epochs"),
        ("pyro", {"lr": 0.1}, r"PyroHead does not use the training option\(s\) lr \(SVI/NUTS"),
        (
            "ensemble",
            {"head_lr": 0.1},
            r"head_lr and gradient_checkpointing apply only when a backbone trains",
        ),
    ],
)
def test_training_options_a_head_cannot_use_are_refused(kind, option, message, pairs):
    with pytest.raises(ValueError, match=message):
        _fit(_make(kind), pairs, **option)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_training_options_list_the_valid_ones(kind, pairs):
    with pytest.raises(TypeError, match=r"unknown training option\(s\) epocs; valid: batch_size"):
        _make(kind).fit(*pairs[:2], epocs=3)


@pytest.mark.parametrize(("kind", "n"), [("ensemble", 4), ("laplace", 7), ("pyro", 9)])
def test_n_samples_drives_the_samples(kind, n, pairs):
    extra = {} if kind == "ensemble" else {"n_samples": n}
    head = _fit(_make(kind, **extra), pairs)
    assert head.n_samples == n
    assert head.predict(pairs[2]).samples.shape == (n, 60)
    assert head.predict_pairs(pairs[2], pairs[3]).margin_samples.shape == (n, 60)


def test_second_fit_starts_from_scratch_unless_warm_start(pairs):
    c, r, _, _ = pairs
    once = EnsembleHead(D, n_members=3, seed=1).fit(c, r, epochs=2, progress=False)
    twice = EnsembleHead(D, n_members=3, seed=1).fit(c[:50], r[:50], epochs=2, progress=False)
    twice.fit(c, r, epochs=2, progress=False)
    torch.testing.assert_close(twice.w_out, once.w_out)  # the first fit left no trace
    warm = EnsembleHead(D, n_members=3, seed=1).fit(c, r, epochs=2, progress=False)
    warm.fit(c, r, epochs=2, progress=False, warm_start=True)
    assert not torch.allclose(warm.w_out, once.w_out)  # continued: two fits' worth


@pytest.mark.parametrize("kind", ["laplace", "pyro"])
def test_warm_start_of_a_posterior_reaches_the_same_posterior(kind, pairs):
    cold = _fit(_make(kind), pairs)
    warm = _fit(_fit(_make(kind), pairs), pairs, warm_start=True)
    torch.testing.assert_close(warm.weight_, cold.weight_, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_init_from_linear_scores_like_the_linear_layer(kind, pairs):
    w, b = torch.randn(D), torch.tensor(0.7)
    phi = pairs[2]
    if kind == "ensemble":
        head = _make(kind).init_from_linear(w, b)
        torch.testing.assert_close(head.predict(phi).mean, phi @ w + b)
        assert head.uses_bootstrap  # identical members need resampling to diverge
        return
    # a very confident prior centred on the layer: the posterior stays on it
    strong = {"prior_precision": 1e6} if kind == "laplace" else {"prior_scale": 1e-3}
    head = _make(kind, **strong).init_from_linear(w, b)
    _fit(head, pairs)
    # (Pyro: the mean of 32 guide draws whose spread is still shrinking after 60 steps)
    tol = 1e-2 if kind == "laplace" else 0.15
    torch.testing.assert_close(head.predict(phi).mean, phi @ w + b, rtol=0, atol=tol)
    assert float(head.offset_) != 0


def test_mlp_members_cannot_start_from_a_linear_layer():
    with pytest.raises(ValueError, match="MLP members .* cannot start from a linear score layer"):
        EnsembleHead(D, hidden_size=4).init_from_linear(torch.randn(D))


def test_bootstrap_weights_reach_the_member_loss(pairs):
    head = EnsembleHead(D, n_members=3, bootstrap=True).fit(*pairs[:2], epochs=1, progress=False)
    head.begin_training(240)
    idx = torch.arange(32)
    r = torch.randn(3, 64)
    boot = head.member_loss(r[:, :32], r[:, 32:], idx).loss
    head.bootstrap = False
    head.begin_training(240)
    plain = head.member_loss(r[:, :32], r[:, 32:], idx).loss
    assert not torch.allclose(boot, plain)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, pairs, tmp_path):
    head = _fit(_make(kind), pairs)
    save_head(head, tmp_path)
    loaded = load_head(tmp_path)
    assert type(loaded) is type(head) and loaded.is_fitted
    torch.testing.assert_close(loaded.predict(pairs[2]).mean, head.predict(pairs[2]).mean)


def test_damaged_checkpoints_name_the_file(pairs, tmp_path):
    head = _fit(_make("ensemble"), pairs)
    save_head(head, tmp_path)
    weights = tmp_path / "head.safetensors"
    config = tmp_path / "head_config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(CheckpointError, match=r"head\.safetensors: not a readable safetensors"):
        load_head(tmp_path)
    weights.write_bytes(good_weights)

    config.write_text(good_config[:-20])
    with pytest.raises(CheckpointError, match=r"head_config\.json: head config is not valid JSON"):
        load_head(tmp_path)

    config.write_text(json.dumps({"config": {}}))
    with pytest.raises(CheckpointError, match=r"lacks the key\(s\) 'class'"):
        load_head(tmp_path)

    spec = json.loads(good_config)
    spec["config"]["n_members"] = 6
    config.write_text(json.dumps(spec))
    with pytest.raises(
        CheckpointError,
        match=r"tensor '\w+' has shape \(4, 5\), but head_config.json implies \(6, 5\)",
    ):
        load_head(tmp_path)

    spec["config"] = {**json.loads(good_config)["config"], "colour": "red"}
    config.write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match=r"unknown EnsembleHead option\(s\) colour"):
        load_head(tmp_path)

    config.unlink()
    with pytest.raises(CheckpointError, match=r"head_config\.json: head config is missing"):
        load_head(tmp_path)
