"""Held-out scoring, the point-process heads and the latent history: the score against a direct
sum of per-spike log-probabilities, bits/spike on a hand case, the point-process gap distribution
against its formula, latents invariant to the order of equal-time spikes and linear in them."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from neuroformer.config import config_from_dict
from neuroformer.data.vocab import SPECIALS
from neuroformer.data.windows import IGNORE, LoaderOptions, make_loader
from neuroformer.draws import Draws
from neuroformer.generation import Sampling
from neuroformer.model import Neuroformer
from neuroformer.scoring import bits_per_spike, poisson_log_likelihood, window_log_likelihood
from neuroformer.assembly import window_spec
from conftest import check_provenance
from test_generate import _generate
from test_model import TINY_CFG

PP_CFG = {**TINY_CFG, "model": {**TINY_CFG["model"], "point_process": True, "coupling_bases": 3}}


def _model(tiny_synthetic, raw, seed=0):
    torch.manual_seed(seed)
    cfg = config_from_dict(raw)
    loader = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=6, seed=2))
    model = Neuroformer(cfg, len(loader.dataset.vocab), frame_shape=(64, 112)).eval()
    with torch.no_grad():                       # away from the zero start, so every term matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, next(iter(loader)), loader.dataset


def _direct(model, batch, n_end, tokens):
    """log p of each window's spikes in its first n_end bins, and of no other spike before n_end,
    token by token from the model's gap and unit distributions."""
    cur = batch["current"]
    with torch.no_grad():
        memory, _ = model.encode_context(batch)
        x = model.decode(cur, memory)
        gap_lp, unit_logits = model.spike_outputs(batch, memory, x)
    bins = model.position_bins(cur)
    out = []
    for b in range(len(x)):
        total = 0.0
        for i in range(int(cur["mask"][b].sum())):
            d, u, k = int(cur["dt_target"][b, i]), int(cur["unit_target"][b, i]), int(bins[b, i])
            if u != IGNORE and k + d < n_end[b]:
                total += float(gap_lp[b, i, d])
                total += float(unit_logits[b, i, tokens].log_softmax(-1)[tokens.tolist().index(u)])
                continue
            later = [c for c in range(model.n_dt) if k + c >= n_end[b]] + [model.end_class]
            total += float(gap_lp[b, i, later].logsumexp(0))
            break
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("raw", [TINY_CFG, PP_CFG], ids=["softmax", "point_process"])
def test_window_log_likelihood_equals_the_direct_sum_of_per_spike_log_probabilities(tiny_synthetic, raw):
    model, batch, dataset = _model(tiny_synthetic, raw)
    tokens = torch.as_tensor(dataset.unit_tokens[dataset.recordings.recording_ids[0]])
    n_cur = model.n_dt - 1
    totals = []
    for n_end in ([n_cur] * 6, [n_cur, 30, 7, 1, n_cur - 1, 18]):       # full windows, then cut ones
        n_end = torch.tensor(n_end)
        with torch.no_grad():
            shares = window_log_likelihood(model, batch, n_end, tokens)
        assert shares.shape == (6, len(tokens))
        assert np.allclose(shares.sum(1).numpy(), _direct(model, batch, n_end, tokens), atol=1e-4)
        totals.append(float(shares.sum()))
    assert totals[1] > totals[0]                                       # fewer spikes to explain
    if raw is PP_CFG:       # padding and START never fire, so the training loss is the same likelihood
        with torch.no_grad():
            out = model(batch)
        assert float(out["nll_sum"]) == pytest.approx(-totals[0], rel=1e-5)


