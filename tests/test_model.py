"""The model: config checking, shapes, the likelihood against a reference, causality, rotary
time invariance, attention capture, contrastive exclusions, backbones."""
import copy
import math
from contextlib import nullcontext

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuroformer.backbones import make_backbone
from neuroformer.config import BackboneConfig, config_from_dict, load_config
from neuroformer.data.windows import IGNORE, LoaderOptions, make_loader
from neuroformer.errors import InputError
from neuroformer.model import Neuroformer, metrics_from_sums
from neuroformer.nn import capture_attention
from neuroformer.training import tiling_windows
from neuroformer import wiener
from neuroformer.assembly import window_spec
from neuroformer.data.windows import collate_windows
from neuroformer.smoothing import smoothed_r
from neuroformer.wiener import fit_wiener

TINY_CFG = {
    "window": {"current": 0.05, "history": 0.05, "frames": 0.1, "behavior": 0.05},
    "modalities": {"behavior": {"variables": {"running.speed": {"predict": False}, "eye.phi": {"predict": True}}}},
    "model": {"width": 16, "heads": 2, "history_layers": 1, "visual_layers": 1, "behavior_layers": 1,
              "decoder_layers": 2, "dropout": 0.0, "backbone": {"name": "patch", "patch": 16}},
    "train": {"batch_size": 8},
}


@pytest.fixture(scope="module")
def setup(tiny_synthetic):
    torch.manual_seed(0)
    cfg = config_from_dict(TINY_CFG)
    loader = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=8, seed=0))
    model = Neuroformer(cfg, len(loader.dataset.vocab), frame_shape=(64, 112)).eval()
    return cfg, model, next(iter(loader))


def test_shipped_configs_load():
    demo, published = load_config("configs/demo.yaml"), load_config("configs/published.yaml")
    assert demo.model.width == 64
    assert (published.model.width, published.model.heads, published.model.decoder_layers) == (256, 8, 6)
    assert published.window.current == published.window.history == 0.05


@pytest.mark.parametrize("raw, field, problem", [
    ({"model": {"widht": 64}}, "model.widht", "unknown key"),
    ({"train": {"batch_size": "32"}}, "train.batch_size", "expected int, got str"),
    ({"model": {"dropout": True}}, "model.dropout", "expected float, got bool"),
    ({"modalities": {"behavior": {"variables": {"speed": {"objective": "ranking"}}}}},
     "modalities.behavior.variables.speed.objective", "unknown objective"),
    ({"model": {"width": 30, "heads": 4}}, "model.heads", "must split into heads"),
    ({"model": {"backbone": {"name": "vit"}}}, "model.backbone.name", "unknown backbone"),
    ({"window": {"target_lag": -0.1}}, "window.target_lag", "must be >= 0"),
    ({"model": {"frame_dropout": 1.0}}, "model.frame_dropout", "must be in \\[0, 1\\)"),
    ({"modalities": {"b": {"variables": {"running.speed": {"reads_frames": False}}}}},
     "modalities.b.variables.running.speed.reads_frames", "false is for a target's read-out"),
])
def test_config_errors_name_the_key(raw, field, problem):
    with pytest.raises(InputError, match=rf"cfg.yaml: {field}: .*{problem}"):
        config_from_dict(raw, "cfg.yaml")


def test_nll_per_spike_matches_a_reference_computation(setup):
    cfg, model, batch = setup
    with torch.no_grad():
        out = model(batch)
        memory, _ = model.encode_context(batch)
        x = model.decode(batch["current"], memory)
        cur = batch["current"]
        gap_log_p, unit_logits = model.spike_outputs(batch, memory, x)
    total, spikes = 0.0, 0
    for b in range(len(x)):
        for i in range(int(cur["mask"][b].sum())):
            d = int(cur["dt_target"][b, i])
            total -= float(gap_log_p[b, i, d])
            if int(cur["unit_target"][b, i]) != IGNORE:
                total -= float(F.log_softmax(unit_logits[b, i], -1)[int(cur["unit_target"][b, i])])
                spikes += 1
    assert spikes == int(batch["n_spikes"].sum())
    assert metrics_from_sums(out)["nll_per_spike"] == pytest.approx(total / spikes, rel=1e-5)
    assert math.log(len(model.unit_emb.weight)) < total / spikes < 20     # untrained: about uniform


