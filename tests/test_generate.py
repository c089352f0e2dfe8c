"""Generation and closed-loop simulation: KV cache against full recompute, seeds, batch
invariance, the generated history really used, valid output, NWB, the GLM and evaluation."""
import json
import subprocess
import sys

import numpy as np
import pynwb
import pytest
import torch
import yaml

from neuroformer.assembly import window_spec
from neuroformer.config import config_from_dict
from neuroformer.data.objects import pad
from neuroformer.data.vocab import SPECIALS
from neuroformer.data.windows import LoaderOptions, collate_windows, make_loader
from neuroformer.draws import Draws
from neuroformer.errors import InputError
from neuroformer.generation import Sampling, Windows, generate, sample_classes
from neuroformer.model import Neuroformer
from neuroformer.nn import Block, MemoryCache, SelfCache, laid_out, new_caches, product
from neuroformer.rollouts import SimulationOptions, _closed_loop_history, simulate
from neuroformer.simulations import load_simulation, save_nwb, save_simulation
from conftest import check_provenance
from test_model import TINY_CFG


@pytest.fixture(scope="module")
def setup(tiny_synthetic):
    torch.manual_seed(0)
    cfg = config_from_dict(TINY_CFG)
    loader = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=6, seed=1))
    model = Neuroformer(cfg, len(loader.dataset.vocab), frame_shape=(64, 112)).eval()
    return model, next(iter(loader)), loader.dataset


@pytest.fixture(scope="module")
def tiny_run(tiny_synthetic, tmp_path_factory):
    """A briefly trained tiny model (its rollouts need only be valid, not good)."""
    out = tmp_path_factory.mktemp("run")
    cfg = {**TINY_CFG, "train": {"batch_size": 8, "max_steps": 20, "warmup_steps": 2, "eval_every": 20,
                                 "eval_batches": 1, "checkpoint_every": 20}}
    (out / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "neuroformer.cli", "train", "--config", str(out / "tiny.yaml"),
                    "--data", str(tiny_synthetic), "-o", str(out / "run")], check=True, capture_output=True)
    return out / "run"


def _rows(tree, rows):
    """The batch rows `rows` of a collated window (nested dicts of tensors)."""
    return {k: _rows(v, rows) for k, v in tree.items()} if isinstance(tree, dict) else tree[rows]


class _Batch:
    """A generation source of one window per row of a collated batch (draw row = batch row),
    handed out `group` at a time in row order; keeps each row's (bin, unit) spikes."""

    def __init__(self, batch, rows, same=None, group=None):
        self.batch, self.rows, self.same, self.group = batch, list(rows), same, group
        self.out, self.truncated, self.pending = {}, False, len(self.rows)

    def take(self, n):
        rows, self.rows = self.rows[:min(n, self.group or n)], self.rows[min(n, self.group or n):]
        if not rows:
            return None
        return Windows(rows, _rows(self.batch, rows), [self.same[r] if self.same else r for r in rows])

    def put(self, row, bins, units, truncated):
        self.out[row] = list(zip(bins, units))
        self.truncated |= truncated
        self.pending -= 1

    def waiting(self):
        return self.pending


def _generate(model, batch, draws, active, allowed, sampling=None, cache=True, same=None, slots=16, group=None):
    """Each active row's window generated (as `generate` did before continuous batching)."""
    source = _Batch(batch, [b for b in range(len(active)) if active[b]], same, group)
    generate(model, source, draws, allowed, sampling, cache=cache, slots=slots)
    return [source.out.get(b, []) for b in range(len(active))], source.truncated


def _allowed(model, dataset):
    allowed = torch.zeros(model.unit_emb.num_embeddings, dtype=torch.bool)
    allowed[len(SPECIALS):] = True
    return allowed