def test_bits_per_spike_of_a_poisson_process_scored_by_its_true_rate():
    """Spikes of a Poisson process at 2 Hz then 8 Hz, scored by the true rates against the
    homogeneous rate: the formula Σ n log(r / r̄) - (r - r̄) T over spikes, in bits."""
    rng = np.random.default_rng(0)
    dt, T = 0.001, 200_000                                          # 200 s per half
    rates = np.r_[np.full(T, 2.0), np.full(T, 8.0)][:, None] * dt
    counts = rng.poisson(rates)
    mean = counts.mean(0)
    ll_true = poisson_log_likelihood(counts, rates).sum()
    ll_null = poisson_log_likelihood(counts, mean).sum()
    n1, n2 = counts[:T].sum(), counts[T:].sum()
    r_bar = mean[0] / dt
    expected = (n1 * math.log(2 / r_bar) + n2 * math.log(8 / r_bar) - (2 - r_bar) * T * dt - (8 - r_bar) * T * dt)
    assert bits_per_spike(ll_true, ll_null, n1 + n2) == pytest.approx(expected / ((n1 + n2) * math.log(2)), rel=1e-9)
    # the information of a 2 / 8 Hz switch: 0.278 bits/spike in expectation (Poisson, equal halves)
    assert 0.25 < bits_per_spike(ll_true, ll_null, n1 + n2) < 0.31


def test_point_process_gaps_follow_the_discrete_poisson_formula(tiny_synthetic):
    model, batch, _ = _model(tiny_synthetic, PP_CFG)
    cur = batch["current"]
    with torch.no_grad():
        memory, _ = model.encode_context(batch)
        x = model.decode(cur, memory)
        bias = model.unit_bias(batch, cur, memory)
        bins = model.position_bins(cur)
        gap_lp = model.gap_log_probs(x, bias, bins, cur["unit"])
        mod = model.bounded(model.dt_head(x))
    b, i = 0, 1                                                   # after the first spike of window 0
    k, u, n = int(bins[b, i]), int(cur["unit"][b, i]), model.n_dt - 1
    hazard = [float(bias[b, k, u:].exp().sum() * mod[b, i, 0].exp())]
    hazard += [float(bias[b, k + d].exp().sum() * mod[b, i, d].exp()) for d in range(1, n - k)]
    survive, expected = 1.0, []
    for h in hazard:
        expected.append(survive * (1 - math.exp(-h)))
        survive *= math.exp(-h)
    p = gap_lp[b, i].exp()
    assert np.allclose(p[:n - k].numpy(), expected, rtol=1e-4)
    assert float(p[-1]) == pytest.approx(survive, rel=1e-4)                 # END: no spike to the end
    assert float(p[n - k:-1].sum()) == 0.0 and float(p.sum()) == pytest.approx(1.0, abs=1e-5)


def test_point_process_coupling_and_corrections_are_softly_bounded(tiny_synthetic):
    """Runaway self-excitation (the closed loop's failure) cannot lift a log rate past the bounds:
    the coupling input is bound * tanh(raw / bound), each transformer correction likewise."""
    model, batch, _ = _model(tiny_synthetic, PP_CFG)
    cur = batch["current"]
    with torch.no_grad():
        memory, _ = model.encode_context(batch)
        x = model.decode(cur, memory)
        model.coupling.fill_(2.0)
        drive = model.unit_drive(memory)
        coupled = {}
        for bound in (0.0, 3.0):
            model.cfg.model.coupling_bound = bound
            coupled[bound] = model.unit_bias(batch, cur, memory, drive)
        model.coupling.zero_()
        uncoupled = model.unit_bias(batch, cur, memory, drive)
        units = slice(len(SPECIALS), None)                      # (not the specials' -1e4)
        raw = (coupled[0.0] - uncoupled)[..., units]
        assert raw.max() > 6                                    # far beyond the bound
        assert torch.allclose((coupled[3.0] - uncoupled)[..., units], 3 * torch.tanh(raw / 3), atol=1e-4)
        bins = model.position_bins(cur)
        uncorrected = model.unit_logits(None, uncoupled, cur["dt_target"].clamp(min=0), bins, cur["unit"])
        for head in (model.unit_drive_out, model.unit_head):
            head.bias.add_(10.0)
        assert model.unit_drive(memory).max() <= model.cfg.model.correction_bound == 1.0
        after = model.unit_logits(x, uncoupled, cur["dt_target"].clamp(min=0), bins, cur["unit"])
    lift = (after - uncorrected)[..., units][uncorrected[..., units].isfinite()]
    assert torch.allclose(lift, torch.ones_like(lift), atol=1e-3)       # a +10 correction lifts by the bound


