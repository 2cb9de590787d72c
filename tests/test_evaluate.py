"""The evaluation's ruler stays put: shipped classifier weights behind a hash, a Fréchet distance that is exact and
finite on singular covariances, nearest-neighbour distances, and the whole evaluation on a handful of samples."""

import hashlib
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ddpm_core import GaussianDiffusion, NoiseSchedule
from ddpm_core import evaluate as ev
from ddpm_core.card import write_curve
from ddpm_core.classifier import (
    CLASSIFIER_IN_REPO,
    CLASSIFIER_PATH,
    CLASSIFIER_SHA256,
    DigitNet,
    heldout_accuracy,
    load_classifier,
    save_classifier,
)
from ddpm_core.curve import (
    CURVE_EVALUATIONS,
    CURVE_SAMPLERS,
    EXTENDED_EVALUATIONS,
    converged,
    curve_points,
    follow_plan,
    improving,
    quality_curve,
    steps_for,
    timesteps_digest,
    weights_sha256,
)
from ddpm_core.metrics import frechet_distance, frechet_distance_from_stats, nearest_distances
from ddpm_core.quality import CURVE_TEXT, cheapest_within, curve_figure, load_curve, rate_margin
from ddpm_core.samplers import SAMPLERS, get_sampler
from ddpm_core.scoring import REAL_SETS, as_real

ROOT = Path(__file__).resolve().parents[1]
CK = ROOT / "checkpoints" / "ddpm-mnist-28"


# -- the classifier -----------------------------------------------------------------------------------------------


def test_the_classifier_ships_in_the_repo_and_its_hash_verifies():
    assert CLASSIFIER_PATH.is_file() and CLASSIFIER_PATH.relative_to(ROOT).as_posix() == CLASSIFIER_IN_REPO
    assert CLASSIFIER_PATH.suffix == ".safetensors" and CLASSIFIER_PATH.stat().st_size < 4 * 2**20
    assert hashlib.sha256(CLASSIFIER_PATH.read_bytes()).hexdigest() == CLASSIFIER_SHA256
    net, info = load_classifier()
    assert info["sha256"] == CLASSIFIER_SHA256 and not net.training
    assert 0.3e6 < sum(p.numel() for p in net.parameters()) < 0.6e6
    assert {"heldout_accuracy", "seed", "epochs"} <= set(info)
    rel = CLASSIFIER_PATH.relative_to(ROOT).as_posix()
    try:
        in_git = (
            subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True).returncode
            == 0
        )
    except OSError:
        in_git = False
    if not in_git:
        pytest.skip("not a git checkout: nothing to say about what a clone holds")
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", rel], cwd=ROOT, capture_output=True).returncode
    assert tracked == 0, f"{rel} is not tracked by git: a fresh clone would lack the evaluation's ruler"