def test_population_vector_counts_the_windows_spikes_per_bin(setup):
    cfg, model, batch = setup
    with torch.no_grad():
        pop = model.population(batch)
        doubled = {**batch, "history": {k: torch.cat([v, v], 1) for k, v in batch["history"].items()}}
        pop_doubled = model.population(doubled)
    emb, step = model.unit_emb.weight, cfg.window.current
    n_bins = round((cfg.window.history + cfg.window.current) / step)
    assert pop.shape == (len(batch["t0"]), n_bins, emb.shape[1])
    hist, cur = batch["history"], batch["current"]
    for b in range(len(pop)):
        reference = torch.zeros(n_bins, emb.shape[1])
        for times, units, mask in ((hist["time"][b], hist["unit"][b], hist["mask"][b]),
                                   (cur["time"][b][1:], cur["unit"][b][1:], cur["mask"][b][1:])):
            for t, u in zip(times[mask].tolist(), units[mask].tolist()):
                k = max(0, n_bins - 1 + math.floor(t / step))   # last: the current window; first: from -history
                reference[k] += emb[u] / step
        torch.testing.assert_close(pop[b], reference)
        h = hist["unit"][b][hist["mask"][b]]
        torch.testing.assert_close(pop_doubled[b].sum(0) - pop[b].sum(0), emb[h].sum(0) / step)   # counts add up
    assert pop[:, -1].abs().sum() > 0 and pop[:, 0].abs().sum() > 0      # both bins hold spikes


def test_binned_counts_are_the_population_vector_before_the_embedding(setup):
    cfg, model, batch = setup
    with torch.no_grad():
        counts = model.binned_counts(batch).view(len(batch["t0"]), model.population_bins, -1)
        reference = counts @ model.unit_emb.weight / cfg.window.current
        torch.testing.assert_close(model.population(batch), reference)
    spikes = batch["history"]["mask"].sum() + batch["current"]["mask"][:, 1:].sum()
    assert counts.sum() == spikes                                         # every spike counted once


def wiener_rows(model, dataset, batches, name, times=False):
    """Reference design of the Wiener fit, row by row: each target sample with its window's counts
    (bins, V) and standardised value (and with `times`, its time in the recording and its
    window's index in `batches`)."""
    xs, ys, ts, ws, seen = [], [], [], [], 0
    with torch.no_grad():
        for idx in batches:
            batch = collate_windows([dataset[i] for i in idx])
            counts, z = model.binned_counts(batch), model.standardised(batch, name)
            for b, k in torch.nonzero(batch[f"behavior.{name}"]["mask"]).tolist():
                xs.append(counts[b].double().view(model.population_bins, -1).numpy())
                ys.append(float(z[b, k]))
                ts.append(float(batch["t0"][b]) + float(batch[f"behavior.{name}"]["time"][b, k]))
                ws.append(seen + b)
            seen += len(idx)
    return (np.array(xs), np.array(ys)) + ((np.array(ts), np.array(ws)) if times else ())


def own_history_reference(counts, cap=3, bins_back=2):
    """Each bin's own-history state of counts (..., bins, V), by the formula: the sum over lags
    l = 1..bins_back of min(count l bins before, cap) * (cap + 1) ** (bins_back - l), 0 before bin 0."""
    state = np.zeros(counts.shape, dtype=int)
    for j in range(counts.shape[-2]):
        for lag in range(1, bins_back + 1):
            if j - lag >= 0:
                state[..., j, :] += np.minimum(counts[..., j - lag, :], cap).astype(int) * (cap + 1) ** (bins_back - lag)
    return state


def generalised_cv_reference(x, y, alpha):
    """GCV of StandardScaler + Ridge from its hat matrix (intercept included)."""
    xs = StandardScaler().fit_transform(x)
    xs -= xs.mean(0)
    hat = xs @ np.linalg.solve(xs.T @ xs + alpha * np.eye(x.shape[1]), xs.T) + 1 / len(y)
    residual = y - y.mean() - hat @ (y - y.mean())
    return np.mean(residual ** 2) / (1 - np.trace(hat) / len(y)) ** 2


