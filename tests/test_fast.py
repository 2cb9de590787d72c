"""The fast path (ddpm_core.fast): the same steps as the plain loops on static buffers, its caching and fallbacks.

On the CPU the frozen / eager / compiled UNets are compared with the plain reference step drawing from the same
generator; on CUDA (where a GPU is present) the CUDA-graph loop too. The comparison is teacher-forced
(:func:`compare_with_plain_steps`): at a few steps of the fast run, the plain step runs from the fast run's x_t.
The fast path changes only the UNet's summation order (channels_last, oneDNN, a trace, inductor, TF32 on a GPU),
so the model outputs may differ by two float32 rounding errors of the network; that rounding error is computed at
test time as the plain UNet's difference from its float64 copy at that x_t (like diffusers' table error in
test_core_vs_diffusers) and carried through the step with the step's own first-order bound. A free-running
comparison of whole loops would measure the UNet's sensitivity to its input instead (a random UNet's vector
field is expanding), which no rounding bound covers.
"""

import copy
import threading

import numpy as np
import pytest
import torch
from test_core_vs_diffusers import (
    U32,
    Bounded,
    _ours_ddim_coefs,
    _ours_ddpm_coefs,
    assert_within,
    ddim_step_bound,
    ddpm_step_bound,
    one_intra_op_thread,  # noqa: F401  (autouse: one intra-op thread)
)
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_unet
from ddpm_core.diffusion import GaussianDiffusion, StepOutput, call_model
from ddpm_core.fast import FastLoop, fast_loop, frozen_unet
from ddpm_core.samplers import get_sampler

CUDA = torch.cuda.is_available()


def _same_tables(coefs):
    """Both sides read the same float32 tables: their rounding is common to both and cancels; keep the values."""
    return {k: Bounded(b.v, 0.0, b.u) for k, b in coefs.items()}


def model_rounding_scale(model, model64, x, t):
    """Per sample, max |model(x) - model64(x)|: the float32 rounding error of this network at x, computed at test
    time against its float64 copy. A reordering of the network's sums is a rounding error of the same kind."""
    with torch.inference_mode():
        m, m64 = call_model(model, x, t), call_model(model64, x.double(), t)
    return m, (m.double() - m64).abs().flatten(1).amax(1).reshape(-1, 1, 1, 1)


