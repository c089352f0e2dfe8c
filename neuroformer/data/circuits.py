"""Ground-truth circuits for validating connectivity read-outs (docs/design.md §5.1).

`hub_circuit`: spontaneous activity of a recurrent network whose only source of correlations
is a known directed weight matrix W[target, source] — a few hub neurons (excitatory, every
third inhibitory) project to ~30% of the population with weights 0.8-1.8 on the log-rate, plus
sparse weak connections (0.2-0.6) of either sign, delays in `delay_range` (the synthetic
recording's population and spiking process at twice its weights, without its movie and
behaviour; with the synthetic recording's own weights and 5 Hz rates, 120 s of test data left
every measure near chance). Each neuron fires at its own baseline rate:

    rate_i(t) = r0_i * exp(min(sum_j W_ij * k(t - t_j - d_ij), 2)),   k(s) = exp(-s / 5 ms)

`periodic_inputs`: N neurons, each driven by one of N periodic inputs (distinct frequencies
and phases), the inputs stored as one multichannel signal `inputs.values` (T, N) sampled at
`sample_rate`; neuron i follows input `input_of[i]` (a random permutation):

    rate_i(t) = r0_i * exp(gain * x_{input_of[i]}(t - latency_i))

Splits are contiguous time blocks (train, valid, test). Deterministic from the seed.
"""
from dataclasses import asdict, dataclass

import json
import numpy as np

from .objects import RegularTimeSeries
from .recording import assign_splits, make_recording
from .synthetic import STEP, SyntheticConfig, make_population, simulate_spikes

CIRCUIT_VERSION = "1.0"


@dataclass
class HubCircuitConfig:
    n_neurons: int = 100
    seed: int = 0
    duration: float = 600.0           # s
    n_hubs: int = 5
    mean_rate: float = 10.0           # Hz, baseline (before coupling)
    delay_range: tuple = (0.002, 0.010)
    coupling_scale: float = 2.0       # multiplies the synthetic population's weights (hubs 0.8-1.8)


def hub_circuit(cfg=HubCircuitConfig()):
    """(recording, truth): torch_brain Data and a dict with `coupling` W[target, source] and `delays` (s)."""
    seeds = np.random.SeedSequence([cfg.seed, 1]).spawn(2)
    pop_rng, spike_rng = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
    pop_cfg = SyntheticConfig(n_neurons=cfg.n_neurons, n_hubs=cfg.n_hubs, mean_rate=cfg.mean_rate,
                              delay_range=cfg.delay_range)
    pop = make_population(pop_rng, cfg.n_neurons, pop_cfg)
    w = pop["coupling"] * cfg.coupling_scale
    rate = pop["target_rate"]
    steps, units = simulate_spikes(lambda a, b: np.broadcast_to(rate, (b - a, len(rate))),
                                   int(round(cfg.duration / STEP)), w, pop["delays"], spike_rng)
    times = (steps + spike_rng.uniform(0.0, 0.999, len(steps))) * STEP
    order = np.argsort(times, kind="stable")
    unit_ids = [f"circuit{cfg.seed}/n{i:04d}" for i in range(cfg.n_neurons)]
    data = make_recording(spike_times=times[order], spike_units=units[order], unit_ids=unit_ids,
                          domain=(0.0, cfg.duration), session_id=f"hub-circuit-{cfg.seed}",
                          subject_id="simulated-circuit", species="synthetic")
    assign_splits(data)
    truth = dict(unit_ids=np.asarray(unit_ids), coupling=w, delays=pop["delays"] * STEP, hubs=pop["hubs"],
                 baseline_rate=rate, circuit="hub", version=CIRCUIT_VERSION, params=json.dumps(asdict(cfg)))
    return data, truth


@dataclass
class PeriodicInputsConfig:
    n_neurons: int = 100
    seed: int = 0
    duration: float = 300.0           # s
    mean_rate: float = 5.0            # Hz
    gain: float = 1.0                 # log-rate modulation depth
    frequencies: tuple = (0.3, 4.0)   # Hz, log-uniform
    sample_rate: float = 20.0         # Hz, of the stored inputs


def periodic_inputs(cfg=PeriodicInputsConfig()):
    """(recording, truth): the recording carries the inputs as behaviour `inputs.values` (T, N);
    truth holds `input_of` (neuron -> its input) and the one-hot `mapping` (neuron x input)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2]))
    n = cfg.n_neurons
    freq = np.exp(rng.uniform(*np.log(cfg.frequencies), n))
    phase = rng.uniform(0, 2 * np.pi, n)
    input_of = rng.permutation(n)
    latency = rng.uniform(0.01, 0.03, n)
    r0 = cfg.mean_rate * rng.lognormal(0, 0.3, n)

    def inputs(t, channels):
        """Input values (T, len(channels)) at times t (T, 1 or len(channels))."""
        return np.sin(2 * np.pi * freq[channels] * t + phase[channels])

    steps, units = [], []
    for a in range(0, int(round(cfg.duration / STEP)), 10_000):          # independent Poisson, block by block
        t = np.arange(a, min(a + 10_000, int(round(cfg.duration / STEP))))
        drive = inputs(t[:, None] * STEP - latency, input_of)            # neuron i's input, its latency later
        p = r0 * np.exp(cfg.gain * drive) / np.i0(cfg.gain) * STEP
        k, u = np.nonzero(rng.random(p.shape) < p)
        steps.append(t[k])
        units.append(u)
    steps, units = np.concatenate(steps), np.concatenate(units)
    times = (steps + rng.uniform(0.0, 0.999, len(steps))) * STEP
    order = np.argsort(times, kind="stable")
    samples = np.arange(int(round(cfg.duration * cfg.sample_rate))) / cfg.sample_rate
    unit_ids = [f"periodic{cfg.seed}/n{i:04d}" for i in range(n)]
    data = make_recording(
        spike_times=times[order], spike_units=units[order], unit_ids=unit_ids, domain=(0.0, cfg.duration),
        session_id=f"periodic-inputs-{cfg.seed}", subject_id="simulated-circuit", species="synthetic",
        behavior=dict(inputs=RegularTimeSeries(values=inputs(samples[:, None], np.arange(n)).astype(np.float32),
                                               sampling_rate=cfg.sample_rate, domain_start=0.0)))
    assign_splits(data)
    truth = dict(unit_ids=np.asarray(unit_ids), input_of=input_of, mapping=np.eye(n)[input_of],
                 frequency=freq, phase=phase, latency=latency, circuit="periodic", version=CIRCUIT_VERSION,
                 params=json.dumps(asdict(cfg)))
    return data, truth