def test_a_changed_or_missing_classifier_is_a_clear_error(tmp_path):
    data = bytearray(CLASSIFIER_PATH.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    bad = tmp_path / "digit-classifier.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 .* expected " + CLASSIFIER_SHA256):
        load_classifier(bad)
    load_classifier(bad, sha256=None)  # still a valid file: loadable when asked for explicitly
    with pytest.raises(ValueError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")


def test_the_shipped_classifier_reaches_97_percent_on_held_out_digits():
    net, info = load_classifier()
    acc = heldout_accuracy(net)
    assert acc >= 0.97
    assert abs(acc - info["heldout_accuracy"]) <= 0.004  # as recorded (2 of 500 digits of slack for other CPUs)


def test_a_saved_classifier_is_byte_reproducible_and_loads(tmp_path):
    torch.manual_seed(3)
    net = DigitNet().eval()
    info = {"heldout_accuracy": 0.1, "seed": 3, "epochs": 0, "torch": torch.__version__}
    h1 = save_classifier(net, tmp_path / "a.safetensors", info)
    h2 = save_classifier(net, tmp_path / "b.safetensors", dict(reversed(info.items())))
    assert h1 == h2 == hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()
    loaded, got = load_classifier(tmp_path / "a.safetensors", sha256=h1)
    assert got == {**info, "sha256": h1}
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_the_cli_wants_a_folder_or_train_classifier():
    with pytest.raises(SystemExit):
        ev.main([])


# -- Fréchet distance ---------------------------------------------------------------------------------------------


def _pytorch_fid_reference(a, b):
    """pytorch-fid's calculate_frechet_distance, on [N x D] features."""
    from scipy import linalg

    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_fd_closed_form_for_gaussians_with_diagonal_covariances_in_any_common_basis():
    rng = np.random.default_rng(0)
    D = 12
    mu_a, mu_b = rng.normal(size=D), rng.normal(size=D)
    a, b = rng.uniform(0.01, 4, D), rng.uniform(0.01, 4, D)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))  # FD is invariant to a rotation applied to both
    got = frechet_distance_from_stats(q @ mu_a, q @ np.diag(a) @ q.T, q @ mu_b, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    # singular covariances: zero variances and a rank-1 pair; the closed form still holds exactly
    a0, b0 = np.array([0.0, 1.0, 4.0, 0.0]), np.array([1.0, 0.0, 4.0, 0.0])
    assert frechet_distance_from_stats(np.zeros(4), np.diag(a0), np.zeros(4), np.diag(b0)) == pytest.approx(
        2.0, abs=1e-12
    )


def test_fd_equals_the_pytorch_fid_recipe_where_sqrtm_is_well_posed():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 32))
    b = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32)) * 0.4 + 0.5
    assert frechet_distance(a, b) == pytest.approx(_pytorch_fid_reference(a, b), rel=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_fd_stays_finite_and_quiet_on_singular_covariances():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 128))  # N < D: rank 19
    y = rng.normal(size=(30, 128)) + 0.1
    y[:, :40] = 0.0  # dead ReLU units: zero-variance features
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a LinAlgWarning, ComplexWarning or RuntimeWarning fails the test
        fd_xy, fd_xx, fd_yy = frechet_distance(x, y), frechet_distance(x, x), frechet_distance(y, y)
    assert np.isfinite(fd_xy) and fd_xy > 0
    assert fd_xx == pytest.approx(0, abs=1e-9) and fd_yy == pytest.approx(0, abs=1e-9)  # exact, no eps bias
    # against the diagonal closed form with most variances zero
    d = np.zeros(128)
    d[:5] = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert frechet_distance_from_stats(np.zeros(128), np.diag(d), np.zeros(128), np.diag(d[::-1])) == pytest.approx(
        2 * ((np.sqrt(d[:5])) ** 2).sum(), rel=1e-12
    )


