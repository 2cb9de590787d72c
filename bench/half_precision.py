"""Half precision is safe where the samples stay the same: the same seed in float32 and in float16 / bfloat16.

    python bench/half_precision.py --model ddpm-mnist-28 --batch 16 --steps 100 [--device cuda] [--dtypes float16 bfloat16]

For each dtype the UNet runs in that dtype, and the images are compared with the float32 run's, pixel by pixel in
[0, 1]: once on the fast path (loop state and posterior update in float32) and once on the plain loop (everything
in that dtype). GroupNorm and attention run in the dtype in both; a model where they overflowed would show as
non-finite or wholly different images.
"""

import argparse

import torch  # noqa: E402

import common  # noqa: F401 - offline environment, the repo on the import path
from common import load_model  # noqa: E402
from ddpm_core.sampling import generate  # noqa: E402


def to01(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1, 1) + 1) / 2


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm-mnist-28")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    args = p.parse_args()
    device = torch.device(args.device)
    kw = dict(batch_size=args.batch, seed=args.seed, num_inference_steps=args.steps, n_snapshots=0, n_frames=0)
    ref = {
        fast: to01(
            generate(load_model(args.model, device, torch.float32), mode=None if fast else "plain", **kw).samples
        )
        for fast in (True, False)
    }
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"#### {args.model}: float32 vs half precision, seed {args.seed}, batch {args.batch}, {args.steps} steps, {dev}\n"
    )
    print(
        "| UNet dtype | loop | max abs diff | mean abs diff | pixels off by > 1/255 | worst image's mean diff | finite |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.dtypes:
        model = load_model(args.model, device, getattr(torch, name))
        for fast, label in ((True, "fast path (float32 state)"), (False, f"plain loop ({name} state)")):
            res = generate(model, mode=None if fast else "plain", **kw)
            d = (to01(res.samples) - ref[fast]).abs()
            print(
                f"| {name} | {label} | {d.max():.3f} | {d.mean():.5f} | {100 * (d > 1 / 255).float().mean():.2f}% | "
                f"{d.flatten(1).mean(1).max():.4f} | {bool(torch.isfinite(res.samples).all())} |"
            )


if __name__ == "__main__":
    main()
