"""The fast path (ddpm_core.fast): the same steps as the plain loops on static buffers, its caching and fallbacks.

On the CPU the frozen / eager / compiled UNets are compared with the plain reference loop drawing from the same
generator; on CUDA (where a GPU is present) the CUDA-graph loop too. Tolerances: channels_last and oneDNN change
the convolutions' summation order only, 1e-5 per step in float32, compounded over the loop.
"""

import copy
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_unet
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.fast import FastLoop, fast_loop, frozen_unet

CUDA = torch.cuda.is_available()


def _plain(diffusion, unet, x_T, timesteps, sampler, eta, seed, device="cpu"):
    g = torch.Generator(device).manual_seed(seed)
    if sampler == "ddpm":
        return diffusion.p_sample_loop(unet, noise=x_T.clone(), generator=g, timesteps=timesteps)
    return diffusion.ddim_sample_loop(unet, noise=x_T.clone(), generator=g, timesteps=timesteps, eta=eta)


def _fast(loop, x_T, seed, device="cpu"):
    out = None
    for out in loop.run(x_T, torch.Generator(device).manual_seed(seed)):
        pass
    return out.prev_sample.clone()


CASES = [
    ({"beta_schedule": "linear"}, "ddpm", 0.0, 20),
    ({"beta_schedule": "linear", "variance_type": "fixed_large", "clip_sample": False}, "ddpm", 0.0, None),
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
    want = _plain(diffusion, ref, x_T, ts, sampler, eta, seed=11)
    loop = FastLoop(diffusion, unet, x_T.shape, ts, sampler, eta, mode)
    assert loop.path == ("frozen TorchScript" if mode == "frozen" else "eager channels_last")
    got = _fast(loop, x_T, seed=11)
    # float32 rounding of reordered convolutions, compounded: ~1e-6 of the samples' scale after 20 steps
    assert (got - want).abs().max() <= 2e-6 * len(ts) ** 0.5 * max(1.0, float(want.abs().max()))
    # reusable: a second run from the same start and seed repeats itself exactly
    assert torch.equal(_fast(loop, x_T, seed=11), got)
    assert not torch.allclose(_fast(loop, x_T, seed=12), got) or (sampler == "ddim" and eta == 0)


class _HostSyncs(TorchDispatchMode):
    """Records the operators that make a CUDA stream wait for the host (a scalar read, data-dependent shapes):
    inside a CUDA graph capture each one is an error, so the whole step must call none."""

    SYNCING = {"item", "_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "equal",
               "is_nonzero"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        bool_index = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if name in self.SYNCING or bool_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cfg,sampler,eta,out_channels", [
    ({"beta_schedule": "linear"}, "ddpm", 0.0, 3),
    ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "thresholding": True}, "ddpm", 0.0, 3),
    ({"beta_schedule": "linear", "variance_type": "learned_range"}, "ddpm", 0.0, 6),
    ({"beta_schedule": "scaled_linear", "prediction_type": "sample"}, "ddim", 0.5, 3),
])
def test_the_whole_step_never_waits_on_the_host(cfg, sampler, eta, out_channels):
    """What a CUDA graph capture requires, checked on the CPU at the dispatcher: the step (diffusers' UNet included)
    reads no tensor value on the host. The detector itself is checked on a .item()."""
    diffusion = GaussianDiffusion.from_config(cfg)
    loop = FastLoop(diffusion, tiny_unet(out_channels, seed=1), (2, 3, 8, 8), diffusion.inference_timesteps(10), sampler,
                    eta, mode="eager")
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
        want = _plain(diffusion, ref, x_T, ts, "ddpm", 0.0, seed=3)
        got = _fast(FastLoop(diffusion, unet, x_T.shape, ts, "ddpm", mode="frozen"), x_T, seed=3)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


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
    assert (_fast(loop, x_T, 1) - _plain(diffusion, ref, x_T, ts, "ddpm", 0.0, 1)).abs().max() < 1e-5
    if not CUDA:  # a CUDA graph asked for on the CPU runs the same step eagerly
        graph_loop = FastLoop(diffusion, tiny_unet(3), x_T.shape, ts, mode="graph")
        assert graph_loop.graph is None and "not a CUDA device" in graph_loop.path
        assert (_fast(graph_loop, x_T, 1) - _plain(diffusion, tiny_unet(3), x_T, ts, "ddpm", 0.0, 1)).abs().max() < 1e-4
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
    assert fast_loop(unet, GaussianDiffusion.from_config({"beta_schedule": "linear"}), (2, 3, 8, 8), ts) is a  # same config
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
def test_compiled_fast_loop_equals_the_plain_loop():
    """torch.compile (inductor) of the UNet inside the fast loop: equal to float32 rounding."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(8)
    x_T = torch.randn(2, 3, 8, 8)
    loop = FastLoop(diffusion, tiny_unet(3), x_T.shape, ts, mode="compile")
    assert loop.path == "torch.compile"
    assert (_fast(loop, x_T, 4) - _plain(diffusion, tiny_unet(3), x_T, ts, "ddpm", 0.0, 4)).abs().max() < 1e-4


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
    got = _fast(loop, x_T, 5, "cuda")
    want = _plain(diffusion, ref, x_T, ts, sampler, eta, 5, "cuda")
    assert (got - want).abs().max() < 1e-3  # TF32/cuDNN algorithm choice may differ between the two
    assert torch.equal(_fast(loop, x_T, 5, "cuda"), got)


def test_generate_on_a_non_square_model_uses_the_fast_path():
    """diffusers allows sample_size = (H, W): the fast path traces and samples it, equal to the plain loop."""
    from ddpm_core.checkpoints import LoadedModel
    from ddpm_core.sampling import generate

    cfg = {"beta_schedule": "linear"}
    model = LoadedModel("wide", tiny_unet(3, sample_size=(8, 16)), GaussianDiffusion.from_config(cfg), "test", cfg)
    assert model.sample_shape == (3, 8, 16)
    fast = generate(model, batch_size=2, seed=3, num_inference_steps=10, n_snapshots=2, n_frames=2)
    plain = generate(model, batch_size=2, seed=3, num_inference_steps=10, fast=False)
    assert fast.path == "frozen TorchScript" and plain.path == "plain loop"
    assert fast.samples.shape == (2, 3, 8, 16) and (fast.samples - plain.samples).abs().max() < 1e-5
    assert fast.snapshots[0][1].shape == (2, 3, 8, 16)