def test_fd_refuses_what_is_not_two_feature_sets_or_not_psd():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance_from_stats(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


# -- nearest neighbours -------------------------------------------------------------------------------------------


def test_nearest_distances_find_a_copied_training_image_at_zero():
    rng = np.random.default_rng(3)
    train = rng.uniform(0, 1, size=(200, 28, 28))
    samples = np.stack([train[17], np.clip(train[5] + 0.01, 0, 1), rng.uniform(0, 1, size=(28, 28))])
    d, idx = nearest_distances(samples, train, chunk=2)
    assert d[0] == 0.0 and idx[0] == 17  # an exact copy reads exactly 0
    assert idx[1] == 5 and 0 < d[1] <= 0.01 * 28
    brute = np.sqrt(((samples.reshape(3, 1, -1) - train.reshape(1, 200, -1)) ** 2).sum(-1))
    np.testing.assert_allclose(d, brute.min(1), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(idx, brute.argmin(1))
    # a copy is nearer than the 1% quantile of independent images: what the evaluation's memorisation share counts
    held, _ = nearest_distances(rng.uniform(0, 1, size=(100, 28, 28)), train)
    assert d[0] < np.quantile(held, 0.01) and d[2] >= np.quantile(held, 0.01)


# -- the evaluation -----------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~25 s on 2 shared cores: loading the model and the digits, three sampling steps
def test_a_tiny_evaluation_end_to_end(tmp_path):
    import ddpm_core.checkpoints as ck

    folder = tmp_path / "ddpm-mnist-28"
    folder.mkdir()
    for name in ("model_index.json", "README.md"):
        shutil.copy(CK / name, folder / name)
    for name in ("unet", "scheduler"):
        shutil.copytree(CK / name, folder / name)
    before = ck.CHECKPOINT_DIR
    r = ev.evaluate(folder, num=6, steps=3, batch=3, seed=5, seeds=2)
    assert ck.CHECKPOINT_DIR == before  # the loader's folder is put back
    assert r == json.loads((folder / "eval.json").read_text())
    assert r["sampling_seeds"] == [5, 6] and r["num_samples"] == 6 and r["fd_set_size"] == 6
    assert r["classifier_sha256"] == CLASSIFIER_SHA256 and r["classifier_heldout_accuracy"] >= 0.97
    # the keys eval.json always had, as means; their spreads beside them
    for key in ("confident_fraction_0.9", "fd_samples_vs_heldout", "fd_real_vs_heldout", "fd_noise_vs_heldout"):
        assert isinstance(r[key], float) and r[key + "_std"] >= 0, key
    assert len(r["confident_fraction_0.9_per_seed"]) == 2 and len(r["fd_samples_vs_heldout_runs"]) == 2
    assert len(r["fd_real_vs_heldout_runs"]) == REAL_SETS and len(r["fd_noise_vs_heldout_runs"]) == 2
    assert len(r["class_histogram"]) == len(r["class_histogram_std"]) == 10
    assert sum(r["class_histogram"]) == pytest.approx(1, abs=1e-3)
    assert all(np.isfinite(r[k]) for k in ("fd_samples_vs_heldout", "fd_real_vs_heldout", "fd_noise_vs_heldout"))
    nn = r["nearest_training_digit"]
    assert nn["num_training_digits"] == 3000 and len(nn["samples"]) == len(nn["real_heldout"]) == 3
    assert 0 < nn["real_heldout"][0] <= nn["real_heldout"][1] <= nn["real_heldout"][2]
    assert 0 <= nn["share_samples_below_heldout_q01"] <= 1
    card = (folder / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "## Training" in card
    assert "--num 6 --steps 3 --sampler ddpm --seeds 2 --seed 5" in card and CLASSIFIER_SHA256 in card
    assert f"{r['confident_fraction_0.9']:.1%}" in card and f"{r['fd_samples_vs_heldout']:.2f}" in card
    assert (folder / "samples.png").is_file()
    goal = r["as_real"]
    assert goal["met"] == all(goal["checks"].values()) and set(goal["checks"]) == {
        "confident",
        "classes",
        "fd",
        "not_memorised",
    }
    assert goal["confident_ratio"] == pytest.approx(
        r["confident_fraction_0.9"] / r["confident_fraction_0.9_real_heldout"], abs=1e-4
    )
    assert f"All four measures of digits as convincing as real ones: **{'met' if goal['met'] else 'not met'}**" in card


def _result(conf: float, fd: float, near: float) -> dict:
    """The figures :func:`ddpm_core.scoring.as_real` reads, against the shipped ruler's real digits."""
    return {
        "confident_fraction_0.9": conf,
        "confident_fraction_0.9_real_heldout": 0.952,
        "fd_samples_vs_heldout": fd,
        "fd_real_vs_heldout": 42.307,
        "nearest_training_digit": {"share_samples_below_heldout_q01": near},
    }


@pytest.mark.parametrize(
    "conf, fd, near, hist_max, failed",
    [
        (0.924, 48.0, 0.012, 0.12, set()),
        (0.923, 48.0, 0.012, 0.12, {"confident"}),  # 0.9695x real
        (0.93, 48.7, 0.012, 0.12, {"fd"}),  # 1.151x real-vs-real
        (0.93, 40.0, 0.012, 0.1333, {"classes"}),
        (0.93, 40.0, 0.021, 0.12, {"not_memorised"}),
    ],
)
def test_digits_as_convincing_as_real_ones_is_judged_on_each_figure(conf, fd, near, hist_max, failed):
    hist = np.array([hist_max] + [(1 - hist_max) / 9] * 9)
    goal = as_real(_result(conf, fd, near), hist)
    assert {k for k, ok in goal["checks"].items() if not ok} == failed
    assert goal["met"] == (not failed)


def test_the_recorded_evaluation_uses_the_shipped_ruler_and_reports_spreads():
    r = json.loads((CK / "eval.json").read_text())
    card = (CK / "README.md").read_text()
    assert r["classifier_sha256"] == CLASSIFIER_SHA256 and CLASSIFIER_SHA256 in card
    assert r["num_seeds"] >= 3 and len(r["confident_fraction_0.9_per_seed"]) == r["num_seeds"]
    assert r["fd_samples_vs_heldout_std"] > 0 and r["fd_real_vs_heldout_std"] > 0
    # the model draws digits nearer to real ones than noise by far, and does not copy its training digits
    assert r["fd_samples_vs_heldout"] + 3 * r["fd_samples_vs_heldout_std"] < 0.05 * r["fd_noise_vs_heldout"]
    assert r["nearest_training_digit"]["share_samples_below_heldout_q01"] < 0.05
    assert f"python -m ddpm_core.evaluate checkpoints/ddpm-mnist-28 --num {r['num_samples']}" in card


def test_the_shipped_curve_belongs_to_the_shipped_weights():
    """The Space picks its default from curve.json: a curve measured on other weights would mislead it."""
    curve = json.loads((CK / "curve.json").read_text())
    assert curve["weights_sha256"] == weights_sha256(CK)
    assert curve["classifier_sha256"] == CLASSIFIER_SHA256
    d = GaussianDiffusion.from_config(str(CK / "scheduler" / "scheduler_config.json"))
    drawn = {(p["sampler"], p["steps"]) for p in curve["points"]}
    margin = rate_margin(curve)
    for sampler, steps in curve_points(d):  # every base budget, unless the sampler had levelled off before it
        rows = [p for p in curve["points"] if p["sampler"] == sampler and p["steps"] < steps]
        assert (sampler, steps) in drawn or converged(sampler, rows, margin), (sampler, steps)
    for p in curve["points"]:  # each point drawn on the timesteps its sampler visits today
        assert p["timesteps"] == timesteps_digest(d, p["sampler"], p["steps"]), p


@pytest.fixture
def pipeline_copy(tmp_path, monkeypatch):
    """A copy of the bundled pipeline folder (without its card and results), the working directory beside it."""
    folder = tmp_path / "ddpm-mnist-28"
    folder.mkdir()
    for name in ("unet", "scheduler"):
        shutil.copytree(CK / name, folder / name)
    shutil.copy(CK / "model_index.json", folder / "model_index.json")
    monkeypatch.chdir(tmp_path)
    return folder


def test_a_tiny_quality_curve_end_to_end(pipeline_copy):
    folder = pipeline_copy
    points = [("ddpm", 3), ("ddim", 2), ("dpmsolver++", 2)]
    r = quality_curve(folder, points, num=6, batch=3, seed=1, seeds=2, log=lambda line: None)
    assert r == json.loads((folder / "curve.json").read_text())
    assert [(p["sampler"], p["steps"]) for p in r["points"]] == points
    # one network evaluation per step for each of these samplers (DPM-Solver++ 2M reuses the previous one)
    assert [p["evaluations"] for p in r["points"]] == [3, 2, 2]
    for p in r["points"]:
        assert 0 <= p["confident"] <= 1 and p["confident_std"] >= 0 and np.isfinite(p["fd"]) and p["fd_std"] >= 0
        assert p["seconds_per_image"] > 0
    ref = r["reference"]
    assert 0.9 < ref["confident_real_heldout"] <= 1 and ref["fd_real_vs_heldout"] > 0
    assert r["command"] == "python -m ddpm_core.evaluate ddpm-mnist-28 --curve --num 6 --batch 3 --seeds 2 --seed 1"
    assert r["sampling_seeds"] == [1, 2] and r["classifier_sha256"] == CLASSIFIER_SHA256
    with Image.open(folder / "curve.png") as im:
        assert im.size == (1000, 380)


def test_a_curve_resumes_from_its_points_for_the_same_weights_only(pipeline_copy):
    folder = pipeline_copy
    drawn = []
    first = quality_curve(folder, [("ddim", 2)], num=4, batch=4, log=drawn.append)
    both = quality_curve(folder, [("ddim", 2), ("ddpm", 1)], num=4, batch=4, log=drawn.append)
    assert len(drawn) == 2 and "ddpm" in drawn[1]  # the DDIM point was kept, not drawn again
    assert both["points"][0] == first["points"][0]
    assert both["weights_sha256"] == first["weights_sha256"]
    quality_curve(folder, [("ddim", 2)], num=5, batch=5, log=drawn.append)  # other sizes: drawn again
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.bias"] = state["conv_out.bias"] + 1e-3
    save_file(state, weights)  # other weights: drawn again
    quality_curve(folder, [("ddim", 2)], num=5, batch=5, log=drawn.append)
    assert len(drawn) == 4


def test_a_cut_curve_run_keeps_the_points_it_has_not_reached(pipeline_copy):
    """A run stopped part-way (here by its log raising at its first new point) leaves every earlier point in
    ``curve.json``, also those it would have reached later; a finished run keeps only its own points."""
    folder = pipeline_copy
    quality_curve(folder, [("ddim", 2), ("ddpm", 1)], num=4, batch=4, log=lambda line: None)

    def cut(line):
        raise KeyboardInterrupt(line)

    with pytest.raises(KeyboardInterrupt, match="ddpm"):
        quality_curve(folder, [("ddpm", 1), ("ddpm", 2)], num=4, batch=4, log=cut)
    kept = {(p["sampler"], p["steps"]) for p in load_curve(folder)["points"]}
    assert kept == {("ddim", 2), ("ddpm", 1)}
    done = quality_curve(folder, [("ddpm", 1), ("ddpm", 2)], num=4, batch=4, log=lambda line: None)
    assert [(p["sampler"], p["steps"]) for p in done["points"]] == [("ddpm", 1), ("ddpm", 2)]


def test_the_curve_goes_into_the_model_card_once_before_the_evaluation(tmp_path):
    def point(sampler, steps, confident, fd):
        return dict(
            sampler=sampler,
            steps=steps,
            evaluations=steps,
            confident=confident,
            confident_std=0.01,
            fd=fd,
            fd_std=1.0,
            seconds_per_image=0.01,
        )

    curve = {
        "command": "python -m ddpm_core.evaluate x --curve",
        "num_samples": 500,
        "batch": 250,
        "sampling_seeds": [0],
        "device": "cpu",
        "reference": {"confident_real_heldout": 0.95, "fd_real_vs_heldout": 40.0},
        "points": [point("ddpm", 10, 0.80, 90.0), point("ddpm", 100, 0.88, 47.0), point("ddim", 50, 0.84, 68.0)],
    }
    card = tmp_path / "README.md"
    card.write_text("# model\n\n## Training\n\ntext\n\n## Evaluation\n\nfigures\n")
    write_curve(tmp_path, curve)
    write_curve(tmp_path, curve)  # a second run replaces the section
    text = card.read_text()
    assert text.count("## Quality against steps") == 1
    assert text.index("## Training") < text.index("## Quality against steps") < text.index("## Evaluation")
    assert "| DDIM" in text and "![quality against steps](curve.png)" in text and text.endswith("figures\n")
    assert "**DDPM (fewer steps), 100 steps**" in text  # the cheapest within the margin of the best
    fig = curve_figure(curve, {"x": "NFE"})
    assert fig.axes[0].get_xlabel() == "NFE" and fig.axes[1].get_title() == CURVE_TEXT["fd"]
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    assert load_curve(tmp_path) == curve and load_curve(tmp_path / "nowhere") is None


def test_curve_points_are_evaluation_budgets_within_the_models_steps():
    d1000 = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    d100 = GaussianDiffusion(NoiseSchedule.make("linear", 100))
    assert CURVE_SAMPLERS == tuple(SAMPLERS)
    points = curve_points(d1000)
    assert len(points) == len(SAMPLERS) * len(CURVE_EVALUATIONS)
    for sampler, steps in points:  # the most steps within each budget
        e = get_sampler(sampler).evaluations(d1000, steps)
        assert e <= CURVE_EVALUATIONS[[steps_for(d1000, sampler, b) for b in CURVE_EVALUATIONS].index(steps)]
        assert get_sampler(sampler).evaluations(d1000, steps + 1) > e
    assert ("heun-karras", 3) in points and ("heun-karras", 50) in points  # 5 and 99 evaluations
    assert ("ddim", 100) in points and ("ddpm", 5) in points
    assert curve_points(d100, samplers=("ddim",), budgets=(5, 100, 250)) == [("ddim", 5), ("ddim", 100)]


def test_the_extended_budgets_skip_step_counts_a_samplers_timestep_rule_cannot_make():
    """DPM-Solver's 'leading' rule at T steps repeats t = 0 (diffusers' set_timesteps(1000) gives 1000 zeros): the
    1000-evaluation point of a multistep solver on the bundled model is its 999-step run, each t visited once."""
    d = GaussianDiffusion.from_config(str(CK / "scheduler" / "scheduler_config.json"))
    assert d.timestep_spacing == "leading"
    with pytest.raises(ValueError, match="repeated"):
        get_sampler("dpmsolver++2m-sde").timesteps(d, 1000)
    for sampler in SAMPLERS:
        steps = steps_for(d, sampler, EXTENDED_EVALUATIONS[-1])
        ts = np.asarray(get_sampler(sampler).timesteps(d, steps))
        assert len(np.unique(ts)) == len(ts) and get_sampler(sampler).evaluations(d, steps) <= 1000, sampler
    assert steps_for(d, "dpmsolver++2m-sde", 1000) == 999 and steps_for(d, "ddpm", 1000) == 1000


def test_a_sampler_is_extended_only_while_it_improves_and_skipped_once_it_levels_off():
    def row(evals, confident, fd):
        return {"evaluations": evals, "confident": confident, "fd": fd}

    assert improving([row(50, 0.80, 60.0)], margin=0.02)  # one point: nothing to compare
    assert not improving([row(20, 0.70, 90.0), row(50, 0.80, 60.0), row(100, 0.81, 58.0)], margin=0.02)
    assert improving([row(50, 0.80, 60.0), row(100, 0.84, 58.0)], margin=0.02)  # the rate still rises
    assert improving([row(50, 0.80, 70.0), row(100, 0.80, 60.0)], margin=0.02)  # the FD still falls
    assert not improving([row(50, 0.88, 54.0), row(100, 0.85, 45.0)], margin=0.02)  # a trade, not a trend
    assert not improving([row(50, 0.84, 68.0), row(100, 0.80, 90.0)], margin=0.02)  # worse: not paid for again
    # levelled off: only a deterministic sampler's base budgets are skipped
    flat = [row(20, 0.846, 58.5), row(50, 0.852, 57.2)]
    assert converged("dpmsolver++", flat, margin=0.02) and not converged("ddpm", flat, margin=0.02)
    assert not converged("dpmsolver++", flat[:1], margin=0.02)
    assert not converged("euler-karras", [row(20, 0.834, 85.8), row(50, 0.846, 65.4)], margin=0.02)


def test_the_cheapest_setting_within_a_margin_of_the_best():
    def point(sampler, evals, confident, fd):
        return {"sampler": sampler, "steps": evals, "evaluations": evals, "confident": confident, "fd": fd}

    curve = {
        "num_samples": 10_000,
        "sampling_seeds": [0],
        "points": [
            point("ddpm", 10, 0.50, 300.0),
            point("ddpm", 100, 0.88, 60.0),
            point("ddpm", 1000, 0.90, 50.0),
            point("ddim", 20, 0.895, 54.0),
            point("ddim", 50, 0.90, 52.0),
            point("dpmsolver++", 10, 0.895, 80.0),  # within the rate's margin, but its FD is not
        ],
    }
    # the default margin is the noise of a rate difference: sqrt(2 * 0.9 * 0.1 / 10,000) = 0.0042 < 0.005
    assert rate_margin(curve) == pytest.approx(0.0042426, rel=1e-4)
    assert cheapest_within(curve) == curve["points"][4]
    assert cheapest_within(curve, margin=0.01) == curve["points"][3]
    assert cheapest_within(curve, margin=0.0) == curve["points"][4]
    curve["num_samples"] = 500  # fewer samples, a wider margin: 0.019
    assert cheapest_within(curve) == curve["points"][3]
    # with loose margins both 10-evaluation points qualify: the higher rate wins the tie
    assert cheapest_within(curve, margin=0.5, fd_ratio=10) == curve["points"][5]


def test_the_plan_replayed_on_the_shipped_curve_skips_what_had_levelled_off():
    """:func:`follow_plan` on the shipped curve's own figures (``bench/curve_cost.py`` prices it): the ODE solvers
    that had levelled off by 50 evaluations are not drawn at 100, Euler (still falling) and the stochastic samplers
    are; DDPM is extended to 250 (its FD fell from 50 to 100) but not to 1000 (no better at 250), and DPM-Solver++ 2M
    SDE, whose 100-evaluation point traded rate for FD, not at all."""
    curve = json.loads((CK / "curve.json").read_text())
    d = GaussianDiffusion.from_config(str(CK / "scheduler" / "scheduler_config.json"))
    rows = {(p["sampler"], p["steps"]): p for p in curve["points"]}
    asked = []

    def measure(sampler, steps):
        asked.append((sampler, steps))
        return rows[(sampler, steps)]

    order = follow_plan(d, curve_points(d), measure, curve["num_samples"] * len(curve["sampling_seeds"]))
    assert order == [p for p in order if p in asked] and len(asked) == len(order)  # each point measured once
    skipped = set(curve_points(d)) - set(order)
    assert skipped == {
        ("ddim", 100),
        ("dpmsolver++", 100),
        ("dpmsolver++3m", 100),
        ("unipc", 100),
        ("heun-karras", 50),
    }
    assert ("euler-karras", 100) in order and ("ddpm", 100) in order and ("dpmsolver++2m-sde", 100) in order
    assert [p for p in order if p not in curve_points(d)] == [("ddpm", 250)], order
    # what the plan leaves out does not move the Space's default
    planned = {**curve, "points": [rows[p] for p in order]}
    assert cheapest_within(planned) == cheapest_within(curve)