def test_the_single_token_step_is_the_decoders_state_at_each_rows_own_position(setup):
    model, batch, _ = setup
    model64 = Neuroformer(model.cfg, model.unit_emb.num_embeddings, frame_shape=(64, 112)).double().eval()
    model64.load_state_dict(model.state_dict())
    cur = batch["current"]
    rotary, t = model64.decoder[0].rotary, torch.rand(5, dtype=torch.float64) * 0.05
    x = torch.randn(5, 3, 1, rotary.head_dim, dtype=torch.float64)
    torch.testing.assert_close(x @ rotary.matrix(t)[:, None], rotary(x, t[:, None]), rtol=0, atol=1e-12)
    B, L = cur["unit"].shape
    real = cur["mask"]                                   # padding is at the end: a real token sees only real ones
    assert real.sum() > 2 * B
    with torch.no_grad():
        memory, _ = model64.encode_context(batch)
        full = model64.decode(cur, memory)
        caches = new_caches(model64.decoder, B)
        model64.start_caches(caches, torch.arange(B), memory)

        def step(i, i0):                                 # token i of every row but row 0, which takes token i0
            i = torch.tensor([i0] + [i] * (B - 1))
            rows = torch.arange(B)
            return model64.decode_step(cur["unit"][rows, i], rotary.matrix(cur["time"][rows, i]), caches)
        first = [step(i, i) for i in range(2)]
        model64.start_caches(caches, torch.tensor([0]), tuple(m[:1] for m in memory))    # row 0 starts again
        later = [step(i, i - 2) for i in range(2, L)]
    stepped = torch.stack(first + later, 1)
    torch.testing.assert_close(stepped[1:][real[1:]], full[1:][real[1:]], rtol=0, atol=1e-10)
    torch.testing.assert_close(stepped[0, 2:][real[0, :L - 2]], full[0, :L - 2][real[0, :L - 2]], rtol=0, atol=1e-10)


def assert_generation_exact(model, batch, dataset, first_draw):
    """Cached, naive, each row alone and two refilled slots all give the same spikes (float64 model)."""
    allowed = _allowed(model, dataset)
    rows = len(batch["t0"])
    runs = [_generate(model, batch, Draws(first_draw + np.arange(rows)), [True] * rows, allowed, cache=cache)[0]
            for cache in (True, False)]
    assert runs[0] == runs[1]
    assert sum(len(o) for o in runs[0]) > 20
    alone = [_generate(model, _rows(batch, [b]), Draws([first_draw + b]), [True], allowed)[0][0] for b in range(rows)]
    assert alone == runs[0]                                    # every row as its own batch of one
    refilled = _generate(model, batch, Draws(first_draw + np.arange(rows)), [True] * rows, allowed, slots=2, group=1)[0]
    assert refilled == runs[0]                                 # two rows, each taking the next window when free



@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
                    reason="no oneDNN in this build of torch")
def test_a_published_width_block_steps_with_packed_weights_to_its_forward_states():
    torch.manual_seed(0)
    blk = Block(256, 8, 4, 0.0, cross=True).eval()                 # wide enough for its layers to be packed
    B, L, M = 3, 4, 5
    x, t = torch.randn(B, L, 256), torch.rand(B, L).sort(1).values * 0.05
    memory = (torch.randn(B, M, 256), torch.rand(B, M) * 0.05, torch.ones(B, M, dtype=torch.bool))
    own, (held,), (weights,) = new_caches([blk], B)
    assert weights["up"][2] is not None and weights["down"][2] is not None and weights["attn"]["qkv"][2] is not None
    with torch.no_grad():
        full = blk(x, t, torch.ones(B, L, dtype=torch.bool), causal=True, memory=memory)
        k, v = blk.cross.memory_kv(memory[0], memory[1])
        held.put(torch.arange(B), k, v, memory[2])
        stepped = []
        for i in range(L):
            own.advance()
            stepped.append(blk.step(x[:, i], blk.rotary.matrix(t[:, i]), own, 0, held, weights))
    torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=1e-4, atol=1e-4)

def test_cached_and_naive_generation_give_identical_spikes_in_float64(setup):
    model, batch, dataset = setup
    model64 = Neuroformer(model.cfg, model.unit_emb.num_embeddings, frame_shape=(64, 112)).double().eval()
    model64.load_state_dict(model.state_dict())
    assert_generation_exact(model64, batch, dataset, 10)


