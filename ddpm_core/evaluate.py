"""Does the bundled model draw recognisable digits, without copying its training digits? A fixed ruler.

    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --num 1000 --steps 100 --sampler ddpm --seeds 3
    python -m ddpm_core.evaluate --train-classifier OUT.safetensors      # rebuild the ruler (not needed to evaluate)
    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --curve --num 500   # quality against network evaluations
    python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --bpd-only --bpd-images 32   # the bound in bits/dim only

1. The ruler: a small CNN digit classifier trained on the ``classifier`` split of the 5k MNIST digits (1,500 images
   the diffusion model never saw). Its weights ship in ``ddpm_core/assets/digit-classifier.safetensors`` and are
   checked against :data:`CLASSIFIER_SHA256` before loading: training it again gives other weights on another CPU
   (float reductions differ between kernels), and every figure below would move with them. Its accuracy is
   measured at every run on the ``heldout`` split (500 images neither saw).
2. ``--num`` samples per sampling seed, ``--seeds`` seeds, drawn with DDPM Explorer's own sampler.
3. Reported as mean ± std with the values behind them, so that a difference between two models can be told from
   sampling noise: (a) the fraction classified with confidence >= 0.9 and (b) the class shares, over the seeds;
   (c) the Fréchet distance in the classifier's 128-d feature space between sets of 500 samples (seeds x num / 500
   sets) and the 500 held-out digits, beside real-vs-real (6 disjoint sets of 500 digits of the diffusion split)
   and noise-vs-real (N(0, I) clipped, one set per seed); (d) memorisation: the L2 distance in pixel space from
   each sample to its nearest digit of the diffusion split (the training data), beside the same for the held-out
   digits, and the share of samples nearer than the 1% quantile of held-out digits. Pixels rather than classifier
   features, because a memorised sample is a pixel-for-pixel copy, while the classifier is trained to map
   different writings of a digit close together.
4. Judged twice: against a floor every shipped model meets (``targets_met``) and against the goal of digits as
   convincing as real ones (``as_real``, :data:`AS_REAL`): (a) at least 0.97x the real digits' rate, (b) every class
   within 7% .. 13%, (c) an FD at most 1.15x real-vs-real, (d) at most 2% of samples below the held-out 1% quantile.
5. The variational bound (DDPM eq. 5) in bits/dim on the first ``--bpd-images`` held-out digits (all T terms, one
   x_t per digit and t: T network evaluations per digit), as mean ± standard error (``bits_per_dim``).
Results go to ``eval.json`` and the model card's "Evaluation" section; a grid of samples to ``samples.png``.
With ``--curve``: (a) and (c) for every sampler at 5 .. 1000 steps, against the network evaluations each costs, in
``curve.json`` and ``curve.png`` (:func:`quality_curve`); the Space plots the first and picks its default from it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .card import write_evaluation, write_likelihood
from .classifier import CLASSIFIER_SHA256, digits, heldout_accuracy, load_classifier, save_classifier, train_classifier
from .curve import quality_curve
from .quality import cheapest_within
from .samplers import SAMPLERS
from .scoring import (
    BPD_IMAGES,
    FD_SET,
    as_real,
    check_sizes,
    classification_entries,
    classifier_entries,
    draw_runs,
    fd_entries,
    likelihood_entry,
    memorisation_entry,
    sampling_entries,
    targets_met,
)


def evaluate_likelihood(folder: Path, images: int = BPD_IMAGES, seed: int = 0) -> dict:
    """Only the bound: ``bits_per_dim`` into the folder's ``eval.json`` (other entries kept) and its card."""
    from .checkpoints import ModelCache

    folder = Path(folder).resolve()
    model = ModelCache(size=1, root=folder.parent).get(folder.name)
    entry = likelihood_entry(model, images, seed)
    path = folder / "eval.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["bits_per_dim"] = entry
    path.write_text(json.dumps(result, indent=2) + "\n")
    write_likelihood(folder, entry)
    return entry


