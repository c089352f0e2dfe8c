"""Which library multiplies the decoder step's weights fastest with few rows: MKL or oneDNN.

For each of the step's kinds of layer at `--width` (q, k and v together; the MLP's up projection
with its GELU; its down projection and a square layer, each with the residual added)
and each number of rows, the product with what follows it, µs per call: as `torch.addmm` (MKL
in this project's torch builds) on the weight laid out as `nn.laid_out` lays it out for one row,
and as oneDNN's linear with the weight packed for it, the activation or the residual in the same
call (`nn.product`'s two routes). Each is timed on `--weights` distinct weights in turn, so that
they are read from memory as in a step, and the two alternate three times, the best of each
kept. `nn.laid_out` sends to oneDNN the layers of at least `nn.PACKED_FROM` weights when a step
has more than one row (BENCHMARKS, "oneDNN"); this shows whether that holds on another CPU.

    python bench/products.py -o W/products.json                   # the published width, 256
    python bench/products.py --width 64 -o W/products_64.json     # the demo's
    python bench/products.py --quick -o /tmp/products.json       # what the test runs
"""
import argparse
import time

import torch

from neuroformer.cli import positive_int
from neuroformer.nn import laid_out, packed_product, product
from neuroformer.provenance import write_result

# (in, out) in multiples of the width, and what follows the product
LAYERS = {"qkv": (1, 3, None), "up+gelu": (1, 4, "gelu"), "down+residual": (4, 1, "add"), "square+residual": (1, 1, "add")}


def per_call_us(f, calls, repeats):
    """µs per call of f(i) for i over `calls` (one pass to warm up)."""
    for i in range(calls):
        f(i)
    clock = time.perf_counter()
    for _ in range(repeats):
        for i in range(calls):
            f(i)
    return 1e6 * (time.perf_counter() - clock) / (repeats * calls)


@torch.inference_mode()
def compare(n_in, n_out, post, rows, weights, repeats):
    """µs per product of `rows` rows, MKL and oneDNN, and their largest difference."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(n_in, n_out) for _ in range(weights)]
    laid = [laid_out(m) for m in layers]                          # one row's layout, not packed
    packed = [torch.ops.mkldnn._reorder_linear_weight(m.weight, rows) for m in layers]
    x, residual = torch.randn(rows, n_in), torch.randn(rows, n_out)

    def mkl(i):                                                   # nn.product's route for an unpacked layer
        return product(x, laid[i], gelu=post == "gelu", residual=residual if post == "add" else None)

    def onednn(i):                                                # its route for a packed one, here at one row too
        return packed_product(x, packed[i], layers[i].bias, gelu=post == "gelu", residual=residual if post == "add" else None)
    best = {"mkl": float("inf"), "onednn": float("inf")}
    for _ in range(3):
        for name, f in (("mkl", mkl), ("onednn", onednn)):
            best[name] = min(best[name], per_call_us(f, weights, repeats))
    return {**best, "max_abs_difference": float((mkl(0) - onednn(0)).abs().max())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=positive_int, default=256, help="the model's width (default: the published)")
    parser.add_argument("--rows", default="1,2,4,8,16", help="comma-separated numbers of rows")
    parser.add_argument("--weights", type=positive_int, default=12, help="distinct weights of each shape, in turn")
    parser.add_argument("--repeats", type=positive_int, default=25)
    parser.add_argument("--quick", action="store_true", help="1 and 2 rows, 2 weights, 2 repeats")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    if not torch.backends.mkldnn.is_available():
        raise SystemExit("products: this build of torch has no oneDNN")
    if args.quick:
        args.rows, args.weights, args.repeats = "1,2", 2, 2
    try:
        rows = [positive_int(r) for r in args.rows.split(",")]
    except argparse.ArgumentTypeError as e:
        parser.error(f"--rows: {e}")
    table = {name: {str(r): compare(n_in * args.width, n_out * args.width, post, r, args.weights, args.repeats)
                    for r in rows} for name, (n_in, n_out, post) in LAYERS.items()}
    for name, by_rows in table.items():
        print(f"{name:16s}" + "".join(f"  {r} rows {t['mkl']:6.1f} / {t['onednn']:6.1f}" for r, t in by_rows.items()))
    write_result(args.out, {"us_per_product": table, "torch_threads": torch.get_num_threads()}, vars(args), 0)


if __name__ == "__main__":
    main()