def test_windows_encoded_ahead_stay_until_their_rows_reach_them(tiny_run, tiny_synthetic, monkeypatch):
    """Trials side by side: however few windows `KEPT_STIMULI` asks for, the windows each row had
    encoded ahead are kept until it reaches them, so every trial window is encoded once."""
    from neuroformer import generation, rollouts
    from neuroformer.checkpoints import checkpoint_file, load_model
    from neuroformer.rollouts import rollout, select_trials
    _, model, dataset, recordings = load_model(checkpoint_file(tiny_run), [tiny_synthetic])
    rid = recordings.recording_ids[0]
    trials = select_trials(recordings.get_recording(rid), tiny_synthetic, "test", (0, 1))
    encoded, ended, original, put = [], [], Neuroformer.stimulus_parts, rollouts._TrialWindows.put
    monkeypatch.setattr(Neuroformer, "stimulus_parts", lambda self, b: encoded.append(len(b["t0"])) or original(self, b))
    monkeypatch.setattr(rollouts._TrialWindows, "put", lambda self, *a: ended.append(a[0]) or put(self, *a))
    monkeypatch.setattr(generation, "KEPT_STIMULI", 1)
    rollout(model, dataset, rid, trials, SimulationOptions(repeats=1, batch=2, progress=False))
    assert len(ended) > 2 * (generation.AHEAD + 1) and sum(encoded) == len(ended)   # one repeat: a window each


def test_windows_sharing_a_stimulus_are_encoded_once_whenever_they_start(setup, monkeypatch):
    model, batch, dataset = setup
    model64 = Neuroformer(model.cfg, model.unit_emb.num_embeddings, frame_shape=(64, 112)).double().eval()
    model64.load_state_dict(model.state_dict())
    batch = {k: _rows(v, [0, 1, 0, 3, 0, 5]) if k in ("frames", "t0") or k.startswith("behavior") else v
             for k, v in batch.items()}                     # rows 0, 2 and 4: the same frames and behaviour
    active, allowed = [False, True, True, True, True, True], _allowed(model64, dataset)
    alone = _generate(model64, batch, Draws(range(6)), active, allowed)[0]
    encoded, original = [], Neuroformer.stimulus_parts
    monkeypatch.setattr(Neuroformer, "stimulus_parts", lambda self, b: encoded.append(len(b["t0"])) or original(self, b))
    for group in (None, 1):                                 # together, and each row starting on its own
        encoded.clear()
        shared = _generate(model64, batch, Draws(range(6)), active, allowed, same=[0, 1, 0, 3, 0, 5], group=group)[0]
        assert shared == alone and shared[0] == [] and len(shared[2]) > 0 and len(shared[4]) > 0
        assert sum(encoded) == 4                            # rows 2 and 4 once, rows 1, 3, 5


def test_generated_windows_are_ordered_inside_the_window_and_use_allowed_units(setup):
    model, batch, dataset = setup
    allowed = _allowed(model, dataset)
    allowed[5:9] = False
    active = [b != 2 for b in range(len(batch["t0"]))]               # nothing sampled for row 2
    out, truncated = _generate(model, batch, Draws(range(len(active))), active, allowed, Sampling(max_spikes=2))
    assert out[2] == [] and truncated
    for spikes in out:
        bins = [q for q, _ in spikes]
        assert bins == sorted(bins) and all(0 <= q < model.n_dt - 1 for q in bins)
        assert all(bool(allowed[u]) for _, u in spikes) and len(spikes) <= 2


def test_sampling_takes_the_inverse_cdf_of_each_rows_draw():
    logits = torch.randn(4, 7, dtype=torch.float64)
    skip = torch.tensor([False, True, False, False])
    u = torch.tensor([0.0, 0.5, 0.999, 0.3], dtype=torch.float64)
    drawn = sample_classes(logits, u, skip, Sampling(), fill=-1)
    cdf = logits.softmax(-1).cumsum(-1)
    assert drawn.tolist() == [0, -1, int((cdf[2] <= 0.999).sum()), int((cdf[3] <= 0.3).sum())]
    top1 = sample_classes(logits, u, torch.zeros(4, dtype=torch.bool), Sampling(top_k=1), fill=-1)
    assert top1.tolist() == logits.argmax(-1).tolist()
    nucleus = sample_classes(logits, u, torch.zeros(4, dtype=torch.bool), Sampling(top_p=1e-6), fill=-1)
    assert nucleus.tolist() == logits.argmax(-1).tolist()