def test_ridge_path_is_sklearns_standardised_ridge_from_sums_alone():
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (300, 6)).astype(float)
    x[:, 2] = 3.0                                                          # a constant unit
    window = np.sort(rng.integers(0, 300, 450))                            # 0-4 samples a window
    y = x[window] @ rng.normal(size=6) + rng.normal(size=450)
    train = wiener.Moments.empty(6)
    for part in np.array_split(np.arange(300), 7):                        # sums add up over batches
        keep = np.isin(window, part)
        train.add(x[part], np.searchsorted(part, window[keep]), y[keep])
    path = wiener.RidgePath(train)
    shared, other = wiener.Moments.empty(6), wiener.Moments.empty(6)     # a second target, the same windows
    for part in np.array_split(np.arange(300), 7):
        keep = np.isin(window, part)
        gram = shared.add(x[part], np.searchsorted(part, window[keep]), y[keep])
        other.add(x[part], np.searchsorted(part, window[keep]), -y[keep], gram)
    np.testing.assert_allclose(other.sum_xx, train.sum_xx)
    np.testing.assert_allclose(other.sum_xy, -train.sum_xy)
    for alpha in (0.1, 10.0, 1e4):
        reference = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[window], y)
        weight, bias = path.fit(alpha)
        np.testing.assert_allclose(x @ weight + bias, reference.predict(x), rtol=1e-9, atol=1e-9)
        assert abs(weight[2]) < 1e-9                                       # no weight on it
        np.testing.assert_allclose(path.generalised_cv(alpha), generalised_cv_reference(x[window], y, alpha), rtol=1e-9)


def test_expected_counts_read_each_units_own_history_state(setup):
    _, model, _ = setup
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.5, (3, model.population_bins, model.wiener_own_history.shape[0]))
    counts[0, 0, 5] = 7                                                    # above the cap
    table = torch.rand(model.wiener_own_history.shape)
    with torch.no_grad():
        model.wiener_own_history.copy_(table)
        got = model.expected_counts(torch.as_tensor(counts, dtype=torch.float32).flatten(1))
        model.wiener_own_history.zero_()
    state = own_history_reference(counts)
    want = table.numpy()[np.arange(counts.shape[-1]), state].reshape(3, -1)
    np.testing.assert_allclose(got.numpy(), want)


@pytest.fixture(scope="module")
def wide(tiny_synthetic):
    """A model whose window has 6 population bins, its dataset, the training windows and one
    validation batch."""
    raw = copy.deepcopy(TINY_CFG)
    raw["window"]["history"] = 0.25
    cfg = config_from_dict(raw)
    dataset = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=8, seed=0)).dataset
    torch.manual_seed(0)
    model = Neuroformer(cfg, len(dataset.vocab), frame_shape=(64, 112)).eval()
    windows = tiling_windows(dataset.recordings, dataset.spec, "train")
    assert len(windows) > 64 and model.population_bins == 6
    return model, dataset, windows, tiling_windows(dataset.recordings, dataset.spec, "valid")


def cross_validated_r(x, y, times, block, alpha, intervals):
    """Reference of the fit's score: ridge (sklearn) fitted on the samples of every block but one
    predicts that block; the best Pearson r of these predictions over Gaussian smoothings within
    each run of one interval and block (samples in time order, a repeated time read once, from
    its first window)."""
    prediction = np.zeros(len(y))
    for k in np.unique(block):
        prediction[block == k] = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(
            x[block != k], y[block != k]).predict(x[block == k])
    times, first = np.unique(np.round(times, 5), return_index=True)
    prediction, y, block = prediction[first], y[first], block[first]
    run = np.searchsorted(np.asarray(intervals.start), times, side="right") * 100 + block
    best = -1.0
    for width in (0, 1, 2, 4, 8, 16, 32, 64):
        smoothed = prediction.copy()
        for k in np.unique(run):
            if width:
                smoothed[run == k] = gaussian_filter1d(prediction[run == k], width, mode="nearest")
        best = max(best, np.corrcoef(smoothed, y)[0, 1])
    return best