def compare_with_plain_steps(diffusion, steps, ref_model, sampler="ddpm", eta=0.0, generator=None, n_compared=6):
    """Teacher-forced check of a recorded run against the plain float32 step.

    ``steps``: copies of a run's :class:`StepOutput` (x_t, pred x0, x_{t-1}, timestep); ``generator``: seeded as the
    run's, positioned after x_T. Every step's noise is drawn from it in the run's order (DDPM: t > 0; DDIM: eta > 0);
    at ``n_compared`` steps spread over the run, the plain step (``ref_model`` on the same x_t, eq. 15 + 7 or DDIM
    eq. 12) must agree with the recorded one within SAFETY x the first-order bound of the step, given model outputs
    that differ by up to two float32 rounding errors of the network (:func:`model_rounding_scale`).
    """
    ts = [s.timestep for s in steps]
    n = len(ts)
    sampler_ = get_sampler(sampler)
    plan = sampler_.plan(diffusion, ts, steps[0].x_t.device, steps[0].x_t.dtype, eta)
    abar = diffusion.schedule.alphas_cumprod
    ref64 = copy.deepcopy(ref_model).double()
    picks = {int(k) for k in np.round(np.linspace(0, n - 1, min(n, n_compared)))}
    for k, s in enumerate(steps):
        x = s.x_t
        noisy = s.timestep > 0 if sampler == "ddpm" else eta > 0
        z = torch.randn(x.shape, generator=generator, device=x.device) if noisy else None
        if k not in picks:
            continue
        B, C = x.shape[:2]
        m, scale = model_rounding_scale(
            ref_model, ref64, x, torch.full((B,), s.timestep, dtype=torch.long, device=x.device)
        )
        Bm = 2 * scale  # |m_fast - m_plain| <= two rounding errors of the same network
        pos = torch.full((1,), k, dtype=torch.long, device=x.device)
        if sampler == "ddpm":
            prev, x0 = sampler_.step(plan, pos, m, x, z, {})
            co = _same_tables(_ours_ddpm_coefs(abar[ts[k]], abar[ts[k + 1]] if k + 1 < n else 1.0, U32))
            learned = diffusion.variance_type == "learned_range"
            Bx0, Bprev = ddpm_step_bound(
                diffusion,
                co,
                co,
                x.cpu(),
                m[:, :C].cpu(),
                m[:, C:].cpu() if learned else None,
                None if z is None else z.cpu(),
                U32,
                U32,
                Bm=Bm.cpu(),
                Bv=Bm.cpu(),
            )
        else:
            final = 1.0 if diffusion.set_alpha_to_one else abar[0]
            prev, x0 = sampler_.step(plan, pos, m, x, z, {})
            co = _same_tables(_ours_ddim_coefs(abar[ts[k]], abar[ts[k + 1]] if k + 1 < n else final, eta, U32))
            Bx0, Bprev = ddim_step_bound(
                diffusion, co, co, x.cpu(), m.cpu(), None if z is None else z.cpu(), U32, U32, Bm=Bm.cpu()
            )
        assert_within(s.pred_original_sample.cpu(), x0.cpu(), Bx0, f"pred x0 at step {k} (t={s.timestep})")
        assert_within(s.prev_sample.cpu(), prev.cpu(), Bprev, f"x_(t-1) at step {k} (t={s.timestep})")


def record(outputs):
    """Copies of a run's StepOutputs, taken as they come (the fast loop's are views of its static buffers), and
    whatever else the run yields last (generate_steps' SampleResult) or None."""
    steps, last = [], None
    for o in outputs:
        if isinstance(o, StepOutput):
            steps.append(
                StepOutput(
                    o.prev_sample.clone().contiguous(),
                    o.pred_original_sample.clone().contiguous(),
                    o.index,
                    o.timestep,
                    o.x_t.clone().contiguous(),
                )
            )
        else:
            last = o
    return steps, last


def _fast(loop, x_T, seed, device="cpu"):
    out = None
    for out in loop.run(x_T, torch.Generator(device).manual_seed(seed)):
        pass
    return out.prev_sample.clone()


CASES = [
    ({"beta_schedule": "linear"}, "ddpm", 0.0, 20),
    # all 1000 steps, three runs
    pytest.param(
        {"beta_schedule": "linear", "variance_type": "fixed_large", "clip_sample": False},
        "ddpm",
        0.0,
        None,
        marks=pytest.mark.slow,
    ),
    ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "thresholding": True}, "ddpm", 0.0, 25),
    ({"beta_schedule": "scaled_linear", "prediction_type": "sample"}, "ddim", 0.0, 10),
    ({"beta_schedule": "linear"}, "ddim", 0.7, 15),
]


@pytest.mark.parametrize("mode", ["eager", "frozen"])
@pytest.mark.parametrize("cfg,sampler,eta,steps", CASES)
def test_fast_loop_equals_the_plain_loop(cfg, sampler, eta, steps, mode):
    diffusion = GaussianDiffusion.from_config(cfg)
    unet, ref = tiny_unet(3), tiny_unet(3)  # the fast path switches its model to channels_last
    ts = diffusion.inference_timesteps(steps if sampler == "ddpm" else steps or 50)
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    loop = FastLoop(diffusion, unet, x_T.shape, ts, sampler, eta, mode)
    assert loop.path == ("frozen TorchScript" if mode == "frozen" else "eager channels_last")
    run, _ = record(loop.run(x_T, torch.Generator().manual_seed(11)))
    assert torch.equal(run[0].x_t, x_T) and [s.timestep for s in run] == ts.tolist()
    compare_with_plain_steps(diffusion, run, ref, sampler, eta, torch.Generator().manual_seed(11))
    got = run[-1].prev_sample
    # reusable: a second run from the same start and seed repeats itself exactly
    assert torch.equal(_fast(loop, x_T, seed=11), got)
    assert not torch.equal(_fast(loop, x_T, seed=12), got) or (sampler == "ddim" and eta == 0)