def test_point_process_coupling_sees_only_earlier_bins(tiny_synthetic):
    model, batch, _ = _model(tiny_synthetic, PP_CFG)
    cur = batch["current"]
    with torch.no_grad():
        memory, _ = model.encode_context(batch)
        before = model.unit_bias(batch, cur, memory)
        moved = {**cur, "unit": cur["unit"].clone()}
        k = int(model.position_bins(cur)[0, 1])
        moved["unit"][0, 1] = 2 + (int(cur["unit"][0, 1]) - 1) % (model.unit_emb.num_embeddings - 2)
        after = model.unit_bias(batch, moved, memory)
    assert torch.equal(before[0, :k + 1], after[0, :k + 1])        # a spike in bin k acts from bin k + 1
    assert not torch.allclose(before[0, k + 1:], after[0, k + 1:])
    assert torch.equal(before[1:], after[1:])


SHORT_LAG_CFG = {**PP_CFG, "model": {**PP_CFG["model"], "coupling_lag": 0.01}}   # spikes age out of the window's filters


@pytest.mark.parametrize("raw", [PP_CFG, SHORT_LAG_CFG], ids=["lag=window", "short lag"])
def test_point_process_generation_is_the_same_with_and_without_the_cache(tiny_synthetic, raw):
    model, batch, _ = _model(tiny_synthetic, raw)
    with torch.no_grad():
        model.coupling.normal_()                                       # strong coupling: every spike counts
    allowed = torch.zeros(model.unit_emb.num_embeddings, dtype=torch.bool)
    allowed[len(SPECIALS):] = True
    rows = len(batch["t0"])
    runs = [_generate(model, batch, Draws(range(rows)), [True] * rows, allowed, Sampling(), cache=cache, slots=slots)[0]
            for cache, slots in ((True, 16), (True, 2), (False, 16))]       # 2 slots: rows take new windows
    assert runs[0] == runs[1] == runs[2] and sum(map(len, runs[0])) > 0


@pytest.mark.parametrize("raw", [PP_CFG, SHORT_LAG_CFG], ids=["lag=window", "short lag"])
def test_coupling_added_spike_by_spike_equals_the_coupling_of_all_spikes(tiny_synthetic, raw):
    model, batch, _ = _model(tiny_synthetic, raw)
    with torch.no_grad():
        model.coupling.normal_()                                       # strong coupling: every lag shows
        cur = batch["current"]
        bins = model.position_bins(cur)
        running = model.coupling_input(batch)                          # the history's, as generation starts
        for j in range(1, cur["unit"].shape[1]):                       # then each current spike in turn
            rows = cur["mask"][:, j]
            running[rows] += model.spike_coupling(cur["unit"][rows, j], bins[rows, j])
        total = model.coupling_input(batch, cur)
    assert int(cur["mask"][:, 1:].sum()) >= 5 and not torch.allclose(total, model.coupling_input(batch))
    torch.testing.assert_close(running, total, rtol=1e-5, atol=1e-5)


LATENT_CFG = {**TINY_CFG, "model": {**TINY_CFG["model"], "latents": 4}}