def test_wiener_filter_is_the_cross_validated_ridge_and_adds_to_the_decoded_value(wide):
    model, dataset, windows, valid = wide
    model = copy.deepcopy(model)
    counts, y, times, window_of = wiener_rows(model, dataset, [windows], "eye.phi", times=True)
    counts_v, yv = wiener_rows(model, dataset, [valid], "eye.phi")
    fit = fit_wiener(model, dataset, windows, batch_size=len(windows))   # one batch: generalised cross-validation
    table = own_history_table_reference(model, dataset, windows, first=2)
    np.testing.assert_allclose(model.wiener_own_history.numpy(), table, rtol=1e-5, atol=1e-6)
    expected = lambda c: table[np.arange(c.shape[-1]), own_history_reference(c)]
    designs = {"counts": (counts, counts_v), "innovations": (counts - expected(counts), counts_v - expected(counts_v))}
    rows = {d: (x.reshape(len(x), -1), xv.reshape(len(xv), -1)) for d, (x, xv) in designs.items()}
    gcv = {(d, a): generalised_cv_reference(x, y, a) for d, (x, _) in rows.items() for a in wiener.ALPHAS}
    design, alpha = min(gcv, key=gcv.get)
    assert fit["eye.phi"] == {"penalty": alpha, "input": design}
    fit = fit_wiener(model, dataset, windows, batch_size=4)                # 5 blocks of the batches of 4
    n_batches = -(-len(windows) // 4)
    block = (window_of // 4) * wiener.FOLDS // n_batches
    assert set(block.tolist()) == set(range(wiener.FOLDS))
    intervals = dataset.recordings.get_sampling_intervals("train")[dataset.recordings.recording_ids[0]]
    score = {(d, a): cross_validated_r(x, y, times, block, a, intervals) for d, (x, _) in rows.items()
             for a in wiener.ALPHAS}
    design, alpha = max(score, key=score.get)
    assert model.wiener_targets == ["eye.phi"] and fit["eye.phi"] == {"penalty": alpha, "input": design}
    assert float(model.wiener_innovation[0]) == (design == "innovations")
    with torch.no_grad():
        held_out = collate_windows([dataset[i] for i in valid[:16]])
        window, _ = torch.nonzero(held_out["behavior.eye.phi"]["mask"], as_tuple=True)
        for design in ("counts", "innovations"):                          # each design's read-out, whichever won
            x, xv = rows[design]
            path = wiener.RidgePath(moments(x, y))
            model.wiener_weight[:, 0], model.wiener_bias[0] = map(torch.as_tensor, path.fit(1.0))
            model.wiener_innovation[0] = float(design == "innovations")
            reference = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x, y).predict(xv[:len(window)])
            np.testing.assert_allclose(model.wiener(held_out)[window, 0].numpy(), reference, rtol=1e-4, atol=1e-4)
        context = model.context_parts(held_out)
        memory, _ = model.encode_context(held_out, context)
        x_dec = model.decode(held_out["current"], memory)
        with_filter = model.behavior_outputs(held_out, x_dec, memory, context[0])["eye.phi"]
        got = model.wiener(held_out)[:, 0]
        model.wiener_weight.zero_()
        model.wiener_bias.zero_()
        without = model.behavior_outputs(held_out, x_dec, memory, context[0])["eye.phi"]
    mask = held_out["behavior.eye.phi"]["mask"]
    torch.testing.assert_close((with_filter - without)[..., 0], got[:, None].expand_as(mask))


def test_a_target_sampled_in_one_block_only_is_chosen_by_generalised_cross_validation(monkeypatch):
    """Ten batches in five blocks: "dense" has samples in every batch and is cross-validated
    (against sklearn's ridge per fold and the smoothed r of its out-of-fold trace), "sparse" only
    in the first block's two batches, whose fold would be fitted to none: it falls back to GCV."""
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (10, 8, 4)).astype(float)                         # (batch, window, unit)
    weight = rng.normal(size=4)
    dense = x @ weight + rng.normal(size=(10, 8))
    window = np.arange(8)

    def samples(model, dataset, batches, innovations=False, desc=None):
        for b in range(10):
            out = {"dense": (x[b], window, dense[b], b * 100 + window)}
            if b < 2:
                out["sparse"] = (x[b], window[:3], x[b, :3] @ weight, b * 100 + window[:3])
            yield torch.as_tensor(x[b]), out

    monkeypatch.setattr(wiener, "target_samples", samples)
    model = type("Stub", (), {"wiener_weight": torch.zeros(4, 2), "wiener_targets": ["dense", "sparse"]})()
    losses = wiener.design_losses(model, None, [[0]] * 10, innovations=False)
    sparse_rows = x[:2, :3].reshape(-1, 4)
    gcv = [generalised_cv_reference(sparse_rows, sparse_rows @ weight, a) for a in wiener.ALPHAS]
    np.testing.assert_allclose(losses["sparse"][1], gcv, rtol=1e-6)
    block = np.repeat(np.arange(10) // 2, 8)                              # 2 batches a block
    rows, y, segment = x.reshape(-1, 4), dense.reshape(-1), np.repeat(np.arange(10), 8)   # a segment a batch
    for alpha, loss in zip(wiener.ALPHAS, losses["dense"][1]):
        held_out = np.zeros(len(y))
        for k in range(5):
            fit = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(rows[block != k], y[block != k])
            held_out[block == k] = fit.predict(rows[block == k])
        assert loss == pytest.approx(1 - smoothed_r(held_out, y, segment)[0], abs=1e-9)


def test_a_constant_held_out_target_takes_the_strongest_penalty(monkeypatch):
    """A target constant in every block scores every penalty 1 - r = 1: the filter then shrinks
    most (the weakest penalty would fit noise); a target with a signal keeps its least loss."""
    rng = np.random.default_rng(1)
    x = rng.poisson(2.0, (10, 8, 4)).astype(float)
    signal = x @ rng.normal(size=4) + rng.normal(size=(10, 8))
    window = np.arange(8)

    def samples(model, dataset, batches, innovations=False, desc=None):
        for b in range(10):
            yield torch.as_tensor(x[b]), {"flat": (x[b], window, np.full(8, 3.0), b * 100 + window),
                                          "signal": (x[b], window, signal[b], b * 100 + window)}

    monkeypatch.setattr(wiener, "target_samples", samples)
    model = type("Stub", (), {"wiener_weight": torch.zeros(4, 2), "wiener_targets": ["flat", "signal"]})()
    losses = wiener.design_losses(model, None, [[0]] * 10, innovations=False)
    assert losses["flat"][1] == [1.0] * len(wiener.ALPHAS)
    assert wiener.strongest_least(losses["flat"][1]) == len(wiener.ALPHAS) - 1
    assert len(set(losses["signal"][1])) == len(wiener.ALPHAS)                # no tie: the least loss
    assert wiener.strongest_least(losses["signal"][1]) == int(np.argmin(losses["signal"][1])) < len(wiener.ALPHAS) - 1
    assert wiener.strongest_least([np.nan, 0.5, 0.5, 0.7, np.nan]) == 2
    assert wiener.strongest_least([np.nan] * len(wiener.ALPHAS)) == len(wiener.ALPHAS) - 1


def own_history_table_reference(model, dataset, windows, first):
    """The own-history table by hand: mean count per unit and state over bins `first`.. of every
    window, shrunk towards the unit's mean count."""
    every = np.stack([model.binned_counts(collate_windows([dataset[w]]))[0].view(model.population_bins, -1)
                      .double().numpy() for w in windows])
    state, n = own_history_reference(every)[:, first:], every[:, first:]
    units = np.broadcast_to(np.arange(n.shape[-1]), n.shape)
    total, seen = np.zeros(model.wiener_own_history.shape), np.zeros(model.wiener_own_history.shape)
    np.add.at(total, (units, state), n)
    np.add.at(seen, (units, state), 1)
    mean = total.sum(1, keepdims=True) / np.maximum(seen.sum(1, keepdims=True), 1)
    return (total + wiener.OWN_HISTORY_PRIOR * mean) / (seen + wiener.OWN_HISTORY_PRIOR)


def test_a_two_bin_window_fits_its_table_on_the_last_bin_and_one_bin_tries_no_innovations(setup, tiny_synthetic):
    cfg, model, _ = setup
    model = copy.deepcopy(model)
    dataset = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=8, seed=0)).dataset
    windows = tiling_windows(dataset.recordings, dataset.spec, "train")[:40]
    assert model.population_bins == 2
    fit_wiener(model, dataset, windows, batch_size=16)
    table = own_history_table_reference(model, dataset, windows, first=1)
    np.testing.assert_allclose(model.wiener_own_history.numpy(), table, rtol=1e-5, atol=1e-6)
    raw = copy.deepcopy(TINY_CFG)
    raw["window"]["history"] = 0.0
    cfg = config_from_dict(raw)
    dataset = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=8, seed=0)).dataset
    one_bin = Neuroformer(cfg, len(dataset.vocab), frame_shape=(64, 112)).eval()
    assert one_bin.population_bins == 1
    windows = tiling_windows(dataset.recordings, dataset.spec, "train")[:40]
    assert fit_wiener(one_bin, dataset, windows, batch_size=16)["eye.phi"]["input"] == "counts"
    assert not one_bin.wiener_own_history.any()           # fitted only where innovations are tried