class _HostSyncs(TorchDispatchMode):
    """Records the operators that make a CUDA stream wait for the host (a scalar read, data-dependent shapes):
    inside a CUDA graph capture each one is an error, so the whole step must call none."""

    SYNCING = {
        "item",
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "unique",
        "_unique2",
        "unique_consecutive",
        "equal",
        "is_nonzero",
    }

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        bool_index = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in self.SYNCING or bool_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "cfg,sampler,eta,out_channels",
    [
        ({"beta_schedule": "linear"}, "ddpm", 0.0, 3),
        (
            {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "thresholding": True},
            "ddpm",
            0.0,
            3,
        ),
        ({"beta_schedule": "linear", "variance_type": "learned_range"}, "ddpm", 0.0, 6),
        ({"beta_schedule": "scaled_linear", "prediction_type": "sample"}, "ddim", 0.5, 3),
    ],
)
def test_the_whole_step_never_waits_on_the_host(cfg, sampler, eta, out_channels):
    """What a CUDA graph capture requires, checked on the CPU at the dispatcher: the step (diffusers' UNet included)
    reads no tensor value on the host. The detector itself is checked on a .item()."""
    diffusion = GaussianDiffusion.from_config(cfg)
    loop = FastLoop(
        diffusion,
        tiny_unet(out_channels, seed=1),
        (2, 3, 8, 8),
        diffusion.inference_timesteps(10),
        sampler,
        eta,
        mode="eager",
    )
    loop._body()  # first call fills the schedule's device-table cache (done by the warm-up before a capture)
    loop.k.zero_()
    with torch.inference_mode(), _HostSyncs() as syncs:
        loop._body()
    assert syncs.seen == []
    with torch.inference_mode(), _HostSyncs() as check:
        loop.k.item()
        loop.x[loop.x > 0]
    assert check.seen == ["aten.item.default", "aten.index.Tensor"]  # item() is not decomposed in inference mode


def test_learned_variance_and_other_batch_sizes():
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear", "variance_type": "learned_range"})
    unet, ref = tiny_unet(6, seed=1), tiny_unet(6, seed=1)
    ts = diffusion.inference_timesteps(12)
    for batch in (1, 5):  # the frozen trace was made at batch 2: other batches must use symbolic sizes
        x_T = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
        steps, _ = record(
            FastLoop(diffusion, unet, x_T.shape, ts, "ddpm", mode="frozen").run(x_T, torch.Generator().manual_seed(3))
        )
        assert steps[-1].prev_sample.shape == x_T.shape
        compare_with_plain_steps(diffusion, steps, ref, "ddpm", 0.0, torch.Generator().manual_seed(3))


class _NoReturnDict(torch.nn.Module):
    """A model with a diffusers-like config whose forward takes no ``return_dict``: TorchScript tracing fails."""

    def __init__(self):
        super().__init__()
        self.config = {"in_channels": 3}
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (t.float().reshape(-1, 1, 1, 1) / 1000)


