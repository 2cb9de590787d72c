"""Load, faults and hostile input against the real server (127.0.0.1 only, bounded)."""

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def client(served, tmp_path):
    from gradio_client import Client

    return Client(
        served[1],
        verbose=False,
        analytics_enabled=False,
        download_files=str(tmp_path),
        httpx_kwargs={"timeout": 60},  # the server may still be finishing the load test's calls
    )


@pytest.mark.slow
def test_sixteen_concurrent_users(served):
    from load_test import run_load

    r = run_load(served[1], users=16, calls=4)
    print(r)
    assert r["refused"] == 0, r["errors"]
    assert r["completed"] == 16 * 4
    assert r["identical_forward_variants"] == 1 and r["identical_sample_variants"] == 1  # same request, same bytes
    assert r["peak_rss_mb"] < 4096


def test_a_cancelled_sampling_job_stops_its_loop_and_frees_the_slot(served, client):
    app, _ = served
    before = app.STATS["steps"]  # a running total over the module's jobs
    # 8 images at all 1000 steps: the costliest request a CPU admits (ui.fair.MAX_REQUEST_GFLOP), long enough to cancel
    job = client.submit("ddpm-mnist-28", "DDPM (all T steps)", 1000, 0.0, "model default", 8, 0, api_name="/sample")
    deadline = time.time() + 60
    while app.STATS["steps"] <= before and time.time() < deadline:  # wait until it is really running
        time.sleep(0.05)
    start = app.STATS["steps"]
    while app.STATS["steps"] <= start and time.time() < deadline:  # and still stepping (a loaded machine is slow)
        time.sleep(0.05)
    assert app.STATS["steps"] > start, "the job never started"
    job.cancel()
    time.sleep(2.0)
    stopped_at = app.STATS["steps"]
    time.sleep(1.5)
    assert app.STATS["steps"] - stopped_at <= 1, "the loop kept running after the cancel"
    assert stopped_at < start + 900  # far from the 1000 steps it was asked for
    t0 = time.time()  # the slot is free: a new job runs at once
    out = client.predict("ddpm-mnist-28", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0, api_name="/sample")
    assert len(out[0]) == 1 and time.time() - t0 < 60


def test_out_of_memory_becomes_a_clear_message(served, client, monkeypatch):
    app, _ = served
    from gradio_client.exceptions import AppError

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    import ui.tabs.sample

    monkeypatch.setattr(ui.tabs.sample, "generate_steps", boom)
    with pytest.raises(AppError, match="Out of memory: try a smaller batch"):
        client.predict("ddpm-mnist-28", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0, api_name="/sample")
    monkeypatch.undo()
    assert (
        len(
            client.predict("ddpm-mnist-28", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0, api_name="/sample")[0]
        )
        == 1
    )


def test_hub_unreachable_mid_use(served, client, monkeypatch):
    from gradio_client.exceptions import AppError

    import ddpm_core.checkpoints as ck

    monkeypatch.setattr(ck, "hub_reachable", lambda *a, **k: False)
    t0 = time.time()
    with pytest.raises(AppError, match="cannot be reached.*bundled"):
        client.predict("google/ddpm-cat-256", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0, api_name="/sample")
    assert time.time() - t0 < 10
    assert (
        len(
            client.predict("ddpm-mnist-28", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0, api_name="/sample")[0]
        )
        == 1
    )


@pytest.mark.parametrize(
    "endpoint,args,fragment",
    [
        ("/sample", ("ddpm-mnist-28", "DDPM (fewer steps)", 5, "0.5", "model default", 1, 0), "finite number"),
        ("/sample", ("ddpm-mnist-28", "DDPM (fewer steps)", 5.5, 0.0, "model default", 1, 0), "whole number"),
        ("/sample", ("ddpm-mnist-28", "DDPM (fewer steps)", 5, 0.0, "model default", 1, -3), "less than minimum"),
        ("/sample", ("google/../../secrets", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0), "not allowed"),
        ("/sample", ("file:///etc/passwd", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0), "not allowed"),
        ("/denoise_from_t", (None, "ddpm-mnist-28", 100, 2, 10, 0), "Upload an image"),
        ("/denoise_from_t", ("__IMG__", "ddpm-mnist-28", 1000, 2, 10, 0), "greater than maximum"),
        ("/denoise_from_t", ("__IMG__", "ddpm-mnist-28", 100, 10**6, 10, 0), "greater than maximum"),
    ],
)
def test_invalid_parameters_straight_to_the_api(client, endpoint, args, fragment, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(img)
    args = tuple(handle_file(str(img)) if a == "__IMG__" else a for a in args)
    with pytest.raises(AppError, match=fragment):
        client.predict(*args, api_name=endpoint)


def test_fuzz_api_parameters(client):
    """Random junk for every /forward parameter: always a clear AppError or a valid result, never a crash."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    examples = Path(__file__).resolve().parents[1] / "examples"
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=False, allow_infinity=False),  # JSON carries no NaN
        st.text(max_size=12),
        st.lists(st.integers(), max_size=3),
    )

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(t=junk, schedule=st.one_of(junk, st.sampled_from(["linear", "sigmoid"])), T=junk, seed=junk)
    def check(t, schedule, T, seed):
        try:
            out = client.predict(handle_file(str(examples / "shapes.png")), t, schedule, T, seed, api_name="/forward")
        except AppError as err:
            assert str(err) and "Traceback" not in str(err)
            return
        assert Path(out[0]).is_file()

    check()
    assert client.predict(handle_file(str(examples / "shapes.png")), 5, "linear", 1000, 0, api_name="/forward")
