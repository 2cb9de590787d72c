"""Why DDIM (eta = 0) gets worse with more steps on a model that clips x0_hat, and DPM-Solver++ does not.

    python bench/ddim_clipping.py --model ddpm-mnist-28 --num 16 --steps 250 1000 [--threads 2]

All three start from the same x_T ``[num x C x H x W]`` and clip x0_hat to [-1, 1] as the model's scheduler says:

* DDIM as diffusers runs it by default: x_prev from the clipped x0_hat and the network's own eps_hat (eq. 12), which
  no longer agree wherever the clip acts;
* DDIM with eps_hat recomputed from the clipped x0_hat (diffusers' ``use_clipped_model_output=True``);
* DPM-Solver++ (2M), whose step uses only x_t and the clipped x0_hat.

Printed per step count: the share of pixels that are fully black (the background of a digit) and the mean pixel
distance ([0, 1] scale) to DPM-Solver++ at the same step count.
"""

import argparse
import time

import torch

import common  # noqa: F401 - offline environment, the repo on the import path
from common import load_model, machine
from ddpm_core.samplers import DDIM, DPMSolverPP2M, sample_loop_progressive


def final_image(model, sampler, steps: int, noise: torch.Tensor) -> torch.Tensor:
    """x_0 ``[B x C x H x W]`` in [0, 1] after ``steps`` steps of ``sampler`` from ``noise``."""
    d = model.diffusion
    for out in sample_loop_progressive(
        d, sampler, model.unet, noise=noise.clone(), timesteps=d.inference_timesteps(steps)
    ):
        pass
    return (out.prev_sample.clamp(-1, 1) + 1) / 2


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ddpm-mnist-28")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[250, 1000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    noise = torch.randn(args.num, *model.sample_shape, generator=torch.Generator().manual_seed(args.seed))
    samplers = {
        "DDIM, eps_hat from the network (diffusers' default)": DDIM(use_clipped_model_output=False),
        "DDIM, eps_hat from the clipped x0_hat": DDIM(use_clipped_model_output=True),
        "DPM-Solver++ (2M)": DPMSolverPP2M(),
    }
    print(f"#### {args.model}: {args.num} samples from one x_T (seed {args.seed}); {machine()}\n")
    print("| sampler | steps | fully black pixels | mean distance to DPM-Solver++ | seconds |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        images, seconds = {}, {}
        for name, sampler in samplers.items():
            t0 = time.perf_counter()
            images[name] = final_image(model, sampler, steps, noise)
            seconds[name] = time.perf_counter() - t0
        ref = images["DPM-Solver++ (2M)"]
        for name, x in images.items():
            print(
                f"| {name} | {steps} | {100 * (x < 0.005).float().mean():.1f}% | {(x - ref).abs().mean():.4f} | "
                f"{seconds[name]:.0f} |"
            )


if __name__ == "__main__":
    main()