def test_latent_history_is_invariant_to_the_order_of_equal_time_tokens(tiny_synthetic):
    model, batch, _ = _model(tiny_synthetic, LATENT_CFG)
    hist = {k: v[:1] for k, v in batch["history"].items()}
    n = int(hist["mask"].sum())
    assert n >= 2
    same = {"unit": hist["unit"][:, :n].clone(), "time": torch.full((1, n), -0.01), "mask": hist["mask"][:, :n]}
    flipped = {k: v.flip(1) for k, v in same.items()}
    with torch.no_grad():
        a, b = model.encode_history(same)[0], model.encode_history(flipped)[0]
        moved = model.encode_history({**same, "time": torch.full((1, n), -0.03)})[0]
    assert a.shape == (1, 4, 16)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(a, moved)                           # but times matter


def test_keys_projected_per_table_row_equal_keys_projected_per_token():
    from neuroformer.nn import Attention

    torch.manual_seed(0)
    attention, table = Attention(16, 4), torch.randn(7, 16)
    rows, times = torch.randint(0, 7, (3, 50)), -torch.rand(3, 50)
    mask, x = torch.rand(3, 50) > 0.2, torch.randn(3, 5, 16)
    per_token = attention(x, torch.zeros(3, 5), table[rows], times, mask)
    per_row = attention(x, torch.zeros(3, 5), table, times, mask, context_rows=rows)
    assert torch.allclose(per_token, per_row, atol=1e-6)


def _saved_bytes(model, n_spikes):
    """Bytes autograd keeps for the backward pass of one history encoding of n spikes."""
    hist = {"unit": torch.randint(2, 30, (4, n_spikes)), "time": -torch.rand(4, n_spikes) * 0.05,
            "mask": torch.ones(4, n_spikes, dtype=torch.bool)}
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.encode_history(hist)[0].sum()
    return total[0]


def test_latent_history_memory_grows_linearly_with_the_spike_count(tiny_synthetic):
    model, _, _ = _model(tiny_synthetic, LATENT_CFG)
    model.train()
    sizes = [_saved_bytes(model, n) for n in (500, 1000, 2000)]
    # linear: doubling the spikes adds the same again; attention over all spikes would add 4x
    assert (sizes[2] - sizes[1]) == pytest.approx(2 * (sizes[1] - sizes[0]), rel=0.05)


def test_score_cli_writes_rows_per_neuron_glm_and_provenance(tiny_synthetic, tmp_path):
    raw = {**PP_CFG, "train": {"batch_size": 8, "max_steps": 4, "warmup_steps": 1, "eval_every": 4,
                               "eval_batches": 1, "checkpoint_every": 4}}
    (tmp_path / "pp.yaml").write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "neuroformer.cli"]
    subprocess.run(cli + ["train", "--config", str(tmp_path / "pp.yaml"), "--data", str(tiny_synthetic),
                          "-o", str(tmp_path / "run")], check=True, capture_output=True)
    args = ["score", "--run", str(tmp_path / "run"), "--data", str(tiny_synthetic), "--baseline", "glm",
            "-o", str(tmp_path / "score.json")]
    done = subprocess.run(cli + args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "score.json").read_text())
    assert set(report["rows"]) == {"training_movies", "held_out_movies", "all"}
    rows = report["rows"]
    assert rows["all"]["n_spikes"] == rows["training_movies"]["n_spikes"] + rows["held_out_movies"]["n_spikes"]
    for name in ("neuroformer", "glm"):
        r = rows["all"][name]
        assert len(r["per_neuron_bits_per_spike"]) == 30
        assert r["bits_per_spike"] == pytest.approx(
            (r["log_likelihood"] - rows["all"]["null_log_likelihood"]) / (rows["all"]["n_spikes"] * math.log(2)))
    check_provenance(tmp_path / "score.json", None, {"model": PP_CFG["model"], "train": raw["train"]},
                     ["cli.py", *args])
    assert (tmp_path / "score.png").stat().st_size > 0