def test_fallbacks_say_what_runs_and_still_match():
    model = _NoReturnDict()
    assert frozen_unet(model, (3, 8, 8)) is model  # the eager module, not a broken trace
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(10)
    x_T = torch.randn(2, 3, 8, 8)
    loop = FastLoop(diffusion, model, x_T.shape, ts, mode="frozen")
    assert loop.path == "eager (TorchScript trace failed: TypeError)"
    ref = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    compare_with_plain_steps(
        diffusion,
        record(loop.run(x_T, torch.Generator().manual_seed(1)))[0],
        ref,
        "ddpm",
        0.0,
        torch.Generator().manual_seed(1),
    )
    if not CUDA:  # a CUDA graph asked for on the CPU runs the same step eagerly
        graph_loop = FastLoop(diffusion, tiny_unet(3), x_T.shape, ts, mode="graph")
        assert graph_loop.graph is None and "not a CUDA device" in graph_loop.path
        compare_with_plain_steps(
            diffusion,
            record(graph_loop.run(x_T, torch.Generator().manual_seed(1)))[0],
            tiny_unet(3),
            "ddpm",
            0.0,
            torch.Generator().manual_seed(1),
        )
    with pytest.raises(ValueError, match="does not match"):
        next(loop.run(torch.zeros(3, 3, 8, 8)))
    with pytest.raises(ValueError, match="unknown fast mode"):
        FastLoop(diffusion, model, x_T.shape, ts, mode="turbo")
    with pytest.raises(ValueError, match="strictly descending"):
        FastLoop(diffusion, model, x_T.shape, [3, 5], mode="eager")
    with pytest.raises(ValueError, match="eta"):
        FastLoop(diffusion, model, x_T.shape, ts, "ddim", eta=1.5, mode="eager")
    with pytest.raises(ValueError, match="shape"):
        FastLoop(diffusion, model, (2, 3, 8), ts, mode="eager")


def test_cache_reuses_loops_and_concurrent_runs_do_not_share_buffers():
    unet = tiny_unet(3)
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(8)
    a = fast_loop(unet, diffusion, (2, 3, 8, 8), ts)
    assert a.busy  # reserved for its caller
    a.release()
    assert fast_loop(unet, diffusion, (2, 3, 8, 8), ts) is a
    a.release()
    same_config = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    assert fast_loop(unet, same_config, (2, 3, 8, 8), ts) is a
    other = fast_loop(unet, diffusion, (3, 3, 8, 8), ts)
    assert other is not a
    other.release()
    x1, x2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    alone1, alone2 = _fast(a, x1, 1), _fast(a, x2, 2)
    # two interleaved runs with the same key: the second caller gets its own buffers
    assert fast_loop(unet, diffusion, (2, 3, 8, 8), ts) is a
    run1 = a.run(x1, torch.Generator().manual_seed(1))
    next(run1)
    b = fast_loop(unet, diffusion, (2, 3, 8, 8), ts)
    assert b is not a
    run2 = b.run(x2, torch.Generator().manual_seed(2))
    next(run2)
    outs1, outs2 = [], []
    for o1, o2 in zip(run1, run2):  # step by step, alternating
        outs1.append(o1.prev_sample.clone())
        outs2.append(o2.prev_sample.clone())
    assert torch.equal(outs1[-1], alone1) and torch.equal(outs2[-1], alone2)
    assert fast_loop(unet, diffusion, (2, 3, 8, 8), ts) is a  # free again after its run ended
    a.release()
    with pytest.raises(RuntimeError, match="already running"):
        run = a.run(x1)
        next(run)
        next(a.run(x1))


def test_a_cancelled_run_frees_its_loop():
    unet = tiny_unet(3)
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    loop = fast_loop(unet, diffusion, (1, 3, 8, 8), diffusion.inference_timesteps(6))
    run = loop.run(torch.randn(1, 3, 8, 8))
    next(run)
    assert loop.busy
    run.close()  # what a consumer that stops iterating does (a cancelled web request)
    assert not loop.busy
    again = fast_loop(unet, diffusion, (1, 3, 8, 8), diffusion.inference_timesteps(6))
    assert again is loop
    with pytest.raises(ValueError, match="does not match"):
        next(again.run(torch.randn(2, 3, 8, 8)))  # a failed start frees the reservation too
    assert not loop.busy


