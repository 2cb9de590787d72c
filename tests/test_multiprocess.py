"""Two CPU processes (gloo) against one, through the real launchers: sampling writes the same bytes with every batch
drawn once and resumes; training with 2 x B follows 1 x 2B within a derived float32 tolerance, writes checkpoints,
EMA and the pipeline once (rank 0) and resumes exactly."""

import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
U = 2.0**-24  # float32 unit roundoff
EPS32 = torch.finfo(torch.float32).eps  # float32 ulp of 1 (2u)

pytestmark = pytest.mark.timeout(600)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "MASTER_", "PMI_", "OMPI_"))
        and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    }
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        DIFFUSERS_VERBOSITY="error",
        TQDM_DISABLE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        **extra,
    )
    return env


def _run(cmd, timeout=240, check=True, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def torchrun(n: int, *args) -> list:
    """``args``: ``-m module ...`` or ``script ...``; a ``--`` after the target keeps torchrun's parser off the
    target's options (it would take ``--num`` for an abbreviation of its own ``--numa-binding``)."""
    k = 2 if args[0] == "-m" else 1
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        n,
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        _port(),
        *args[:k],
        "--",
        *args[k:],
    ]


def accelerate_launch(*args) -> list:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("[0-9]*.png"))}


# ------------------------------------------------------------------------------------------------ sampling

SAMPLE = [
    "-m",
    "ddpm_core.sample",
    "--model",
    "ddpm-mnist-28",
    "--num",
    "9",
    "--batch",
    "2",
    "--steps",
    "4",
    "--seed",
    "3",
]


@pytest.mark.slow
def test_two_processes_write_the_single_process_set_once_and_resume(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, *SAMPLE, "--out", one])
    out = _run(torchrun(2, *SAMPLE, "--out", two)).stdout
    ref = _pngs(one)
    assert len(ref) == 9 and _pngs(two) == ref  # batch b is seed + b, full-size, whoever draws it
    rec = json.loads((two / "sampling.json").read_text())
    assert rec["num_processes"] == 2 and rec["images"] == 9 and "9 / 9 images" in out
    # five batches (the last one holds a single image), each drawn once, by its owner b % 2
    assert [(r["rank"], r["drawn"], r["images"]) for r in rec["ranks"]] == [(0, [0, 2, 4], 5), (1, [1, 3], 4)]
    assert not list(two.glob(".*"))  # no temporary file left

    # a killed run: images 3 (batch 1, rank 1) and 8 (batch 4, rank 0) missing, a stray temporary file of batch 2
    (two / "000003.png").unlink()
    (two / "000008.png").unlink()
    stale = two / ".000005.png.1-4242.tmp"
    stale.write_bytes(b"partial")
    _run(accelerate_launch("--multi_gpu", "--num_processes", 2, "--main_process_port", _port(), *SAMPLE, "--out", two))
    rec = json.loads((two / "sampling.json").read_text())
    assert [(r["drawn"], r["skipped"]) for r in rec["ranks"]] == [([4], 2), ([1], 1)]
    assert _pngs(two) == ref and not stale.exists()


def test_accelerate_cpu_launcher_with_several_processes_is_refused(tmp_path):
    """accelerate's --cpu launcher starts N processes only through mpirun: without it, one process must not pass for N."""
    proc = _run(accelerate_launch("--cpu", "--num_processes", 2, *SAMPLE, "--out", tmp_path), check=False, timeout=120)
    assert proc.returncode != 0 and "started one process" in proc.stdout + proc.stderr
    assert not _pngs(tmp_path)


