"""Does torch.compile pay for generation's decoder step on CPU? (issue 32)

The cached decoder step (`Neuroformer.decode_step`: ~20 small operations a layer) against the
same arithmetic compiled by torch.compile (inductor) as one graph. A graph needs fixed shapes,
so the compiled step keeps every row's keys and values in a buffer of fixed capacity, writes the
new token at each row's position and hides the positions beyond it by an additive bias (what
`nn.SelfCache` does with a growing buffer and host-side lengths, which a graph cannot hold).
Both run the untrained model of the config over the same memory (random tokens, fixed seed) and
the same tokens, one window of `--tokens` steps per row, all rows at one position; the compiled
step's states are checked against the eager ones. Reported per batch: ms per step of each and of
the uncompiled static-capacity step (what the graph is made of), the time to compile and run
the first window, and each one's largest deviation from the eager states.

    python bench/compile_decoder.py -o W/compile.json            # published size, batch 1 and 16 (~1 min; compiling cold adds ~30 s)
    python bench/compile_decoder.py --quick -o /tmp/compile.json  # what the test runs (eager only)
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from neuroformer.cli import positive_int
from neuroformer.config import load_config
from neuroformer.model import Neuroformer
from neuroformer.nn import new_caches
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
UNITS = 100                 # the benchmark recording's neurons


def _norm(module, x):
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def static_step(model, unit, rotation, kv, position, bias, memory):
    """`decode_step` with the rows' own keys and values in kv (layers, B, 2, H, capacity, D),
    the new token written at `position` (B,), positions beyond it hidden by `bias` (B, 1, 1,
    capacity), and memory: per layer (keys, values, bias) of the `MemoryCache`."""
    x = F.embedding(unit, model.unit_emb.weight)
    rows = torch.arange(len(x), device=x.device)
    for layer, blk in enumerate(model.decoder):
        a, c, heads = blk.attn, blk.cross, blk.attn.heads
        h = _norm(blk.norm1, x)
        q = F.linear(h, a.q.weight, a.q.bias).view(len(x), heads, -1)
        k, v = F.linear(h, a.kv.weight, a.kv.bias).view(len(x), 2, heads, -1).unbind(1)
        q, k = (torch.cat([q, k], 1) @ rotation).split(heads, 1)
        kv[layer, rows, 0, :, position] = k
        kv[layer, rows, 1, :, position] = v
        y = F.scaled_dot_product_attention(q[:, :, None], kv[layer, :, 0], kv[layer, :, 1], attn_mask=bias)
        x = x + F.linear(y.reshape(x.shape), a.out.weight, a.out.bias)
        q = (F.linear(_norm(blk.norm2, x), c.q.weight, c.q.bias).view(len(x), heads, -1) @ rotation)[:, :, None]
        y = F.scaled_dot_product_attention(q, *memory[layer][:2], attn_mask=memory[layer][2])
        x = x + F.linear(y.reshape(x.shape), c.out.weight, c.out.bias)
        up, down = blk.mlp[0], blk.mlp[2]
        x = x + F.linear(F.gelu(F.linear(_norm(blk.norm3, x), up.weight, up.bias)), down.weight, down.bias)
    return _norm(model.norm, x)


@torch.inference_mode()
def measure(model, batch, tokens, memory_tokens, compile_, repeats):
    """One window of `tokens` steps for `batch` rows: ms per step eager, static and compiled (the
    steps alone: caches, memory keys, positions and biases made before the clock starts), each
    the best of `repeats` windows, the variants alternating after one untimed window each."""
    g = torch.Generator().manual_seed(0)
    W, attn = model.unit_emb.weight.shape[1], model.decoder[0].attn
    memory = (torch.randn(batch, memory_tokens, W, generator=g), 0.15 * torch.rand(batch, memory_tokens, generator=g),
              torch.ones(batch, memory_tokens, dtype=torch.bool))
    units = torch.randint(2, 2 + UNITS, (tokens, batch), generator=g)
    times = torch.sort(0.05 * torch.rand(tokens, generator=g)).values
    rotations = [model.decoder[0].rotary.matrix(t.expand(batch)) for t in times]
    capacity = 64 * -(-tokens // 64)
    positions = [torch.full((batch,), s) for s in range(tokens)]
    biases = [torch.zeros(batch, 1, 1, capacity).masked_fill(torch.arange(capacity) > s, float("-inf"))
              for s in range(tokens)]

    def started():
        caches = new_caches(model.decoder, batch)
        model.start_caches(caches, torch.arange(batch), memory)
        return caches

    def eager():
        caches = started()
        clock = time.perf_counter()
        states = [model.decode_step(u, r, caches) for u, r in zip(units, rotations)]
        return time.perf_counter() - clock, states

    def static(step):
        def window():
            held = [(c.k, c.v, c.bias) for c in started()[1]]
            kv = torch.zeros(len(model.decoder), batch, 2, attn.heads, capacity, W // attn.heads)
            clock = time.perf_counter()
            states = [step(model, u, r, kv, p, b, held) for u, r, p, b in zip(units, rotations, positions, biases)]
            return time.perf_counter() - clock, states
        return window

    variants = {"eager": eager, "static": static(static_step)}
    row = {"batch": batch, "tokens": tokens, "memory_tokens": memory_tokens}
    if compile_:
        variants["compiled"] = static(torch.compile(static_step, dynamic=False))
        clock = time.perf_counter()
        variants["compiled"]()
        row["compile_and_first_window_s"] = time.perf_counter() - clock
    reference = eager()[1]
    for name, window in list(variants.items())[1:]:
        row[f"{name}_deviation"] = max(float((a - b).abs().max()) for a, b in zip(reference, window()[1]))
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, window in variants.items():
            best[name] = min(best[name], window()[0])
    row.update({f"{name}_ms_per_step": 1000 * t / tokens for name, t in best.items()})
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "published.yaml")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=positive_int, default=32, help="steps of the window (a row's tokens)")
    parser.add_argument("--memory-tokens", type=positive_int, default=128, help="cross-attention keys per row")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed windows of each variant (the best counts)")
    parser.add_argument("--quick", action="store_true", help="small.yaml, batch 2, 8 tokens, no compile")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.quick:
        args.config, args.batches, args.tokens, args.repeats = ROOT / "configs" / "small.yaml", [2], 8, 1
    torch.manual_seed(0)
    model = Neuroformer(load_config(args.config), UNITS + 2, frame_shape=(64, 112)).eval()
    rows = []
    for batch in args.batches:
        rows.append(measure(model, batch, args.tokens, args.memory_tokens, not args.quick, args.repeats))
        print(", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items()), flush=True)
    write_result(args.out, {"config": args.config.name, "threads": torch.get_num_threads(), "rows": rows}, vars(args), 0)


if __name__ == "__main__":
    main()
