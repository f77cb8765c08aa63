"""Cost of K heads on one backbone vs one head, and vs the baselines a user would write.

Times ``RewardModel.score`` on one batch of (prompt, response) pairs, all in one run:

* ``1 head``                 — a plain reward model (the reference)
* ``K heads, batched``       — auq's ensemble: one einsum over stacked weights
* ``K heads, python loop``   — the same heads applied one by one (RewardUQ-style)
* ``K separate models``      — K reward models scored one after another (K backbone passes)

Each row reports the median of interleaved repeats and the ratio to ``1 head``.
Target: ``K heads, batched`` / ``1 head`` ≤ 1.05.

    python benchmarks/bench_heads.py            # MiniLM, 512 pairs, K = 8
    python benchmarks/bench_heads.py --quick    # smoke run for CI
    python benchmarks/bench_heads.py --device cuda --dtype bfloat16 \
        --out benchmarks/results/bench_heads_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import device_name, timed

import auq
from auq.data.builtin import load_builtin_preferences
from auq.utils.defaults import default_backbone_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbone", default=None, help="HF name or path (default: packaged MiniLM)"
    )
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512, help="pairs scored per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true", help="tiny run for CI smoke tests")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 32, 2

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    backbone = args.backbone or str(default_backbone_path())
    data = load_builtin_preferences(args.batch, seed=0)
    prompts, responses = data.prompts, data.chosen

    fit_data = data.select(range(min(16, len(data))))

    def build(k: int) -> auq.RewardModel:
        """A reward model with fitted heads (one quick epoch: timing does not need more)."""
        model = auq.RewardModel.from_backbone(
            backbone, n_members=k, hidden_size=args.hidden_size, dtype=dtype, device=device
        )
        return model.fit(fit_data, epochs=1, progress=False)

    one = build(1)
    ensemble = build(args.members)
    ensemble.backbone = one.backbone  # same backbone object: only the head differs
    separate = [one] + [build(1) for _ in range(args.members - 1)]
    head = ensemble.head

    def looped_heads():
        phi = one.backbone.encode(one.backbone.tokenize(prompts, responses))
        x = head.standardize_features(phi)
        if head.w_in is None:
            rows = [x @ head.w_out[k] + head.b_out[k] for k in range(head.n_members)]
        else:
            rows = [
                torch.nn.functional.gelu(x @ head.w_in[k] + head.b_in[k]) @ head.w_out[k]
                + head.b_out[k]
                for k in range(head.n_members)
            ]
        return auq.RewardPrediction.from_samples(torch.stack(rows))

    cases = {
        "1 head": lambda: one.score(prompts, responses),
        f"{args.members} heads, batched": lambda: ensemble.score(prompts, responses),
        f"{args.members} heads, python loop": looped_heads,
        f"{args.members} separate models": lambda: [m.score(prompts, responses) for m in separate],
    }
    with torch.no_grad():
        for fn in cases.values():  # warm-up
            fn()
        times = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved, so drift hits every case alike
            for name, fn in cases.items():
                times[name].append(timed(fn, device))

    base = statistics.median(times["1 head"])
    print(
        f"backbone {backbone} on {device} ({args.dtype}); {args.batch} pairs per call, "
        f"median of {args.repeats}"
    )
    print(f"{'case':<28}{'seconds':>10}{'ratio':>9}")
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"case": name, "seconds": med, "ratio_to_one_head": med / base})
        print(f"{name:<28}{med:>10.4f}{med / base:>9.3f}")
    ratio = rows[1]["ratio_to_one_head"]
    print(f"K={args.members} batched heads / 1 head = {ratio:.3f} (target <= 1.05)")
    if args.out:
        result = {
            "benchmark": "bench_heads",
            "device": device_name(device),
            "torch": torch.__version__,
            "dtype": args.dtype,
            "batch": args.batch,
            "members": args.members,
            "repeats": args.repeats,
            "rows": rows,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