def test_the_generated_history_is_what_the_next_window_sees(setup):
    setup_model, _, dataset = setup
    model = Neuroformer(setup_model.cfg, setup_model.unit_emb.num_embeddings, frame_shape=(64, 112)).eval()
    torch.manual_seed(0)
    for p in model.parameters():                      # large weights, so history effects are far above rounding
        p.data.normal_(0, 0.3)
    spec, rid = dataset.spec, dataset.recordings.recording_ids[0]
    from neuroformer.data.objects import DatasetIndex
    k_start = 20_000                                    # trial start bin; the window after the first one
    k0 = k_start + 50
    sample = dataset[DatasetIndex(rid, k0 * spec.dt_res - spec.before, (k0 + 50) * spec.dt_res)]
    a = [np.array([k_start + 3, k_start + 40]), np.array([k_start + 41])]
    b = [np.array([k_start + 3, k_start + 12]), np.array([k_start + 45])]
    units = [np.array([4, 7]), np.array([9])]
    hist_a = _closed_loop_history(sample["history"], a, units, k0, k_start, spec).obj
    hist_b = _closed_loop_history(sample["history"], b, units, k0, k_start, spec).obj
    assert hist_a["unit"].tolist() == [4, 7, 9]
    assert np.allclose(hist_a["time"].numpy(), [-0.047, -0.010, -0.009], atol=1e-6)
    logits = []
    for hist in (hist_a, hist_b, hist_a):
        s = dict(sample, history=pad(hist))
        with torch.no_grad():
            b_ = collate_windows([s])
            memory, _ = model.encode_context(b_)
            x = model.decode(b_["current"], memory)[:, :1]
            zero = torch.zeros(1, 1, dtype=torch.long)
            bias = model.unit_bias(b_, b_["current"], memory)
            logits.append(torch.cat(model.heads(x, bias, zero, zero, b_["current"]["unit"][:, :1]), -1))
    finite = logits[0].isfinite()                       # (gaps that would leave the window are -inf)
    assert (logits[0] - logits[1])[finite].abs().max() > 1e-2 and torch.equal(logits[0], logits[2])


def test_closed_loop_history_keeps_recorded_spikes_only_before_the_trial(setup):
    _, _, dataset = setup
    spec = dataset.spec
    recorded = pad({"unit": torch.tensor([5, 6, 7]), "time": torch.tensor([-0.040, -0.020, -0.005]),
                    "mask": torch.ones(3, dtype=torch.bool)})
    hist = _closed_loop_history(recorded, [np.array([1010])], [np.array([8])], 1020, 1000, spec).obj
    # bins 980 and 1000 are recorded before/at the trial start: only 980 (< 1000) stays; 1015 is dropped
    assert hist["unit"].tolist() == [5, 8] and np.allclose(hist["time"].numpy(), [-0.040, -0.010])


def test_simulation_is_seeded_batch_invariant_and_valid(tiny_run, tiny_synthetic, tmp_path, monkeypatch):
    from neuroformer import rollouts
    slots, generate = [], rollouts.generate
    monkeypatch.setattr(rollouts, "generate", lambda *a, **k: slots.append(k["slots"]) or generate(*a, **k))
    opts = dict(trials=(0, 6), repeats=2, progress=False)
    one = simulate(tiny_run, tiny_synthetic, SimulationOptions(batch=1, seed=5, **opts))
    many = simulate(tiny_run, tiny_synthetic, SimulationOptions(batch=16, seed=5, **opts))
    other = simulate(tiny_run, tiny_synthetic, SimulationOptions(seed=6, **opts))
    assert slots == [1, 4, 4]                           # rows: at most the 2 trials x 2 repeats
    assert len(one.timestamps) > 100
    for name in ("timestamps", "unit_index", "trial", "repeat"):
        assert np.array_equal(getattr(one, name), getattr(many, name))
    assert not np.array_equal(one.timestamps[:50], other.timestamps[:50])
    for i, trial in enumerate(one.trials["index"]):
        for r in range(2):
            t, u = one.spikes_of(trial, r)
            assert np.all(np.diff(t) >= 0) and len(t) > 0
            assert one.trials["start"][i] <= t.min() and t.max() < one.trials["end"][i]
            assert u.min() >= 0 and u.max() < len(one.unit_ids)
    back = load_simulation(save_simulation(one, tmp_path / "sim.h5"))
    assert np.array_equal(back.timestamps, one.timestamps) and list(back.unit_ids) == list(one.unit_ids)
    nwb = save_nwb(one, tmp_path / "sim.nwb")
    assert list(pynwb.validate(path=str(nwb))) == []
    with pynwb.NWBHDF5IO(str(nwb), "r") as io:
        units = io.read().units.to_dataframe()
    assert len(units) == 2 * len(one.unit_ids)
    assert sum(len(s) for s in units.spike_times) == len(one.timestamps)
    assert set(units.repeat) == {0, 1} and units.unit_name.iloc[0] == one.unit_ids[0]