def test_coupling_read_out_is_the_filters_integrated_over_lags_target_row_source_column(tiny_synthetic):
    from neuroformer.connectivity import model_coupling

    model, _, dataset = _model(tiny_synthetic, PP_CFG)
    tokens = dataset.unit_tokens[dataset.recordings.recording_ids[0]]
    with torch.no_grad():
        model.coupling.zero_()
        model.coupling[1, tokens[3], tokens[7]] = 0.5              # unit 3 drives unit 7 through basis 1
    out = model_coupling(model, tokens)
    assert out.shape == (30, 30)
    assert out[7, 3] == pytest.approx(0.5 * float(model.lag_bases[1].sum()))
    assert np.count_nonzero(out) == 1
    early = model_coupling(model, tokens, lags=(0.001, 0.020))              # lags 1..20 bins of 1 ms
    assert early[7, 3] == pytest.approx(0.5 * float(model.lag_bases[1, 1:21].sum()))
    assert 0 < early[7, 3] < out[7, 3] and np.count_nonzero(early) == 1
    assert model_coupling(model, tokens, lags=(0.0, 1.0))[7, 3] == pytest.approx(out[7, 3])


def test_stimulus_filter_acts_only_after_a_frames_onset(tiny_synthetic):
    raw = {**PP_CFG, "model": {**PP_CFG["model"], "stimulus_features": 2}}
    model, batch, _ = _model(tiny_synthetic, raw)
    frames = {k: v[:1].clone() for k, v in batch["frames"].items()}
    last = int(frames["mask"][0].sum()) - 1
    frames["mask"][0, :last] = False                               # only the last frame is shown
    onset = float(frames["time"][0, last])
    with torch.no_grad():
        drive = model.stimulus_drive({"frames": frames}, model.n_dt - 1)[0]      # (bins, V)
    centres = (torch.arange(model.n_dt - 1) + 0.5) * 0.001
    assert drive[centres < onset].abs().max() == 0 if (centres < onset).any() else True
    assert drive[centres > onset].abs().max() > 0
    frames["pixels"][0, last] = 255 - frames["pixels"][0, last]      # another image, another drive
    with torch.no_grad():
        assert not torch.allclose(model.stimulus_drive({"frames": frames}, model.n_dt - 1)[0], drive)


def test_glm_only_forward_is_the_models_spike_loss_while_the_corrections_are_zero(tiny_synthetic):
    """train.glm_steps fits the GLM with the transformer bypassed; at the switch the full model
    gives the same likelihood, so the transformer starts where that GLM ends."""
    raw = {**PP_CFG, "model": {**PP_CFG["model"], "stimulus_features": 2}, "loss": {"contrastive": 0.0}}
    model, batch, _ = _model(tiny_synthetic, raw)
    with torch.no_grad():
        for head in (model.dt_head, model.unit_head, model.unit_drive_out):
            head.weight.zero_()
            head.bias.zero_()
        full, alone = model(batch), model(batch, glm_only=True)
    assert float(alone["nll_sum"]) == pytest.approx(float(full["nll_sum"]), rel=1e-6)
    with torch.no_grad():
        model.unit_drive_out.bias[0] = 0.3                           # a transformer correction: only the full model moves
        assert float(model(batch)["nll_sum"]) != pytest.approx(float(alone["nll_sum"]), rel=1e-6)
        assert float(model(batch, glm_only=True)["nll_sum"]) == pytest.approx(float(alone["nll_sum"]), rel=1e-6)


def test_behavior_filter_adds_each_units_weights_on_the_windows_mean_z_scored_inputs(tiny_synthetic):
    model, batch, _ = _model(tiny_synthetic, PP_CFG)
    b = batch["behavior.running.speed"]
    mean, std = model.behavior_stats[model.var_index["running.speed"]]
    z = ((b["value"] - mean) / std * b["mask"]).sum(1) / b["mask"].sum(1)       # (B,)
    with torch.no_grad():
        expected = z[:, None] * model.behavior_filter[0]                          # (B, V)
        assert torch.allclose(model.behavior_drive(batch)[:, 0], expected, atol=1e-6)
        with_filter = model.unit_bias(batch, batch["current"], model.encode_context(batch)[0])
        model.behavior_filter.zero_()
        without = model.unit_bias(batch, batch["current"], model.encode_context(batch)[0])
    real = slice(len(SPECIALS), None)                                # padding and START sit at -1e4
    assert torch.allclose((with_filter - without)[..., real], expected[:, None, real].expand_as(without[..., real]),
                          atol=1e-5)


