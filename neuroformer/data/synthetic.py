"""A built-in synthetic recording with known ground truth: the demo's data and the tests' fixture.

Procedurally generated movies (drifting gratings and moving blobs over 1/f noise): a few
training movies, each shown on many trials, and held-out movies shown on a few trials each
(test split only). Neurons have
centre-surround receptive fields (separable Gaussians) that move with gaze, a response latency,
a gain that grows with running speed, and recurrent coupling dominated by a few hub neurons
(known directed weights W[target, source], delays in `delay_range`). Spikes come from a
discrete-time (1 ms) conditionally Poisson process:

    rate_i(t) = r0_i * exp(beta_i * z_i(t - latency_i)) * (1 + a_i * speed(t) / 20)
                * exp(min(sum_j W_ij * k(t - t_j - d_ij), 2))

where z_i is the receptive-field drive standardised on the movie being shown (contrast
adaptation: every movie gives each neuron the same mean stimulus gain) and k(s) = exp(-s / 5 ms) for s >= 0.
Everything is drawn from one seed; `GENERATOR_VERSION` changes whenever the output would.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import InputError
from .objects import RegularTimeSeries
from ..io import atomic_savez
from ..provenance import as_text
from .calcium import with_calcium, with_events
from .recording import assign_splits, make_recording, save_recording
from .validate import require_valid

GENERATOR_VERSION = "1.2"
STEP = 0.001          # simulation time step (s)
KERNEL_TAU = 0.005    # coupling kernel time constant (s)
PX_PER_DEG = 1.0      # receptive-field shift per degree of gaze


@dataclass
class SyntheticConfig:
    n_neurons: int = 100
    seed: int = 0
    trial_length: float = 10.0        # one movie (s)
    n_movies: int = 3                 # training movies
    n_trials: int = 10                # trials of each training movie
    n_heldout_movies: int = 2
    heldout_trials: int = 4           # trials per held-out movie
    iti: float = 1.0                  # grey screen between trials (s)
    frame_rate: float = 20.0
    height: int = 64
    width: int = 112
    n_hubs: int = 5
    delay_range: tuple = (0.002, 0.020)
    mean_rate: float = 5.0            # target mean firing rate (Hz)
    behavior_rate: float = 50.0       # behaviour sampling rate (Hz)
    sessions: int = 1

    @classmethod
    def for_duration(cls, duration, **kw):
        """A config whose trials fill about `duration` seconds in total."""
        cfg = cls(**kw)
        per_trial = cfg.trial_length + cfg.iti
        heldout = cfg.n_heldout_movies * cfg.heldout_trials
        cfg.n_trials = max(3, int(round((duration / per_trial - heldout) / cfg.n_movies)))
        return cfg


# ---------------------------------------------------------------- movies

def _pink_noise(rng, h, w):
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / f
    spectrum[0, 0] = 0
    img = np.fft.ifft2(spectrum).real
    return img / img.std()


def make_movie(rng, n_frames, height, width, frame_rate):
    """uint8 (n_frames, height, width): gratings and blobs over slowly drifting 1/f noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = _pink_noise(rng, height, 2 * width).astype(np.float32)
    t = np.arange(n_frames) / frame_rate
    shift = (t * rng.uniform(4, 8)).astype(int) % width             # noise drifts sideways
    frames = np.stack([noise[:, s:s + width] for s in shift]) * 0.18

    seg = int(2 * frame_rate)                                       # a grating every 2 s
    for a in range(0, n_frames, seg):
        theta, sf, tf = rng.uniform(0, np.pi), rng.uniform(0.04, 0.12), rng.uniform(1, 3)
        contrast = rng.uniform(0.15, 0.35) * rng.integers(0, 2)     # half the segments blank
        phase = 2 * np.pi * (sf * (np.cos(theta) * xx + np.sin(theta) * yy))
        for i in range(a, min(a + seg, n_frames)):
            frames[i] += contrast * np.sin(phase[None] - 2 * np.pi * tf * t[i])[0]

    for _ in range(3):                                              # bouncing blobs
        pos = rng.uniform([0, 0], [height, width])
        vel = rng.uniform(-25, 25, size=2) / frame_rate
        sigma, sign = rng.uniform(4, 9), rng.choice([-1, 1]) * 0.45
        for i in range(n_frames):
            pos = pos + vel
            for d, size in enumerate((height, width)):
                if not 0 <= pos[d] < size:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], 0, size - 1)
            frames[i] += sign * np.exp(-((yy - pos[0]) ** 2 + (xx - pos[1]) ** 2) / (2 * sigma ** 2))
    return np.clip((frames + 0.5) * 255, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- population

def make_population(rng, n, cfg):
    """Neuron parameters and the directed coupling matrix W[target, source]."""
    p = dict(
        rf_x=rng.uniform(0.1, 0.9, n) * cfg.width,
        rf_y=rng.uniform(0.1, 0.9, n) * cfg.height,
        rf_sigma=rng.uniform(2.5, 6.0, n),
        surround_scale=rng.uniform(2.0, 3.0, n),
        surround_weight=rng.uniform(0.4, 0.8, n),
        polarity=rng.choice([-1.0, 1.0], n),
        latency=rng.uniform(0.03, 0.07, n),
        beta=rng.uniform(0.6, 1.2, n),
        speed_gain=rng.uniform(0.0, 1.0, n),
        target_rate=cfg.mean_rate * rng.lognormal(0, 0.5, n) / np.exp(0.125),
    )
    w = np.zeros((n, n))
    hubs = rng.choice(n, size=min(cfg.n_hubs, n), replace=False)
    for k, h in enumerate(hubs):
        targets = rng.random(n) < 0.3
        targets[h] = False
        sign = -1.0 if k % 3 == 2 else 1.0                          # every third hub inhibitory
        w[targets, h] = sign * rng.uniform(0.4, 0.9, targets.sum())
    sparse = (rng.random((n, n)) < 0.02) & (w == 0)
    np.fill_diagonal(sparse, False)
    w[sparse] = rng.choice([-1.0, 1.0], sparse.sum()) * rng.uniform(0.1, 0.3, sparse.sum())
    lo, hi = cfg.delay_range
    delays = np.round(rng.uniform(lo, hi, (n, n)) / STEP).astype(int) * (w != 0)
    p.update(coupling=w, delays=delays, hubs=np.sort(hubs))
    return p


def _ou(rng, n, rate, tau, std):
    """Ornstein-Uhlenbeck process sampled at `rate` Hz, stationary from the start."""
    a = np.exp(-1 / (rate * tau))
    x = np.empty(n)
    x[0] = rng.normal() * std
    noise = rng.normal(size=n) * std * np.sqrt(1 - a ** 2)
    for i in range(1, n):
        x[i] = a * x[i - 1] + noise[i]
    return x


def make_behavior(rng, duration, rate):
    n = int(round(duration * rate))
    speed = 8.0 * np.log1p(np.exp(2.0 * _ou(rng, n, rate, 3.0, 1.0)))   # cm/s, >= 0
    phi = _ou(rng, n, rate, 1.0, 5.0)                                      # degrees
    theta = _ou(rng, n, rate, 1.0, 3.0)
    return dict(speed=speed, phi=phi, theta=theta)


def rf_maps(p, height, width):
    """Centre-surround receptive fields (n_neurons, height * width), signed by polarity."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    d2 = (yy[None] - p["rf_y"][:, None, None]) ** 2 + (xx[None] - p["rf_x"][:, None, None]) ** 2

    def gaussian(sigma):
        g = np.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        return g / g.sum((1, 2), keepdims=True)

    maps = gaussian(p["rf_sigma"]) - p["surround_weight"][:, None, None] * gaussian(p["rf_sigma"] * p["surround_scale"])
    return (maps * p["polarity"][:, None, None]).reshape(len(d2), -1).astype(np.float32)


def rf_drive(screen, phi, theta, p):
    """Receptive-field drive (n_frames, n_neurons) of screen contrast, with gaze-shifted RFs.

    A receptive field moved by the gaze sees the same as the fixed field on the screen moved
    the other way (bilinear, grey outside), so each frame is shifted once and projected on all
    fields by one matrix product. Grey frames (between trials) give zero drive.
    """
    from scipy.ndimage import shift as shift_image

    n_frames, h, w = screen.shape
    maps = rf_maps(p, h, w)
    drive = np.zeros((n_frames, maps.shape[0]), dtype=np.float32)
    shown = np.flatnonzero((screen != 128).any((1, 2)))
    for a in range(0, len(shown), 512):
        idx = shown[a:a + 512]
        img = np.stack([shift_image(screen[i].astype(np.float32) / 255.0 - 0.5,
                                    (-PX_PER_DEG * theta[i], -PX_PER_DEG * phi[i]), order=1, cval=0.0)
                        for i in idx])
        drive[idx] = img.reshape(len(idx), -1) @ maps.T
    return drive


def simulate_spikes(base_rate, n_steps, w, delays, rng, block=10_000):
    """Spikes of the coupled process; `base_rate(a, b)` gives the uncoupled rate (b-a, n) in Hz.

    The coupling input I (log-rate) decays by exp(-STEP / KERNEL_TAU) each step; a spike of j
    at step t adds W[i, j] to I_i at step t + delays[i, j], through a ring buffer of arrivals.
    Rates are made block by block, so memory does not grow with the recording.
    """
    n = w.shape[0]
    decay = np.exp(-STEP / KERNEL_TAU)
    ring_len = int(delays.max()) + 1
    arrivals = np.zeros((ring_len, n))
    coupling = np.zeros(n)
    src, tgt = np.nonzero(w.T)                  # connections, grouped by source
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    conn_w, conn_d = w[tgt, src], delays[tgt, src]
    times, units = [], []
    for a in tqdm(range(0, n_steps, block), desc="simulating spikes", unit="block", leave=False,
                  disable=n_steps < 20 * block):
        b = min(a + block, n_steps)
        p_spike = np.minimum(base_rate(a, b) * STEP, 0.9)
        uniform = rng.random(p_spike.shape)
        for t in range(a, b):
            slot = t % ring_len
            coupling *= decay
            coupling += arrivals[slot]
            arrivals[slot] = 0
            fired = np.flatnonzero(uniform[t - a] < p_spike[t - a] * np.exp(np.minimum(coupling, 2.0)))
            if len(fired):
                counts = indptr[fired + 1] - indptr[fired]
                c = np.repeat(indptr[fired] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
                np.add.at(arrivals, ((t + conn_d[c]) % ring_len, tgt[c]), conn_w[c])
                times.append(np.full(len(fired), t))
                units.append(fired)
    return np.concatenate(times), np.concatenate(units)


def _trial_schedule(rng, cfg):
    movie_of_trial = np.concatenate([np.full(cfg.n_trials, m) for m in range(cfg.n_movies)] +
                                    [np.full(cfg.heldout_trials, cfg.n_movies + m) for m in range(cfg.n_heldout_movies)])
    movie_of_trial = rng.permutation(movie_of_trial)
    starts = cfg.iti + np.arange(len(movie_of_trial)) * (cfg.trial_length + cfg.iti)
    return starts, movie_of_trial, starts[-1] + cfg.trial_length + cfg.iti


def generate(cfg=SyntheticConfig()):
    """Make `cfg.sessions` recordings (torch_brain Data) and their ground truth dicts."""
    seeds = np.random.SeedSequence(cfg.seed).spawn(3 + cfg.sessions)
    movie_rng, pop_rng, split_seed = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1]), seeds[2]
    n_frames = int(round(cfg.trial_length * cfg.frame_rate))
    movies = [make_movie(movie_rng, n_frames, cfg.height, cfg.width, cfg.frame_rate)
              for _ in range(cfg.n_movies + cfg.n_heldout_movies)]
    n_pop = cfg.n_neurons if cfg.sessions == 1 else int(round(cfg.n_neurons * 1.5))
    pop = make_population(pop_rng, n_pop, cfg)
    out = []
    for s in range(cfg.sessions):
        rng = np.random.default_rng(seeds[3 + s])
        members = np.arange(n_pop) if cfg.sessions == 1 else np.sort(rng.choice(n_pop, cfg.n_neurons, replace=False))
        session_id = "synthetic" if cfg.sessions == 1 else f"synthetic-s{s}"
        out.append(_session(rng, cfg, movies, pop, members, session_id, int(split_seed.generate_state(1)[0])))
    return out


def _adapted_gain(drive, beta, shown):
    """Stimulus gain exp(beta * z) with z the drive standardised on each movie's own frames.

    Contrast adaptation: each neuron's mean gain over every movie is 1, so a movie changes
    when a neuron fires, not how much on average (cortical rates are similar across natural
    movies). The grey screen keeps the training movie's (movie 0) adapted state.
    """
    gain = np.empty(drive.shape, dtype=np.float32)
    for m in np.unique(shown[shown >= 0]):
        frames = shown == m
        mu, sd = drive[frames].mean(0), drive[frames].std(0) + 1e-6
        g = np.exp(beta * (drive[frames] - mu) / sd)
        gain[frames] = g / g.mean(0)
        if m == 0:
            adapted_to_first = mu, sd, g.mean(0)
    mu, sd, norm = adapted_to_first
    gain[shown < 0] = np.exp(beta * (drive[shown < 0] - mu) / sd) / norm
    return gain


def _session(rng, cfg, movies, pop, members, session_id, split_seed):
    starts, movie_of_trial, duration = _trial_schedule(rng, cfg)
    beh = make_behavior(rng, duration, cfg.behavior_rate)
    n_grid = int(round(duration * cfg.frame_rate))                   # screen frames over the session
    grid_t = np.arange(n_grid) / cfg.frame_rate
    screen = np.full((n_grid, cfg.height, cfg.width), 128, dtype=np.uint8)
    shown = np.full(n_grid, -1)                                      # movie on screen per frame, -1 grey
    n_frames = movies[0].shape[0]
    for start, m in zip(starts, movie_of_trial):
        k0 = int(round(start * cfg.frame_rate))
        screen[k0:k0 + n_frames] = movies[m]
        shown[k0:k0 + n_frames] = m
    beh_idx = np.minimum((grid_t * cfg.behavior_rate).astype(int), len(beh["phi"]) - 1)
    drive = rf_drive(screen, beh["phi"][beh_idx], beh["theta"][beh_idx], pop)
    stim_gain = _adapted_gain(drive, pop["beta"], shown)

    speed_norm = (1 + pop["speed_gain"][None, :] * beh["speed"][:, None] / 20.0).mean(0)

    def speed_gain(times):
        speed = beh["speed"][np.minimum((times * cfg.behavior_rate).astype(int), len(beh["speed"]) - 1)]
        return (1 + pop["speed_gain"][None, :] * speed[:, None] / 20.0) / speed_norm

    def base_rate(a, b):
        t = np.arange(a, b) * STEP
        frame = np.clip(((t[:, None] - pop["latency"][None, :]) * cfg.frame_rate).astype(int), 0, n_grid - 1)
        return pop["target_rate"][None, :] * np.take_along_axis(stim_gain, frame, 0) * speed_gain(t)

    steps, units = simulate_spikes(base_rate, int(round(duration / STEP)), pop["coupling"], pop["delays"], rng)
    keep = np.isin(units, members)
    spike_times = (steps[keep] + rng.uniform(0.0, 0.999, keep.sum())) * STEP   # uniform within the step
    order = np.argsort(spike_times, kind="stable")
    spike_times, spike_units = spike_times[order], np.searchsorted(members, units[keep][order])
    unit_ids = [f"{session_id}/n{i:04d}" for i in members]
    behavior = dict(
        running=RegularTimeSeries(speed=beh["speed"], sampling_rate=cfg.behavior_rate, domain_start=0.0),
        eye=RegularTimeSeries(phi=beh["phi"], theta=beh["theta"], sampling_rate=cfg.behavior_rate, domain_start=0.0),
    )
    movie_list = [(f"train{m}" if m < cfg.n_movies else f"heldout{m - cfg.n_movies}", frames, cfg.frame_rate)
                  for m, frames in enumerate(movies)]
    data = make_recording(
        spike_times=spike_times, spike_units=spike_units, unit_ids=unit_ids,
        domain=(0.0, duration), session_id=session_id, subject_id="synthetic-mouse", species="synthetic",
        trials=dict(start=starts, end=starts + cfg.trial_length, stimulus_id=movie_of_trial),
        movies=movie_list, presentations=dict(start=starts, movie_index=movie_of_trial), behavior=behavior,
    )
    assign_splits(data, seed=split_seed, test_only_stimuli=range(cfg.n_movies, cfg.n_movies + cfg.n_heldout_movies))
    truth = dict(
        unit_ids=np.asarray(unit_ids), population_index=members,
        coupling=pop["coupling"][np.ix_(members, members)], delays=pop["delays"][np.ix_(members, members)] * STEP,
        hubs=np.flatnonzero(np.isin(members, pop["hubs"])),
        true_rate=(pop["target_rate"] * stim_gain * speed_gain(grid_t))[:, members].astype(np.float32),
        true_rate_times=grid_t,
        **{k: pop[k][members] for k in ("rf_x", "rf_y", "rf_sigma", "surround_scale", "surround_weight",
                                         "polarity", "latency", "beta", "speed_gain", "target_rate")},
        generator_version=GENERATOR_VERSION,
        params=json.dumps(asdict(cfg)),
    )
    return data, truth



def write_synthetic(out, cfg=SyntheticConfig(), calcium=None, spike_amplitude=None):
    """Write the recording(s) and ground truth; returns the recording paths.

    One session: OUT.h5 and OUT.truth.npz. K sessions: OUT_s0.h5 ... with their truth files.
    `calcium` (a CalciumModel): the spikes become ΔF/F traces (the spikes go to the truth);
    `spike_amplitude` given: the traces are then deconvolved into events (data/calcium.py).
    """
    out = Path(out)
    if cfg.n_movies * cfg.n_trials < 2:
        raise InputError("--trials", ("trials", f"{cfg.n_movies} movie(s) x {cfg.n_trials} trial(s): at least 2 "
                                                "trials of training movies are needed (train and valid)"))
    paths = []
    for k, (data, truth) in enumerate(generate(cfg)):
        if calcium is not None:
            data, truth = with_calcium(data, truth, calcium, seed=cfg.seed + k)
            data = with_events(data, spike_amplitude, seed=cfg.seed + k) if spike_amplitude is not None else data
        path = out if cfg.sessions == 1 else out.with_name(f"{out.stem}_s{k}{out.suffix or '.h5'}")
        paths.append(write_with_truth(path, data, truth))
    return paths


def write_with_truth(path, data, truth):
    """A validated recording at `path` and its ground truth beside it (.truth.npz, with the
    provenance of the generator's parameters); returns `path`."""
    require_valid(data, path)
    save_recording(data, path)
    params = json.loads(str(truth["params"]))
    atomic_savez(Path(path).with_suffix(".truth.npz"), **truth, provenance=as_text(params, params["seed"]))
    return Path(path)
