"""The checks every sampler of the registry passes against its diffusers scheduler (see scheduler_reference),
shared by the per-sampler test modules: each calls :func:`checks` with its sampler's name."""

import copy

import pytest
import torch
from scheduler_reference import (
    CASE_IDS,
    CASES,
    AnalyticUNet,
    assert_karras_timesteps,
    assert_rel,
    bundled_config,
    case_config,
    free_running_float64,
    reference,
    same_draws_float32,
    teacher_forced_float64,
)

from conftest import tiny_unet
from ddpm_core.diffusion import GaussianDiffusion
from ddpm_core.fast import FastLoop
from ddpm_core.samplers import get_sampler, sample_loop_progressive

X_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))


ZERO_SNR = (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"), 6)


def checks(name: str, evaluations_per_step: int, deterministic: bool, diffusers_class: str, zero_snr: bool = False):
    """The test functions for sampler ``name``, to be bound to module globals by the caller (``zero_snr``: also a
    zero terminal SNR schedule, where the diffusers scheduler moves abar_{T-1} to 2^-24)."""
    sampler = get_sampler(name)
    cases, ids = CASES + [ZERO_SNR] * zero_snr, CASE_IDS + ["zero-snr-N6"] * zero_snr

    def test_facts():
        assert sampler.name == name and sampler.evaluations_per_step == evaluations_per_step
        assert sampler.deterministic == deterministic and sampler.diffusers_class == diffusers_class
        assert sampler.label and sampler.short_label and sampler.short_label in sampler.label.replace(" (", " ")
        d = GaussianDiffusion.from_config(bundled_config())
        n = sampler.evaluations(d, 10)
        assert n == (19 if evaluations_per_step == 2 else 10)
        assert sampler.plan(d, sampler.timesteps(d, 10), "cpu").evaluations == n

    @pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
    @pytest.mark.parametrize("offset", [0, 1])
    def test_timesteps_are_the_diffusers_schedulers(spacing, offset):
        """``timesteps(diffusion, N)`` = ``<Scheduler>.from_config(config).set_timesteps(N)`` for every spacing."""
        cfg = dict(bundled_config(), timestep_spacing=spacing, steps_offset=offset)
        for N in (1, 2, 3, 5, 10, 20, 25, 50, 100):
            if sampler.fractional_timesteps:
                assert_karras_timesteps(sampler, cfg, N)
            else:
                reference(sampler, cfg, N)  # asserts equality

    @pytest.mark.parametrize("changes,N", cases, ids=ids)
    def test_steps_equal_diffusers_teacher_forced(changes, N, unet3):
        teacher_forced_float64(sampler, case_config(changes), N, copy.deepcopy(unet3).double(), X_T)

    @pytest.mark.parametrize("changes,N", cases, ids=ids)
    def test_whole_run_equals_diffusers_from_the_same_x_T(changes, N):
        runs = free_running_float64(sampler, case_config(changes), N, X_T)
        if changes.get("clip_sample", True) and "beta_schedule" not in changes and N >= 4:
            # the bundled model's schedule, clipping: x0 predictions hit +-1 (the emulation is exercised)
            assert any((r.pred_original_sample.abs() == 1).any() for r in runs)

    def test_same_random_stream_as_diffusers():
        """float32, one seed: the same generator consumption (a draw out of order would move the images by O(1)),
        and the images equal within what the two sides' float32 arithmetic and noise levels allow: per network
        evaluation 16 roundings u32 plus the relative difference of the two sides' sigma tables (diffusers' float32
        cumprod drifts; measured at test time), times the margin 4, the Gaussian model contracting."""
        for N in (3, 10):
            got, want, drift = same_draws_float32(sampler, case_config({}), N, X_T)
            rel = 4 * N * evaluations_per_step * (16 * 2.0**-24 + drift)
            assert_rel(got, want, f"{name} float32 N={N} (sigma tables {drift:.2g} apart)", rel=rel)

    def test_fast_loop_equals_the_plain_loop():
        """The fast loop (static buffers, channels_last, the sampler's own step replayed) from the same x_T and
        generator gives the plain loop's samples exactly on an elementwise model."""
        d = GaussianDiffusion.from_config(case_config({"timestep_spacing": "trailing"}))
        ts = sampler.timesteps(d, 6)
        unet = AnalyticUNet(d)
        loop = FastLoop(d, unet, X_T.shape, ts, name, mode="eager")
        fast = [o.prev_sample.clone() for o in loop.run(X_T * loop.plan.x_T_scale, torch.Generator().manual_seed(3))]
        g = torch.Generator().manual_seed(3)
        plain = [
            o.prev_sample
            for o in sample_loop_progressive(d, sampler, unet, None, ts, g, noise=X_T * loop.plan.x_T_scale)
        ]
        assert len(fast) == len(plain) == sampler.evaluations(d, 6)
        for a, b in zip(fast, plain):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_frozen_fast_path_runs():
        """The CPU fast path (a TorchScript-frozen UNet) runs every sampler, fractional timesteps included."""
        d = GaussianDiffusion.from_config(case_config({}))
        ts = sampler.timesteps(d, 3)
        loop = FastLoop(d, tiny_unet(3), X_T.shape, ts, name, mode="frozen")
        assert loop.path == "frozen TorchScript"
        outs = [(o.timestep, o.prev_sample.clone()) for o in loop.run(X_T, torch.Generator().manual_seed(1))]
        assert [t for t, _ in outs] == [float(t) if not float(t).is_integer() else int(t) for t in loop.timesteps]
        assert all(torch.isfinite(x).all() for _, x in outs)
        if sampler.fractional_timesteps:  # the trace takes float timesteps: not rounded on the way in
            unet = tiny_unet(3)
            t = torch.tensor(loop.plan.tables["t_model"][1:2].item()).expand(2)
            x = X_T[:2].contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                want, rounded = unet(x, t).sample, unet(x, t.round()).sample
                got = loop.unet(x, t)
            assert not float(t[0]).is_integer()
            assert (got - want).abs().max() < (got - rounded).abs().max()

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    def test_cuda_graph_loop_equals_the_eager_loop():
        d = GaussianDiffusion.from_config(case_config({}))
        ts = sampler.timesteps(d, 6)
        unet = AnalyticUNet(d).cuda()
        x_T = X_T.cuda()
        runs = []
        for mode in ("eager", "graph"):
            loop = FastLoop(d, unet, x_T.shape, ts, name, mode=mode)
            assert mode == "eager" or loop.graph is not None, loop.path
            runs.append([o.prev_sample.clone() for o in loop.run(x_T, torch.Generator("cuda").manual_seed(3))])
        for a, b in zip(*runs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    return {k: v for k, v in locals().items() if k.startswith("test_")}
