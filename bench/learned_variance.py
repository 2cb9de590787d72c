"""Does the hybrid loss train a learned variance? A short CPU run of the training CLI, then the learned v per t.

    python bench/learned_variance.py --steps 300 --batch-size 16 --timesteps 100

Trains a ``tiny`` learned_range UNet on the bundled MNIST digits with L_hybrid = L_simple + 0.001 L_vlb (Nichol &
Dhariwal 2021, sec. 3.1), then reads its variance output v on held-out digits: the reverse step's log-variance is
v' log beta_t + (1 - v') log beta~_t with v' = (v + 1) / 2 (IDDPM eq. 15), so v' = 1 is beta_t (fixed_large) and
v' = 0 is beta~_t (fixed_small). Reported per band of t: the mean v' and the learned sigma^2 against beta_t and
beta~_t, for the freshly initialised UNet (the same seed) and the trained one, and the bound in bits/dim of each on
the same digits and draws. Writes ``bench/results/cpu-learned-variance.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import common
from ddpm_core import GaussianDiffusion, NoiseSchedule
from ddpm_core.data import mnist_split, to_model_range
from ddpm_core.likelihood import calc_bpd_loop
from ddpm_core.train import build_unet
from ddpm_core.train import main as train_main


def learned_fraction(diffusion, unet, x0, generator) -> np.ndarray:
    """Mean v' = (v + 1) / 2 over digits and pixels at every t ``[T]``, at x_t ~ q(x_t | x_0)."""
    fracs = []
    with torch.no_grad():
        for t in range(diffusion.num_timesteps):
            x_t = diffusion.q_sample(x0, t, generator=generator)
            out = diffusion.model_output(unet, x_t, t)
            fracs.append(((out[:, x0.shape[1] :] + 1) / 2).mean().item())
    return np.array(fracs)


def bands(T: int) -> list[tuple[int, int]]:
    edges = sorted({0, 1, 2, 5, T // 10, T // 4, T // 2, T})
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if a < b]


def summary(diffusion, frac: np.ndarray) -> list[dict]:
    s = diffusion.schedule
    rows = []
    for a, b in bands(diffusion.num_timesteps):
        lo, hi = s.posterior_log_variance_clipped[a:b].numpy(), s.betas[a:b].log().numpy()
        lo = np.where(np.arange(a, b) == 0, float(s.posterior_log_variance_clipped[1]), lo)  # the decoder's end
        var = np.exp(frac[a:b] * hi + (1 - frac[a:b]) * lo)
        rows.append(
            {
                "t": f"{a}..{b - 1}",
                "v_prime": round(float(frac[a:b].mean()), 3),
                "sigma2_over_beta": round(float((var / np.exp(hi)).mean()), 4),
                "beta_tilde_over_beta": round(float(np.exp(lo - hi).mean()), 4),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--timesteps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--images", type=int, default=16, help="held-out digits the variance and the bound are read on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    args = p.parse_args()
    out = common.TMP / "ddpm-learned-variance"
    argv = [
        "--data", "mnist", "--model-size", "tiny", "--variance-type", "learned_range", "--loss-type", "hybrid",
        "--schedule", "linear_improved", "--timesteps", str(args.timesteps), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--warmup", "50", "--lr", "1e-3", "--ema-decay", "0.99",
        "--save-every", "0", "--sample-every", "0", "--log-every", "50", "--seed", str(args.seed),
        "--threads", str(args.threads), "--out", str(out),
    ]  # fmt: skip
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train_main(argv)
    train_s = time.perf_counter() - t0

    from diffusers import UNet2DModel

    diffusion = GaussianDiffusion(
        NoiseSchedule.make("linear_improved", args.timesteps), variance_type="learned_range", clip_sample=True
    )
    torch.manual_seed(args.seed)  # the CLI's initial weights (accelerate's set_seed, then the UNet)
    init = build_unet("tiny", 28, 1, learned_variance=True).eval()
    trained = UNet2DModel.from_pretrained(str(out / "unet")).eval()
    X, _ = mnist_split("heldout")
    x0 = to_model_range(X[: args.images])
    result = {
        "command": "python bench/learned_variance.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    }
    result.update(machine=common.machine(), train_argv=argv, train_seconds=round(train_s, 1))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    result["loss_first_last"] = [round(log[0]["loss"], 4), round(log[-1]["loss"], 4)]
    for name, unet in (("initial", init), ("trained", trained)):
        frac = learned_fraction(diffusion, unet, x0, torch.Generator().manual_seed(1))
        t1 = time.perf_counter()
        bound = calc_bpd_loop(diffusion, unet, x0, generator=torch.Generator().manual_seed(2), max_batch=400)
        result[name] = {
            "bands": summary(diffusion, frac),
            "bpd_mean": round(float(bound.total_bpd.mean()), 4),
            "decoder_bpd_mean": round(float(bound.decoder_bpd.mean()), 4),
            "bound_seconds": round(time.perf_counter() - t1, 1),
        }
    path = common.ROOT / "bench" / "results" / "cpu-learned-variance.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