def moments(x, y):
    """Moments of rows x (n, p) with values y, one sample a row."""
    out = wiener.Moments.empty(x.shape[1])
    out.add(x, np.arange(len(x)), y)
    return out


def test_windows_without_history_stay_finite(setup):
    _, model, batch = setup
    empty_one = {k: {kk: vv.clone() for kk, vv in v.items()} if isinstance(v, dict) else v for k, v in batch.items()}
    empty_one["history"]["mask"][0] = False                           # one window has no history spike
    empty_all = dict(empty_one, history={k: v[:, :0] for k, v in batch["history"].items()})  # none has any
    with torch.no_grad():
        for b in (empty_one, empty_all):
            out = model(b)
            assert torch.isfinite(out["loss"]) and torch.isfinite(out["nll_sum"])


def test_mostly_padded_stacks_run_on_their_real_tokens_alone_outside_training(setup, monkeypatch):
    from neuroformer import nn as blocks
    _, model, batch = setup
    model = copy.deepcopy(model).double()
    hist = batch["history"]
    real = hist["mask"]
    assert 0 < real.sum() < real.numel()                      # padding to skip
    def history(pack_below, training=False):
        monkeypatch.setattr(blocks, "PACK_BELOW", pack_below)
        model.train(training)
        with torch.no_grad(), capture_attention() as weights:
            return model.encode_history(hist)[0], weights["history.0.self"][0]
    packed, packed_weights = history(1.01)
    padded, padded_weights = history(0.0)
    torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=1e-12)
    torch.testing.assert_close(packed_weights.transpose(1, 2)[real], padded_weights.transpose(1, 2)[real],
                               rtol=0, atol=1e-12)          # attention read by analyses: the same for real queries
    assert packed[~real].abs().max() == 0 < padded[~real].abs().max()       # the padding was not run
    assert history(1.01, training=True)[0][~real].abs().max() > 0           # training runs the padding
    model.eval()


