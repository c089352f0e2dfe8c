"""Where the behaviour signal lies in time: decoders on the 0.55 s of spike counts before a sample
(what a causal context holds) against the 0.55 s centred on it.

Gaze moves the receptive fields on the movie and the rates follow after a 30-70 ms latency, so
the spikes after a sample carry part of its signal. Ridge (alpha 1000) and an MLP (128 hidden
units, alpha 0.1, 60 epochs) on each unit's spike count (log1p) over 11 bins of 50 ms; fitted on
the training samples, Pearson r on validation and test samples, no smoothing.

    python bench/decoding_context.py --data syn40.h5 -o bench/results/decoding_context.json
"""
import argparse
import json
import warnings

import numpy as np
from scipy.stats import pearsonr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

from neuroformer.data.recording import open_recording
from neuroformer.decoding import split_samples
from neuroformer.decoders import BinnedSplit
from neuroformer.provenance import write_result

TARGETS = ["running.speed", "eye.phi", "eye.theta"]
SPLITS = ("train", "valid", "test")
BINS = 11                                    # 0.55 s of 50 ms bins


def design(split, context):
    """(n, units): counts over the BINS bins ending with the sample's bin (causal) or centred on it."""
    x = split.lagged(BINS - 1).reshape(len(split.bin), 2 * BINS - 1, -1)
    x = x[:, :BINS] if context == "causal" else x[:, BINS // 2:BINS // 2 + BINS]
    return np.log1p(x.sum(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    data = open_recording(args.data)
    binned = {s: BinnedSplit.of(data, split_samples(data, TARGETS, s, 0.5, 0.05), 0.05) for s in SPLITS}
    models = {"ridge": lambda: Ridge(alpha=1000.0),
              "mlp": lambda: MLPRegressor(hidden_layer_sizes=(128,), alpha=0.1, max_iter=60, random_state=0)}
    results = []
    for context in ("causal", "centred"):
        x = {s: design(binned[s], context) for s in SPLITS}
        scaler = StandardScaler().fit(x["train"])
        x = {s: scaler.transform(v) for s, v in x.items()}
        for name, make in models.items():
            row = {"context": context, "model": name}
            for k, target in enumerate(TARGETS):
                y = binned["train"].y[:, k]
                fitted = make().fit(x["train"], (y - y.mean()) / y.std())
                row[target] = {f"{s}_r": float(pearsonr(fitted.predict(x[s]), binned[s].y[:, k])[0])
                               for s in ("valid", "test")}
            print(json.dumps(row), flush=True)
            results.append(row)
    write_result(args.output, {"data": args.data, "results": results}, vars(args), 0, indent=1)


if __name__ == "__main__":
    main()
