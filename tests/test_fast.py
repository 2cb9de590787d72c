"""The fast path (ddpm_core.fast): the same steps as the plain loops on static buffers, its caching and fallbacks.

On the CPU the frozen / eager / compiled UNets are compared with the plain reference step drawing from the same
generator; on CUDA (where a GPU is present) the CUDA-graph loop too. The comparison is teacher-forced
(teacher_forcing's :func:`compare_with_plain_steps`): at a few steps of the fast run, the plain step runs from
the fast run's x_t, within the float32 rounding of the network carried through the step's first-order bound.
"""

import copy
import functools
import gc
import threading
import weakref

import pytest
import torch
from teacher_forcing import compare_with_plain_steps, record

from conftest import tiny_unet
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.fast import UPGRADES, FastLoop, _store, fast_loop, frozen_unet
from helpers import HostSyncs, run_in_own_process

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
CUDA = torch.cuda.is_available()


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
    with torch.inference_mode(), HostSyncs() as syncs:
        loop._body()
    assert syncs.seen == []
    with torch.inference_mode(), HostSyncs() as check:
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


def test_an_upgrade_is_built_in_the_background_and_serves_later_requests():
    """``upgrade``: a request gets its quick loop at once and the upgraded one is built off its time, then serves
    the later requests with the same settings; while it runs, another request goes quick and no twin is built.
    On a CPU here: eager, then the frozen trace; on a GPU Space: the captured eager step, then the compiled one."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(6)
    unet = tiny_unet(3)
    ask = functools.partial(fast_loop, unet, diffusion, (2, 3, 8, 8), ts, mode="eager", upgrade="frozen")
    first = ask()
    assert first.mode == "eager"  # never the build's wait
    first.release()
    assert UPGRADES.wait(timeout=300)
    second = ask()
    assert second.mode == "frozen" and second.path == "frozen TorchScript"
    third = ask()  # the upgraded loop is reserved by the second request
    assert third is first
    assert UPGRADES.wait(timeout=0) and sum(loop.mode == "frozen" for loop in _store(unet)["loops"].values()) == 1
    third.release()
    steps, _ = record(second.run(torch.randn(2, 3, 8, 8), torch.Generator().manual_seed(3)))
    compare_with_plain_steps(diffusion, steps, tiny_unet(3), "ddpm", 0.0, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="unknown fast mode"):
        fast_loop(unet, diffusion, (2, 3, 8, 8), ts, mode="eager", upgrade="turbo")


def test_an_upgrade_that_falls_back_is_dropped_and_not_built_again(caplog):
    """An upgrade whose stages cannot run here (a CUDA graph on a CPU) is no better than the quick loop: it is not
    cached, the log says why once, and later requests do not queue it again."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    unet = tiny_unet(3)
    ask = functools.partial(
        fast_loop, unet, diffusion, (1, 3, 8, 8), diffusion.inference_timesteps(4), mode="eager", upgrade="graph"
    )
    for _ in range(3):
        loop = ask()
        assert loop.mode == "eager"
        loop.release()
        assert UPGRADES.wait(timeout=120)
    assert [loop.mode for loop in _store(unet)["loops"].values()] == ["eager"]
    failures = [r for r in caplog.records if "upgrade failed" in r.getMessage()]
    assert len(failures) == 1 and "not a CUDA device" in failures[0].getMessage()