def test_default_modes(monkeypatch):
    from ddpm_core.fast import default_mode

    assert default_mode(torch.device("cpu")) == "frozen"
    assert default_mode(torch.device("cuda")) == "graph"
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # a GPU attached per request: no graph kept across requests
    assert default_mode(torch.device("cuda")) == "eager" and default_mode(torch.device("cpu")) == "frozen"


def test_frozen_unet_is_cached_per_model_and_thread_safe():
    unet = tiny_unet(3)
    got = []
    threads = [threading.Thread(target=lambda: got.append(frozen_unet(unet, (3, 8, 8)))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({id(g) for g in got}) == 1 and isinstance(got[0], torch.jit.ScriptModule)


@pytest.mark.slow
def test_compiled_fast_loop_equals_the_plain_loop(request):
    """torch.compile (inductor) of the UNet inside the fast loop: equal to float32 rounding."""
    # at the suite's thread count: with one intra-op thread under ATEN_CPU_CAPABILITY=avx2, inductor's CPU code for
    # this UNet returns NaN (torch 2.13), which is not what this test is about
    torch.set_num_threads(request.getfixturevalue("one_intra_op_thread"))
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(8)
    x_T = torch.randn(2, 3, 8, 8)
    loop = FastLoop(diffusion, tiny_unet(3), x_T.shape, ts, mode="compile")
    assert loop.path == "torch.compile"
    compare_with_plain_steps(
        diffusion,
        record(loop.run(x_T, torch.Generator().manual_seed(4)))[0],
        tiny_unet(3),
        "ddpm",
        0.0,
        torch.Generator().manual_seed(4),
    )


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["graph", "compile+graph"])
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_cuda_graph_loop_equals_the_plain_loop(mode, sampler, eta):
    """The captured step replayed per step = the plain loop on the same CUDA generator (float32)."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(30)
    unet, ref = tiny_unet(3).cuda(), tiny_unet(3).cuda()
    x_T = torch.randn(4, 3, 8, 8, device="cuda")
    loop = FastLoop(diffusion, unet, x_T.shape, ts, sampler, eta, mode)
    assert loop.graph is not None, loop.path
    steps, _ = record(loop.run(x_T, torch.Generator("cuda").manual_seed(5)))
    # TF32 / cuDNN algorithm choices are rounding of the UNet's sums too: in the plain UNet's float32-vs-float64 scale
    compare_with_plain_steps(diffusion, steps, ref, sampler, eta, torch.Generator("cuda").manual_seed(5))
    assert torch.equal(_fast(loop, x_T, 5, "cuda"), steps[-1].prev_sample)


def test_generate_on_a_non_square_model_uses_the_fast_path():
    """diffusers allows sample_size = (H, W): the fast path traces and samples it, equal to the plain loop."""
    from ddpm_core.checkpoints import LoadedModel
    from ddpm_core.sampling import generate, generate_steps

    cfg = {"beta_schedule": "linear"}
    model = LoadedModel("wide", tiny_unet(3, sample_size=(8, 16)), GaussianDiffusion.from_config(cfg), "test", cfg)
    assert model.sample_shape == (3, 8, 16)
    steps, fast = record(
        generate_steps(model, batch_size=2, seed=3, num_inference_steps=10, n_snapshots=2, n_frames=2)
    )
    assert fast.path == "frozen TorchScript" and fast.samples.shape == (2, 3, 8, 16)
    assert fast.snapshots[0][1].shape == (2, 3, 8, 16)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(steps[0].x_t, torch.randn(2, 3, 8, 16, generator=g))  # x_T, drawn first
    compare_with_plain_steps(model.diffusion, steps, tiny_unet(3, sample_size=(8, 16)), "ddpm", 0.0, g)
    plain = generate(model, batch_size=2, seed=3, num_inference_steps=10, fast=False)
    assert plain.path == "plain loop" and plain.samples.shape == (2, 3, 8, 16)