def test_unit_drive_projects_the_shared_queries_once_and_folds_its_last_layers_outside_training(setup):
    _, model, batch = setup
    model = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in [*model.unit_drive_out.parameters(), *model.unit_readout.parameters()]:   # (biases zero at first)
            p.add_(torch.randn_like(p) * 0.3)
        memory, _ = model.encode_context(batch)
        B, V = len(memory[0]), model.unit_emb.num_embeddings
        q_time = torch.full((B, V), model.cfg.window.current / 2, dtype=torch.float64)
        reference = model.unit_drive_out(model.unit_readout(model.unit_emb.weight.expand(B, V, -1), q_time,
                                                            torch.ones(B, V, dtype=torch.bool), memory=memory))
        torch.testing.assert_close(model.unit_drive(memory), reference.transpose(1, 2), rtol=0, atol=1e-12)
        model.train()
        torch.testing.assert_close(model.unit_drive(memory), reference.transpose(1, 2), rtol=0, atol=1e-12)
    model.eval()


def test_decoder_is_causal(setup):
    _, model, batch = setup
    cur = batch["current"]
    b = int(cur["mask"].sum(1).argmax())
    n = int(cur["mask"][b].sum())
    changed = {k: {kk: vv.clone() for kk, vv in v.items()} if isinstance(v, dict) else v for k, v in batch.items()}
    changed["current"]["unit"][b, n - 1] = 3 if int(cur["unit"][b, n - 1]) != 3 else 4
    with torch.no_grad():
        memory, _ = model.encode_context(batch)
        a, c = model.decode(batch["current"], memory), model.decode(changed["current"], memory)
    assert torch.allclose(a[b, :n - 1], c[b, :n - 1], atol=1e-6) and not torch.allclose(a[b, n - 1], c[b, n - 1])


def test_attention_depends_on_time_differences_only(setup):
    _, model, batch = setup
    shifted = {k: {kk: vv.clone() for kk, vv in v.items()} if isinstance(v, dict) else v for k, v in batch.items()}
    for key, value in shifted.items():
        if isinstance(value, dict) and "time" in value:
            value["time"] += 0.37
    with torch.no_grad():        # (the heads read absolute bins: where a gap would leave the window)
        states = []
        for b in (batch, shifted):
            memory, _ = model.encode_context(b)
            states.append((memory[0], model.decode(b["current"], memory)))
    for a, b in zip(*states):
        assert torch.allclose(a, b, atol=1e-4)