@pytest.mark.parametrize("history", ["generated", "recorded"])
def test_rollout_feeds_each_window_the_previous_windows_spikes(tiny_run, tiny_synthetic, monkeypatch, history):
    """End to end: the history given to the model in window 2 is window 1's generated spikes
    (closed loop), or the recorded spikes (open loop)."""
    from neuroformer import rollouts
    calls, take, put = [], rollouts._TrialWindows.take, rollouts._TrialWindows.put

    def spy_take(self, n):                               # the history each window starts from
        windows = take(self, n)
        if windows is not None:
            h = windows.batch["history"]
            calls.append([h["unit"][0][h["mask"][0]].tolist(), h["time"][0][h["mask"][0]].tolist(), None])
        return windows

    def spy_put(self, row, bins, units, truncated):       # and the spikes it generated
        calls[-1][2] = list(zip(bins, units))
        return put(self, row, bins, units, truncated)
    monkeypatch.setattr(rollouts._TrialWindows, "take", spy_take)
    monkeypatch.setattr(rollouts._TrialWindows, "put", spy_put)
    simulate(tiny_run, tiny_synthetic, SimulationOptions(trials=(0,), seed=2, history=history, progress=False))
    (_, _, first), (units, times, _) = calls[0], calls[1]
    generated = sorted((q - 50, u) for q, u in first)
    if history == "generated":
        assert len(first) > 0
        assert sorted(zip(np.round(np.array(times) * 1000).astype(int).tolist(), units)) == generated
    else:
        assert sorted(zip(np.round(np.array(times) * 1000).astype(int).tolist(), units)) != generated


def test_a_free_row_holds_no_tokens_while_others_generate(setup):
    """A row waiting for its next window must not widen everyone's attention with idle steps."""
    from neuroformer.generation import _Rows
    model, batch, dataset = setup
    source = _Batch(batch, range(2))
    rows = _Rows(model, Draws(range(2)), _allowed(model, dataset), Sampling(), True, 2)
    rows.start(np.arange(2), source.take(2))
    rows.row[1] = -1                                          # row 1 waits
    steps = 0
    while rows.row[0] >= 0 and steps < 50:
        rows.step(source)
        steps += 1
    assert steps >= 3 and int(rows.caches[0].length[1]) == 1