def test_launch_checks(monkeypatch):
    from ddpm_core import sample

    for var in sample.WORLD_SIZE_VARS + ("ACCELERATE_USE_CPU", "MASTER_ADDR", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sample.launched_processes() == 1 and not sample.use_cpu()
    sample.check_launch(SimpleNamespace(num_processes=1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sample.use_cpu()  # several processes, no GPU: accelerate must form a gloo group
    with pytest.raises(SystemExit, match="refusing"):
        sample.check_launch(SimpleNamespace(num_processes=1))  # launched as 2, but alone: would do all the work
    sample.check_launch(SimpleNamespace(num_processes=2))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert sample.launched_processes() == 3


# ------------------------------------------------------------------------------------------------ training

B, STEPS = 4, 3
TRAIN = [
    "--data",
    "mnist",
    "--model-size",
    "tiny",
    "--steps",
    STEPS,
    "--save-every",
    2,
    "--sample-every",
    0,
    "--threads",
    1,
    "--grad-clip",
    0,
]  # no clipping: the recorded gradient is the plain average, scale included

# Runs a CLI module as __main__ and records, per rank, the files it writes under PROBE_OUT (open() for writing,
# renames, and the two native writers: torch.save and safetensors) and the optimiser's parameters, gradients and
# learning rate before each of the first PROBE_STEPS steps.
RUNNER = textwrap.dedent("""
    import json, os, runpy, sys
    rank, probe, watched = os.environ.get("RANK", "0"), os.environ["PROBE_DIR"], os.path.realpath(os.environ["PROBE_OUT"])
    writes = []

    def note(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            p = os.path.realpath(os.fsdecode(path))
            if p.startswith(watched + os.sep):
                writes.append(os.path.relpath(p, watched))

    def audit(event, args):
        if event == "open" and ((args[1] and any(c in args[1] for c in "wax+"))
                                or (args[1] is None and args[2] & (os.O_WRONLY | os.O_RDWR))):
            note(args[0])
        elif event == "os.rename":
            note(args[1])

    sys.addaudithook(audit)
    import safetensors.torch as st
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    def wrap(mod, name, pos):
        orig = getattr(mod, name)
        def f(*a, **k):
            note(a[pos] if len(a) > pos else k.get("f", k.get("filename")))
            return orig(*a, **k)
        setattr(mod, name, f)

    wrap(st, "save_file", 1)
    wrap(torch, "save", 1)
    seen = [0]

    def pre_step(opt, args, kwargs):
        if seen[0] < int(os.environ["PROBE_STEPS"]):
            ps = [p for g in opt.param_groups for p in g["params"]]
            torch.save({"params": [p.detach().clone() for p in ps], "grads": [p.grad.detach().clone() for p in ps],
                        "lr": opt.param_groups[0]["lr"]}, os.path.join(probe, f"step{seen[0]}-rank{rank}.pt"))
        seen[0] += 1

    register_optimizer_step_pre_hook(pre_step)
    sys.argv = sys.argv[1:]
    try:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    finally:
        with open(os.path.join(probe, f"writes-rank{rank}.json"), "w") as f:
            json.dump(writes, f)
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training twice: 2 processes x batch B (torchrun) and 1 process x batch 2B, both recorded."""
    root = tmp_path_factory.mktemp("train")
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    res = {}
    for name, n in (("two", 2), ("one", 1)):
        probe, out = root / f"probe-{name}", root / name
        probe.mkdir()
        args = [runner, "ddpm_core.train", *TRAIN, "--batch-size", B * 2 // n, "--out", out / "run"]
        proc = _run(
            torchrun(2, *args) if n == 2 else [sys.executable, *args],
            PROBE_DIR=str(probe),
            PROBE_OUT=str(out),
            PROBE_STEPS=str(STEPS),
        )
        res[name] = SimpleNamespace(
            probe=probe,
            out=out / "run",
            stdout=proc.stdout,
            steps=[torch.load(probe / f"step{k}-rank0.pt") for k in range(STEPS)],
        )
    return SimpleNamespace(root=root, **res)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten().double() for t in tensors])


@functools.lru_cache(maxsize=1)
def _dataset():
    from ddpm_core.data import build_dataset

    return build_dataset("mnist", 28, 1)


def _per_sample_grads(params, step: int) -> torch.Tensor:
    """``[2B x P]`` float64 gradients of each sample's term of step ``step``'s global-batch loss (the mean over 2B
    samples of the per-pixel MSE of the predicted noise), at ``params``, for the samples, t and noise the CLI defines."""
    from ddpm_core.schedule import NoiseSchedule
    from ddpm_core.train import GlobalBatchShard, build_unet, step_draws

    G = 2 * B
    ds = _dataset()
    x0 = ds.tensors[0][GlobalBatchShard(len(ds), G, 1, 0, 0, 0, STEPS).global_indices(step)].double()
    t, noise = step_draws(0, step, G, (1, 28, 28), 1000, "cpu")
    abar = NoiseSchedule.make("linear", 1000).alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    xt, noise = abar.sqrt() * x0 + (1 - abar).sqrt() * noise.double(), noise.double()
    unet = build_unet("tiny", 28, 1).double()
    with torch.no_grad():
        for p, v in zip(unet.parameters(), params):
            p.copy_(v)
    rows = []
    for i in range(G):
        unet.zero_grad()
        (((unet(xt[i : i + 1], t[i : i + 1]).sample - noise[i : i + 1]) ** 2).mean() / G).backward()
        rows.append(_flat(p.grad for p in unet.parameters()))
    return torch.stack(rows)


def _gamma(n: int, lam: float = 8.0) -> float:
    """Higham & Mary's probabilistic bound for an n-term float32 sum in any order: |error| <= gamma * sum|terms|,
    failing with probability below 2n exp(-lam^2 (1-u)^2 / 2) per element (lam = 8: < 1e-9 for n ~ 6e3, so < 1e-4 over
    every parameter of the tiny UNet, ~2e5)."""
    return math.exp(lam * math.sqrt(n) * U + n * U * U / (1 - U)) - 1


@pytest.mark.slow
def _gradients_and_weights_agree(two, one) -> list:
    """Step by step: both runs' gradients within the summation bound of the exact global-batch gradient, the
    weights within the AdamW propagation of that bound (the derivation is the test's docstring). Returns the
    weight tolerance after each step."""
    gamma = _gamma(2 * B * 28 * 28)
    b1, b2, eps = 0.9, 0.999, 1e-8  # AdamW's defaults, as train.py uses them
    m = v = 0.0
    e_max, tol = 0.0, 0.0
    W0 = _flat(one.steps[0]["params"])
    weight_tols = []
    for k in range(STEPS):
        gi = _per_sample_grads(one.steps[k]["params"], k)
        exact, S = gi.sum(0), gi.abs().sum(0).norm().item()
        g1, g2 = _flat(one.steps[k]["grads"]), _flat(two.steps[k]["grads"])
        assert (g1 - exact).norm() <= gamma * S, k  # the CLI's loss is the global batch's, as defined
        assert (g2 - g1).norm() <= 2 * gamma * S, k
        if k == 0:  # the bound tells apart what a wrong split would give: rank 0's half alone, or a sum, not a mean
            assert (2 * gi[:B].sum(0) - g1).norm() > 100 * 2 * gamma * S
            assert (2 * g1 - g1).norm() > 100 * 2 * gamma * S
        e_max = max(e_max, 2 * gamma * S)
        m, v = b1 * m + (1 - b1) * g1, b2 * v + (1 - b2) * g1 * g1
        mh, sv = m / (1 - b1 ** (k + 1)), (v / (1 - b2 ** (k + 1))).sqrt()
        w1 = torch.tensor([(1 - b1) * b1 ** (k - s) / (1 - b1 ** (k + 1)) for s in range(k + 1)], dtype=torch.float64)
        w2 = torch.tensor([(1 - b2) * b2 ** (k - s) / (1 - b2 ** (k + 1)) for s in range(k + 1)], dtype=torch.float64)
        c = (w1**2 / w2).sum().sqrt().item()
        du = (e_max * (1 + mh.abs() / (sv + eps)) / ((sv - e_max).clamp(min=0) + eps)).clamp(max=2 * c)
        tol = tol + one.steps[k]["lr"] * du
        if k + 1 < STEPS:  # weights after k + 1 steps (recorded before the next step)
            wa, wb = _flat(two.steps[k + 1]["params"]), _flat(one.steps[k + 1]["params"])
            T = tol + (k + 1) * EPS32 * torch.maximum(wa.abs(), wb.abs())
            assert ((wa - wb).abs() <= T).all(), f"after {k + 1} steps: {((wa - wb).abs() > T).sum()} weights off"
            # not vacuous: for a good share of the weights the tolerance is below half of their own movement
            assert (T < (wb - W0).abs() / 2).float().mean() > 0.1
        weight_tols.append(tol.clone())
    return weight_tols


def test_two_processes_train_like_one_with_twice_the_batch(runs):
    """2 x B and 1 x 2B compute the same global-batch gradient, up to float32 rounding in a different order; the
    tolerance is derived (not measured):

    * Gradient. Each gradient element of the tiny UNet at 28x28 is a float32 sum of at most N = 2B * 28 * 28 terms
      (a conv weight gradient sums over samples and positions; DDP's average adds the two half-batch sums). Summed in
      any order, a run's error is <= gamma_N * sum|terms| (Higham & Mary's probabilistic bound, lam = 8, about
      8 sqrt(N) u = 634 u); sum|terms| is taken as S = sum_i |g_i| over the 2B per-sample gradients (float64),
      normwise: |g_run - g_exact| <= gamma_N |S| and |g_2proc - g_1proc| <= 2 gamma_N |S|. Weights that differ by
      a few ulps (later steps) act as one more rounding per product: inside the same bound.
    * Weights. AdamW (no weight decay) moves weight j by lr * m/(sqrt(v) + eps). With each gradient element off by at
      most e (the normwise bound, used elementwise), the bias-corrected moments are weighted means, so m and sqrt(v)
      move by at most e_max (the largest e so far) and the update by at most e_max (1 + |m|/(sqrt(v)+eps)) /
      (max(sqrt(v) - e_max, 0) + eps), and never by more than 2c (|m| <= c sqrt(v) by Cauchy-Schwarz over the
      moment weights); plus one float32 rounding of the stored weight per step and run (k ulps after k steps).
    """
    two, one = runs.two, runs.one
    # the same initial weights; both ranks hold the same averaged gradient at every step; the same LR schedule
    assert all(torch.equal(a, b) for a, b in zip(two.steps[0]["params"], one.steps[0]["params"]))
    for k in range(STEPS):
        r1 = torch.load(two.probe / f"step{k}-rank1.pt")
        assert all(torch.equal(a, b) for a, b in zip(two.steps[k]["grads"], r1["grads"]))
        assert two.steps[k]["lr"] == one.steps[k]["lr"] == pytest.approx(5e-4 * (k + 1) / 200, rel=1e-12)

    weight_tols = _gradients_and_weights_agree(two, one)

    # the saved checkpoint holds the weights after 2 steps, the saved pipeline the EMA after 3 (a convex combination
    # of the weights after steps 1..3: within the largest of their tolerances, plus the EMA's own roundings)
    from safetensors.torch import load_file

    order = _file_order()
    for run in (two, one):
        ck = load_file(run.out / "checkpoint-2" / "model.safetensors")
        assert torch.equal(_flat(ck[n] for n in sorted(ck)), _flat(run.steps[2]["params"])[order])
    ema2, ema1 = (
        _flat(f[n] for n in sorted(f))
        for f in (load_file(r.out / "unet" / "diffusion_pytorch_model.safetensors") for r in (two, one))
    )
    T = torch.stack(weight_tols).max(0).values[order] + STEPS * 3 * EPS32 * torch.maximum(ema1.abs(), ema2.abs())
    assert ((ema2 - ema1).abs() <= T).all()


def _file_order() -> torch.Tensor:
    """Indices that put a flat vector in the optimiser's parameter order into the saved files' order (sorted names)."""
    from ddpm_core.train import build_unet

    unet = build_unet("tiny", 28, 1)
    sizes = {n: p.numel() for n, p in unet.named_parameters()}
    starts, pos = {}, 0
    for n in sizes:
        starts[n], pos = pos, pos + sizes[n]
    return torch.cat([torch.arange(starts[n], starts[n] + sizes[n]) for n in sorted(sizes)])


@pytest.mark.slow
def test_checkpoints_ema_and_pipeline_written_once_by_rank_zero(runs):
    rank0 = json.loads((runs.two.probe / "writes-rank0.json").read_text())
    rank1 = json.loads((runs.two.probe / "writes-rank1.json").read_text())
    # rank 1 writes its own RNG state into the checkpoint, nothing else
    assert rank1 == ["run/checkpoint-2/random_states_1.pkl"]
    for f in (
        "checkpoint-2/model.safetensors",
        "checkpoint-2/optimizer.bin",
        "checkpoint-2/scheduler.bin",
        "checkpoint-2/custom_checkpoint_0.pkl",
        "checkpoint-2/random_states_0.pkl",  # custom_checkpoint_0: the EMA
        "unet/diffusion_pytorch_model.safetensors",
        "model_index.json",
        "README.md",
    ):
        assert rank0.count(f"run/{f}") == 1, f
    assert sorted(p.name for p in (runs.two.out / "checkpoint-2").iterdir()) == sorted(
        [
            "model.safetensors",
            "optimizer.bin",
            "scheduler.bin",
            "custom_checkpoint_0.pkl",
            "random_states_0.pkl",
            "random_states_1.pkl",
        ]
    )
    card = (runs.two.out / "README.md").read_text()
    assert "| processes | 2 |" in card and f"| effective batch | {2 * B} (2 x {B}) |" in card
    assert "torchrun --nproc_per_node 2 -m ddpm_core.train" in card and f"--batch-size {2 * B}`" in card
    assert "| processes | 1 |" in (runs.one.out / "README.md").read_text()
    assert f"steps of batch {2 * B} (2 processes x {B})" in runs.two.stdout


@pytest.mark.slow
def test_two_process_training_resumes_where_it_stopped(runs):
    """accelerate's launcher this time: from checkpoint-2 to step 3 gives the uninterrupted run's weights, bit for bit."""
    from safetensors.torch import load_file

    out = runs.root / "resumed"
    out.mkdir()
    shutil.copytree(runs.two.out / "checkpoint-2", out / "checkpoint-2")
    proc = _run(
        accelerate_launch(
            "--multi_gpu",
            "--num_processes",
            2,
            "--main_process_port",
            _port(),
            "-m",
            "ddpm_core.train",
            *TRAIN,
            "--batch-size",
            B,
            "--out",
            out,
            "--resume",
            "latest",
        )
    )
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    ref = load_file(runs.two.out / "unet" / "diffusion_pytorch_model.safetensors")
    got = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