def test_attention_capture_rows_sum_to_one_and_costs_nothing_when_off(setup):
    _, model, batch = setup
    with torch.no_grad(), capture_attention() as weights:
        model(batch)
    assert {"decoder.0.self", "decoder.0.cross", "history.0.self", "visual.0.self"} <= set(weights)
    w = weights["decoder.1.self"][0]
    cur_mask = batch["current"]["mask"]
    assert w.shape[-2:] == (cur_mask.shape[1], cur_mask.shape[1])
    rows = w.transpose(1, 2)[cur_mask]                                # (real queries, heads, keys)
    assert torch.allclose(rows.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.all(w.triu(1) == 0)                                  # causal
    with torch.no_grad(), capture_attention() as outer:
        pass
    assert outer == {}


def test_contrastive_excludes_windows_showing_the_same_frame(setup):
    _, model, _ = setup
    torch.manual_seed(1)
    x, pooled = torch.randn(4, 3, 16), torch.randn(4, 16)
    mask = torch.ones(4, 3, dtype=torch.bool)
    frames = {"index": torch.tensor([[5], [5], [7], [9]]), "mask": torch.ones(4, 1, dtype=torch.bool)}
    loss, correct, count = model.contrastive(x, mask, pooled, frames)
    frames_distinct = {"index": torch.tensor([[5], [6], [7], [9]]), "mask": frames["mask"]}
    loss_distinct, _, _ = model.contrastive(x, mask, pooled, frames_distinct)
    assert int(count) == 4 and loss.item() < loss_distinct.item()     # one fewer negative for two rows


def test_frame_dropout_hides_the_movie_of_some_training_windows_only(setup):
    cfg, model, batch = setup
    hidden = {**batch, "frames": {**batch["frames"], "mask": torch.zeros_like(batch["frames"]["mask"])}}
    model.cfg.model.frame_dropout = 0.999999
    try:
        model.train()
        torch.manual_seed(1)
        dropped, blind = model(batch), model(hidden)
        assert dropped["loss"] == blind["loss"] and int(dropped["contrast_count"]) == 0    # no frames, no pairs
        model.eval()
        assert model(batch)["loss"] != dropped["loss"]                     # validation always sees the movie
        model.train()
        model.cfg.model.frame_dropout = 0.5
        torch.manual_seed(1)
        some = model(batch)
        assert 0 < int(some["contrast_count"]) < len(batch["t0"])
    finally:
        model.cfg.model.frame_dropout = 0.0
        model.eval()


def test_a_frame_blind_target_reads_no_frame_while_the_others_and_the_spikes_do(tiny_synthetic):
    raw = copy.deepcopy(TINY_CFG)
    raw["modalities"]["behavior"]["variables"] = {"running.speed": {"predict": True, "reads_frames": False},
                                                  "eye.phi": {"predict": True}}
    cfg = config_from_dict(raw)
    batch = next(iter(make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=8, seed=0))))
    torch.manual_seed(0)
    model = Neuroformer(cfg, 64, frame_shape=(64, 112)).eval()
    assert model.frame_blind == ["running.speed"]
    for p in model.parameters():                  # weights far from the tiny init, so every input counts
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)
    other = {**batch, "frames": {**batch["frames"], "pixels": torch.randint_like(batch["frames"]["pixels"], 256)}}
    with torch.no_grad():
        seen, moved = model.predict_behavior(batch), model.predict_behavior(other)
        torch.testing.assert_close(seen["running.speed"], moved["running.speed"])
        assert not torch.allclose(seen["eye.phi"], moved["eye.phi"])
        assert model(batch)["nll_sum"] != model(other)["nll_sum"]


@pytest.mark.parametrize("name, pool, grid", [("patch", 1, (8, 14)), ("conv3d", 1, (8, 14)),
                                              ("resnet18", 1, (8, 14)), ("resnet18", 2, (4, 7))])
def test_backbones_keep_a_spatial_grid(name, pool, grid):
    with pytest.warns(UserWarning, match="random weights") if name == "resnet18" else nullcontext():
        bb = make_backbone(BackboneConfig(name=name, patch=8, pool=pool), (64, 112))
    out = bb(torch.randint(0, 255, (2, 3, 64, 112), dtype=torch.uint8))
    assert bb.grid == grid and out.shape == (2, 3, grid[0] * grid[1], bb.channels)