def test_a_trial_windows_memory_keys_are_computed_once_and_equal_the_whole_memorys(setup, monkeypatch):
    """Repeats of a trial window reuse its frames' and behaviour's cross-attention keys; rows start
    with the keys their whole memory gives, also when their windows' parts differ in length."""
    from neuroformer.generation import _Rows
    model, batch, dataset = setup
    model64 = Neuroformer(model.cfg, model.unit_emb.num_embeddings, frame_shape=(64, 112)).double().eval()
    model64.load_state_dict(model.state_dict())
    with torch.no_grad():
        for blk in model64.decoder:                            # keys of padding differ from zero only with a bias
            blk.cross.kv.bias.normal_()
    rows = _Rows(model64, Draws(range(4)), _allowed(model64, dataset), Sampling(), True, 4)
    speed = "behavior.running.speed"
    trimmed = {**_rows(batch, [0]), speed: {k: v[:, :-1] for k, v in batch[speed].items()}}   # one sample fewer
    encoded, original = [], Neuroformer.stimulus_parts
    monkeypatch.setattr(Neuroformer, "stimulus_parts", lambda self, b: encoded.append(len(b["t0"])) or original(self, b))
    with torch.inference_mode():
        rows.start(np.array([0]), Windows([0], trimmed, ["a"]))
        rows.start(np.array([1]), Windows([1], _rows(batch, [1]), ["b"]))
        length = {key: rows.stimuli[key][0]["behavior"][0].shape[1] for key in "ab"}
        assert length["a"] == length["b"] - 1
        for keys in (["b", "b"], ["a", "b"]):                  # the same parts; parts of different lengths
            windows = Windows([2, 3], _rows(batch, [1, 1]), keys)
            rows.start(np.array([2, 3]), windows)
            stimulus, _ = rows.stimulus(windows)
            memory, _ = model64.encode_context(windows.batch, model64.context_parts(windows.batch, stimulus))
            whole, real = model64.cross_keys(memory[0], memory[1]), memory[2]             # padding is masked out
            for layer, cache in enumerate(rows.caches[1]):
                assert torch.equal(cache.bias[2:, 0, 0, :real.shape[1]] == 0, real)
                for held, kv in zip((cache.k, cache.v), whole[layer]):
                    torch.testing.assert_close(held[2:, :, :real.shape[1]].transpose(1, 2)[real], kv.transpose(1, 2)[real],
                                               rtol=0, atol=1e-12)
    assert encoded == [1, 1]                                  # rows 0 and 1 alone; rows 2 and 3 reuse theirs


@pytest.mark.parametrize("opts, problem", [
    (dict(trials=(99,)), "trials: no trial"),
    (dict(sampling=Sampling(temperature=0.0)), "sampling: temperature > 0"),
    (dict(history="replayed"), "--history: expected"),
])
def test_bad_simulation_options_are_named(tiny_run, tiny_synthetic, opts, problem):
    with pytest.raises(InputError, match=problem):
        simulate(tiny_run, tiny_synthetic, SimulationOptions(progress=False, **opts))