def evaluate(
    folder: Path,
    num: int = 500,
    steps: int | None = 100,
    sampler: str = "ddpm",
    batch: int = 100,
    seed: int = 0,
    seeds: int = 3,
    classifier: Path | None = None,
    bpd_images: int = BPD_IMAGES,
) -> dict:
    """Evaluate the pipeline folder ``folder``; writes ``eval.json``, ``samples.png`` and the card's section there.

    Sampling seed s = ``seed`` .. ``seed + seeds - 1`` draws ``num`` samples in batches of ``batch``; its batch b
    uses generator seed ``1000 * s + b``. ``classifier``: another weights file (its hash is recorded, not checked).
    ``bpd_images`` held-out digits give the bound in bits/dim (:func:`likelihood_entry`; 0 skips it)."""
    from .checkpoints import ModelCache
    from .data import to_model_range
    from .imaging import make_grid, tensor_to_pil

    check_sizes(num, seeds, batch)
    folder = Path(folder).resolve()
    t0 = time.time()
    net, cls_info = load_classifier(classifier, sha256=None if classifier is not None else CLASSIFIER_SHA256)
    acc = heldout_accuracy(net)
    t_cls = time.time() - t0
    model = ModelCache(size=1, root=folder.parent).get(folder.name)  # the same safe loader the Space uses
    seed_list = list(range(seed, seed + seeds))
    t0 = time.time()
    runs = draw_runs(model, seed_list, num, batch, sampler, steps)
    t_sample = time.time() - t0

    Xh, _ = digits("heldout")
    Xd, _ = digits("diffusion")
    real = to_model_range(Xh)
    m = min(FD_SET, len(real), num)  # every FD compares m vs m vectors, so that their small-sample bias is shared
    classified, hist = classification_entries(net, runs, real)
    result = {
        **classifier_entries(acc, cls_info, classifier),
        **sampling_entries(model, num, seed_list, sampler, steps),
        **classified,
        **fd_entries(net, runs, seed_list, real, Xd, m, seed),
        "nearest_training_digit": memorisation_entry(runs, Xh, Xd),
        "seconds_classifier": round(t_cls, 1),
        "seconds_sampling": round(t_sample, 1),
        "device": str(model.device),
    }
    result["targets_met"] = targets_met(result, hist)
    result["as_real"] = as_real(result, hist)
    if bpd_images:
        result["bits_per_dim"] = likelihood_entry(model, bpd_images, seed)
    (folder / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    make_grid(tensor_to_pil(runs[0][:64]), ncols=16, scale=2).save(folder / "samples.png")
    write_evaluation(folder, result, num, steps, sampler, len(seed_list), seed, classifier)
    if bpd_images:
        write_likelihood(folder, result["bits_per_dim"])
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm_core.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", help="a pipeline folder trained on the bundled MNIST digits")
    p.add_argument("--num", type=int, default=500, help="samples per sampling seed")
    p.add_argument("--steps", type=int, default=100, help="inference steps (0: all T)")
    p.add_argument("--sampler", default="ddpm", choices=tuple(SAMPLERS))
    p.add_argument("--batch", type=int, default=100)
    p.add_argument(
        "--seed", type=int, default=0, help="first sampling seed (and the classifier's, with --train-classifier)"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of sampling seeds; figures are mean ± std over them")
    p.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="evaluate with this classifier file instead of the shipped one (its hash is recorded)",
    )
    p.add_argument(
        "--train-classifier",
        type=Path,
        default=None,
        metavar="OUT",
        help="train the evaluation classifier, write it to OUT (safetensors) and print its hash",
    )
    p.add_argument("--epochs", type=int, default=30, help="classifier training epochs (with --train-classifier)")
    p.add_argument(
        "--bpd-images",
        type=int,
        default=BPD_IMAGES,
        help="held-out digits the bound in bits/dim is computed on (T network evaluations each; 0: skip it)",
    )
    p.add_argument(
        "--bpd-only",
        action="store_true",
        help="compute only the bound; its entry goes into the folder's eval.json and card, the others are kept",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="quality against network evaluations for every sampler at 5 .. 1000 steps (curve.json, curve.png); "
        "--steps and --sampler are not used",
    )
    return p


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.train_classifier is not None:
        t0 = time.time()
        net, acc = train_classifier(args.seed, args.epochs)
        info = {
            "heldout_accuracy": round(acc, 4),
            "seed": args.seed,
            "epochs": args.epochs,
            "trained_on": "mnist_split('classifier'), 1500 digits",
            "torch": torch.__version__,
        }
        digest = save_classifier(net, args.train_classifier, info)
        print(
            json.dumps(
                {**info, "path": str(args.train_classifier), "sha256": digest, "seconds": round(time.time() - t0, 1)},
                indent=2,
            )
        )
        return
    if args.folder is None:
        p.error("give a pipeline folder to evaluate, or --train-classifier OUT")
    if args.bpd_only:
        print(json.dumps(evaluate_likelihood(Path(args.folder), args.bpd_images, args.seed), indent=2))
        return
    if args.curve:
        r = quality_curve(
            Path(args.folder),
            num=args.num,
            batch=args.batch,
            seed=args.seed,
            seeds=args.seeds,
            classifier=args.classifier,
        )
        print(json.dumps(cheapest_within(r), indent=2))
        return
    r = evaluate(
        Path(args.folder),
        args.num,
        args.steps or None,
        args.sampler,
        args.batch,
        args.seed,
        args.seeds,
        args.classifier,
        args.bpd_images,
    )
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