def test_the_background_builder_does_not_keep_a_model_alive():
    """A model the app's cache drops (a Hub model, its weights on the GPU) is freed once nothing else holds it:
    the builder thread keeps no reference to the last model it built for."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    unet = tiny_unet(3)
    fast_loop(
        unet, diffusion, (1, 3, 8, 8), diffusion.inference_timesteps(4), mode="eager", upgrade="frozen"
    ).release()
    assert UPGRADES.wait(timeout=120)
    gone = weakref.ref(unet)
    del unet
    gc.collect()
    assert gone() is None


def test_warm_up_pays_for_the_upgrade_before_the_first_request():
    """The Space's start-up: the default request's upgraded loop is built before it serves, so the first request
    runs it with nothing left to prepare (here the CPU's default, frozen, upgraded to eager: any two modes)."""
    from ddpm_core.checkpoints import LoadedModel
    from ddpm_core.sampling import generate, warm_up

    cfg = {"beta_schedule": "linear"}
    model = LoadedModel("tiny", tiny_unet(3), GaussianDiffusion.from_config(cfg), "test", cfg)
    settings = {"batch_size": 2, "num_inference_steps": 5, "upgrade": "eager"}
    assert warm_up(model, **settings) > 0
    first = generate(model, n_snapshots=0, n_frames=0, **settings)
    assert first.path == "eager channels_last" and first.setup_seconds == 0.0


def test_default_modes(monkeypatch):
    from ddpm_core.fast import default_mode

    assert default_mode(torch.device("cpu")) == "frozen"
    assert default_mode(torch.device("cuda")) == "graph"
    monkeypatch.setenv(
        "SPACES_ZERO_GPU", "true"
    )  # deployment policy is the app's (ui.common.fast_path), not the core's
    assert default_mode(torch.device("cuda")) == "graph"


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
    if not run_in_own_process(request):
        return
    # inductor specialises its kernels to the intra-op thread count: compile at the count the product runs at
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


@pytest.mark.slow
def test_a_compiler_that_fails_falls_back_to_the_eager_unet_at_set_up(request):
    """A machine whose C++ compiler does not work (inductor's CPU kernels need one): the compile mode says so at
    set-up and samples with the eager UNet, instead of failing the first step of a request."""
    if not run_in_own_process(request):
        return
    import torch._inductor.config as inductor_config

    inductor_config.cpp.cxx = ("false",)  # /bin/false: every compilation fails
    inductor_config.compile_threads = 1
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(5)
    x_T = torch.randn(2, 3, 8, 8)
    loop = FastLoop(diffusion, tiny_unet(3), x_T.shape, ts, mode="compile")
    assert loop.path.startswith("eager channels_last (torch.compile failed") and loop.fallback, loop.path
    steps, _ = record(loop.run(x_T, torch.Generator().manual_seed(4)))
    compare_with_plain_steps(diffusion, steps, tiny_unet(3), "ddpm", 0.0, torch.Generator().manual_seed(4))


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


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_graph_capture_while_another_thread_samples():
    """Two requests at once: one captures its step while another launches kernels, allocates new sizes and copies
    to the host (as a running request does). Neither fails and every capture gives a graph (CUDA's default capture
    mode, global, forbids those calls in every thread while any thread captures)."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(10)
    unet = tiny_unet(3).cuda()
    stop, errors = threading.Event(), []

    def other_request():
        n = 1000
        try:
            while not stop.is_set():
                n += 4099  # ever larger: now and then the allocator must ask the driver for more memory
                torch.randn(n, device="cuda").sum().item()  # the host waits on the device, as a result copy does
        except Exception as e:  # noqa: BLE001 - any failure is what this test reports
            errors.append(e)

    th = threading.Thread(target=other_request)
    th.start()
    try:
        loops = [FastLoop(diffusion, unet, (b, 3, 8, 8), ts, "ddpm", 0.0, "graph") for b in range(1, 7)]
    finally:
        stop.set()
        th.join()
    assert errors == []
    assert all(loop.graph is not None for loop in loops), [loop.path for loop in loops]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_graph_upgraded_to_the_compiled_graph_in_the_background():
    """A GPU Space's policy: the captured eager step now, the compiled step captured by the background thread next,
    equal to the plain loop on the same CUDA generator."""
    diffusion = GaussianDiffusion.from_config({"beta_schedule": "linear"})
    ts = diffusion.inference_timesteps(10)
    unet = tiny_unet(3).cuda()
    ask = functools.partial(fast_loop, unet, diffusion, (2, 3, 8, 8), ts, mode="graph", upgrade="compile+graph")
    first = ask()
    assert first.mode == "graph" and first.graph is not None, first.path
    first.release()
    assert UPGRADES.wait(timeout=300)
    second = ask()
    assert second.path == "torch.compile, one CUDA graph per step"
    steps, _ = record(second.run(torch.randn(2, 3, 8, 8, device="cuda"), torch.Generator("cuda").manual_seed(3)))
    ref = tiny_unet(3).cuda()
    compare_with_plain_steps(diffusion, steps, ref, "ddpm", 0.0, torch.Generator("cuda").manual_seed(3))


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
    plain = generate(model, batch_size=2, seed=3, num_inference_steps=10, mode="plain")
    assert plain.path == "plain loop" and plain.samples.shape == (2, 3, 8, 16)