def test_cli_simulate_and_evaluate_with_glm(tiny_run, tiny_synthetic, tmp_path):
    cli = [sys.executable, "-m", "neuroformer.cli"]
    simulate_args = ["simulate", "--run", str(tiny_run), "--data", str(tiny_synthetic), "--repeats", "2",
                     "-o", str(tmp_path / "sim.h5"), "--nwb", str(tmp_path / "sim.nwb"), "--seed", "4"]
    evaluate_args = ["evaluate", "--data", str(tiny_synthetic), "--simulated", str(tmp_path / "sim.h5"),
                     "--run", str(tiny_run), "--baseline", "glm", "-o", str(tmp_path / "eval" / "report.json")]
    subprocess.run(cli + simulate_args, check=True, capture_output=True)
    subprocess.run(cli + evaluate_args, check=True, capture_output=True)
    trained = {"train": {"max_steps": 20}, "model": TINY_CFG["model"]}
    train_args = ["train", "--config", tiny_run.parent / "tiny.yaml", "--data", tiny_synthetic, "-o", tiny_run]
    check_provenance(tiny_run / "run.json", 0, trained, ["cli.py", *train_args])
    check_provenance(tmp_path / "sim.h5", 4, trained, ["cli.py", *simulate_args])
    check_provenance(tmp_path / "eval" / "report.json", 0, trained, ["cli.py", *evaluate_args])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["rows"]) == {"training_movies", "held_out_movies"}
    row = report["rows"]["held_out_movies"]
    for name in ("neuroformer", "glm"):
        assert -1 <= row[name]["psth_r_median"] <= 1 and row[name]["rate_simulated_hz"] > 0
        assert np.isfinite(row[name]["bits_per_spike"]) and row[name]["scored_spikes"] > 0
    assert 0 <= row["noise_ceiling"]["window_f1_between_trials"] <= 1
    assert all((tmp_path / "eval" / f).exists() for f in ("report_rasters.png", "report_psth.png", "report_psth_r.png"))
    bad = subprocess.run(cli + ["evaluate", "--data", str(tiny_synthetic), "--simulated", str(tiny_synthetic),
                                "-o", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "format: not a simulated-spikes file" in bad.stderr


def test_caches_keep_each_rows_tokens_across_reallocations_restarts_and_row_selection():
    ks, vs = torch.randn(2, 3, 2, 150, 4), torch.randn(2, 3, 2, 150, 4)       # (layer, row, head, token, dim)
    cache = SelfCache(3, 2, 2, 4, torch.float32, "cpu")

    def step(k, v):                                      # one token of every row, in both layers: k, v (layer, row, H, D)
        cache.advance()
        return [cache.append(layer, k[layer], v[layer]) for layer in range(2)]
    for i in range(150):                                 # the buffers grow twice (64 -> 130 -> 262 tokens)
        out = step(ks[..., i, :], vs[..., i, :])
    for layer, (k, v, bias) in enumerate(out):
        assert torch.equal(k, ks[layer]) and torch.equal(v, vs[layer]) and bias is None
    assert cache.length.tolist() == [150] * 3

    def ragged_step(held):                               # fresh tokens land at each row's own position `held`
        nk, nv = torch.randn(2, len(held), 2, 4), torch.randn(2, len(held), 2, 4)
        for layer, (k, v, bias) in enumerate(step(nk, nv)):
            for r, p in enumerate(held):
                assert torch.equal(k[r, :, p], nk[layer, r]) and torch.equal(v[r, :, p], nv[layer, r])
                assert (bias[r, 0, 0, :p + 1] == 0).all() and (bias[r, 0, 0, p + 1:] == float("-inf")).all()
    cache.clear(torch.tensor([1]))                               # row 1 starts a new window
    ragged_step([150, 0, 150])
    for layer in range(2):                                       # the other rows' tokens are kept
        assert torch.equal(cache.kv[layer, 0, 0, :, :150], ks[layer, 0]) and torch.equal(cache.kv[layer, 2, 1, :, :150], vs[layer, 2])
    cache.select(torch.tensor([2, 1]))
    assert cache.length.tolist() == [151, 1] and torch.equal(cache.kv[1, 0, 0, :, :150], ks[1, 2])
    ragged_step([151, 1])
    ks, vs = ks[0], vs[0]
    held = MemoryCache(3)
    held.put(torch.tensor([0, 2]), ks[:2, :, :5], vs[:2, :, :5], torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))
    held.put(torch.tensor([1]), ks[2:, :, :7], vs[2:, :, :7], torch.ones(1, 7, dtype=torch.bool))  # a wider memory
    assert held.k.shape[2] == 7 and torch.equal(held.k[2, :, :5], ks[1, :, :5]) and torch.equal(held.k[1], ks[2, :, :7])
    assert held.bias[:, 0, 0].isinf().sum(1).tolist() == [2, 0, 4]


def test_step_weights_give_each_linear_layers_products_in_the_layout_read_fastest():
    torch.manual_seed(0)
    widen, narrow, square = torch.nn.Linear(4, 12), torch.nn.Linear(12, 4), torch.nn.Linear(4, 4)
    for layer in (widen, narrow, square):
        weight, bias, packed = laid = laid_out(layer)
        x = torch.randn(3, layer.in_features)
        torch.testing.assert_close(product(x, laid), layer(x), rtol=1e-6, atol=1e-6)
        assert weight.shape == (layer.in_features, layer.out_features) and packed is None     # one row: not packed
    assert laid_out(widen)[0].is_contiguous() and laid_out(square)[0].is_contiguous()     # copies, (in, out) in memory
    kept = laid_out(narrow)[0]                                                              # a view of (out, in)
    assert kept.data_ptr() == narrow.weight.data_ptr() and kept.t().is_contiguous()
    laid = laid_out(square, widen)                                                          # outputs side by side
    x = torch.randn(3, 4)
    torch.testing.assert_close(product(x, laid), torch.cat([square(x), widen(x)], 1), rtol=1e-6, atol=1e-6)
    assert laid[0].is_contiguous() and laid_out(narrow, narrow)[0].t().is_contiguous()
    torch.testing.assert_close(product(x, laid_out(widen, scale=0.5)), widen(x) / 2, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
                    reason="no oneDNN in this build of torch")
def test_layers_packed_for_onednn_give_the_same_products_with_activation_and_residual():
    torch.manual_seed(0)
    widen, narrow, small = torch.nn.Linear(256, 512), torch.nn.Linear(512, 256), torch.nn.Linear(64, 256)
    assert laid_out(widen, rows=1)[2] is None and laid_out(small, rows=16)[2] is None       # only where it pays
    assert laid_out(torch.nn.Linear(256, 512).double(), rows=16)[2] is None
    up, down = laid_out(widen, rows=16), laid_out(narrow, rows=16)
    assert up[2] is not None and down[2] is not None
    for rows in (1, 2, 16):                                         # one row by addmm, more by oneDNN
        x, residual = torch.randn(rows, 256), torch.randn(rows, 256)
        torch.testing.assert_close(product(x, up), widen(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(product(x, up, gelu=True), torch.nn.functional.gelu(widen(x)), rtol=1e-5, atol=1e-5)
        h = torch.randn(rows, 512)
        torch.testing.assert_close(product(h, down, residual=residual), residual + narrow(h), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 256)
    packed_only = (torch.zeros_like(up[0]), up[1], up[2])           # more than one row reads the packed weight alone
    torch.testing.assert_close(product(x, packed_only), widen(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(product(x, laid_out(widen, rows=16, scale=0.5)), widen(x) / 2, rtol=1e-5, atol=1e-5)


def test_later_windows_frames_are_encoded_with_a_new_ones_and_give_the_same_spikes(tiny_run, tiny_synthetic, monkeypatch):
    """A rollout encodes a new trial window's frames and behaviour with those of the windows after
    it (one batch), each window once, and samples the same spikes as encoding each alone (float64)."""
    from neuroformer import generation, rollouts
    from neuroformer.checkpoints import checkpoint_file, load_model
    from neuroformer.rollouts import rollout, select_trials
    _, model, dataset, recordings = load_model(checkpoint_file(tiny_run), [tiny_synthetic])
    model, rid = model.double(), recordings.recording_ids[0]
    trials = select_trials(recordings.get_recording(rid), tiny_synthetic, "test", (0, 1))
    encoded, started, original, start = [], [], Neuroformer.stimulus_parts, Neuroformer.start_caches
    monkeypatch.setattr(Neuroformer, "stimulus_parts", lambda self, b: encoded.append(len(b["t0"])) or original(self, b))

    def spy_start(self, caches, rows, memory, stimulus_keys=None):      # each start's real memory tokens and keys
        start(self, caches, rows, memory, stimulus_keys)
        real, held = memory[2], caches[1][-1]
        started.append((memory[0][real], held.k[rows][:, :, :real.shape[1]].transpose(1, 2)[real]))
    monkeypatch.setattr(Neuroformer, "start_caches", spy_start)
    sources, init = [], rollouts._TrialWindows.__init__
    monkeypatch.setattr(rollouts._TrialWindows, "__init__", lambda self, *a: sources.append(self) or init(self, *a))
    runs, default = {}, generation.AHEAD
    for ahead in (default, 0):
        monkeypatch.setattr(generation, "AHEAD", ahead)
        encoded.clear(), started.clear()
        sim = rollout(model, dataset, rid, trials, SimulationOptions(repeats=3, batch=4, progress=False))
        runs[ahead] = (sim, list(encoded), list(started))
        assert sources[-1].recorded == {}                  # windows read ahead are let go once every repeat read them
    (sim, batches, memories), (alone, singles, memories_alone) = runs[default], runs[0]
    assert len(sim.timestamps) > 50
    for name in ("timestamps", "unit_index", "trial", "repeat"):
        assert np.array_equal(getattr(sim, name), getattr(alone, name))
    assert len(memories) == len(memories_alone)
    for got, expected in zip(memories, memories_alone):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    assert max(batches) == 2 + default and max(singles) == 2              # two trials' first windows, 8 after
    assert sum(batches) == sum(singles) and len(batches) < len(singles) / 2      # no more windows, in fewer batches