def test_glm_l2_adds_the_ridge_of_the_glms_filters_but_not_its_baselines(tiny_synthetic):
    raw = {**PP_CFG, "loss": {"contrastive": 0.0}}
    model, batch, _ = _model(tiny_synthetic, raw)
    ridge = sum(float((p.detach() ** 2).sum()) for p in (model.coupling, model.behavior_filter)) / 2
    assert float(model.glm_penalty().detach()) == pytest.approx(ridge, rel=1e-6)
    penalised, _, _ = _model(tiny_synthetic, {**raw, "loss": {"contrastive": 0.0, "glm_l2": 0.5}})
    with torch.no_grad():
        assert float(penalised(batch)["loss"]) == pytest.approx(float(model(batch)["loss"]) + 0.5 * ridge, rel=1e-5)


def test_glm_steps_train_only_the_glm_then_restart_the_schedule(tiny_synthetic, tmp_path):
    from neuroformer.training import GLM_PARAMETERS, RunOptions, glm_schedule, lr_lambda, train

    f = lr_lambda(2, 10, glm_steps=4)
    assert [round(f(s), 3) for s in (0, 1, 3, 4, 5)] == [0.5, 1.0, round(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)), 3), 0.5, 1.0]
    raw = {**PP_CFG, "train": {"batch_size": 4, "max_steps": 3, "glm_steps": 3, "eval_every": 3, "eval_batches": 1,
                               "warmup_steps": 1}}
    cfg = config_from_dict(raw)
    glm_f = glm_schedule(config_from_dict({**raw, "train": {**raw["train"], "max_steps": 10, "glm_steps": 4}}), f)
    assert glm_f(3) == f(3) and glm_f(5) == pytest.approx(f(5) * cfg.train.lr / cfg.train.glm_lr)
    train(cfg, [tiny_synthetic], RunOptions(out=tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    fresh = dict(Neuroformer(cfg, state["unit_emb.weight"].shape[0], frame_shape=(64, 112)).named_parameters())
    moved = {k.split(".")[0] for k, p in fresh.items() if not torch.equal(state[k], p)}
    assert moved and moved <= set(GLM_PARAMETERS)
    with pytest.raises(Exception, match="train.glm_steps"):
        config_from_dict({**TINY_CFG, "train": {"glm_steps": 5}})


def test_a_run_cut_shorter_than_its_glm_phase_keeps_steps_for_the_transformer(tiny_synthetic, tmp_path):
    from neuroformer.checkpoints import load_checkpoint
    from neuroformer.training import GLM_PARAMETERS, RunOptions, train

    cfg = config_from_dict({**PP_CFG, "train": {"batch_size": 4, "max_steps": 10, "glm_steps": 8, "eval_every": 4,
                                                "eval_batches": 1, "warmup_steps": 1}})
    train(cfg, [tiny_synthetic], RunOptions(out=tmp_path / "run", max_steps=4))
    saved, state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved.train.glm_steps == 2 and cfg.train.glm_steps == 8            # the caller's config untouched
    torch.manual_seed(0)
    fresh = dict(Neuroformer(cfg, state["model"]["unit_emb.weight"].shape[0], frame_shape=(64, 112)).named_parameters())
    moved = {k.split(".")[0] for k, p in fresh.items() if not torch.equal(state["model"][k], p)}
    assert moved - set(GLM_PARAMETERS)                                         # the transformer trained too
