"""The Space through its real server: gradio_client calls every endpoint on 127.0.0.1."""

import base64
import hashlib
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_port
from helpers import upload_corpus

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served[1], verbose=False, analytics_enabled=False, download_files=str(tmp_path_factory.mktemp("dl")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return upload_corpus(tmp_path_factory.mktemp("uploads"))


def _img(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_event_has_an_api_name(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/forward", "/forward_scrub", "/schedules", "/sample", "/compare", "/denoise_from_t"} <= set(endpoints)


def test_forward_at_t0_returns_the_input(client, corpus):
    from gradio_client import handle_file

    src = corpus["rgb.png"][0]
    x_t, noise, strip, readout, post, post_md = client.predict(
        handle_file(str(src)), 0, "linear", 1000, 0, api_name="/forward"
    )
    a, b = _img(x_t), _img(src)
    assert a.shape == b.shape
    # t = 0 is the first forward step (the paper's t = 1): sqrt(abar) = 0.99995 and noise of sigma 0.01, i.e.
    # 1.275 8-bit levels. So: no offset, a spread of ~1.3 levels (+ rounding), nothing beyond ~6 sigma.
    d = (a - b).astype(np.float64)
    assert abs(d.mean()) < 0.1 and 1.1 < d.std() < 1.6 and np.abs(d).max() <= 8
    assert "| 0 |" in readout and "SNR" in readout
    assert np.abs(_img(post) - b).max() <= 1  # the posterior mean at t=0 is x_0
    assert _img(strip).shape[1] > 8 * 20


def test_a_tiny_upload_gets_a_strip_whose_captions_fit(client, tmp_path):
    """A 1x1 upload is noised like any other; its strip's thumbnails are enlarged so that each "t=..." caption sits
    under its own image (at 1 px wide they were printed over one another)."""
    from gradio_client import handle_file

    from ui.tabs.forward import STRIP_MIN_WIDTH

    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(dot)
    strip = _img(client.predict(handle_file(str(dot)), 500, "linear", 1000, 1, api_name="/forward")[2])
    assert strip.shape[1] >= 4 * STRIP_MIN_WIDTH, strip.shape  # four columns, each at least that wide


def test_forward_at_last_step_is_standard_normal(client):
    from gradio_client import handle_file

    gray = Path(__file__).parent / "_gray.png"
    Image.new("RGB", (512, 512), (128, 128, 128)).save(gray)
    x_t = client.predict(handle_file(str(gray)), 999, "linear", 1000, 1, api_name="/forward")[0]
    z = (_img(x_t).astype(np.float64) / 127.5 - 1.0).ravel()  # back to model units; clipping at +-1 censors ~32%
    # For N(0,1) clipped to [-1, 1]: mean 0, P(|z| >= 1) = 0.3173, E[min(z^2, 1)] = 0.6827 - 2 phi(1) + 0.3173 = 0.5161 (to within the 8-bit rounding)
    assert abs(z.mean()) < 0.01
    assert abs((np.abs(z) >= 0.999).mean() - 0.3173) < 0.01
    assert abs((z**2).mean() - 0.5161) < 0.01
    gray.unlink()


def test_forward_same_seed_same_bytes(client, corpus):
    from gradio_client import handle_file

    src = handle_file(str(corpus["photo.jpg"][0]))
    a = client.predict(src, 300, "cosine", 500, 7, api_name="/forward")
    b = client.predict(src, 300, "cosine", 500, 7, api_name="/forward")
    c = client.predict(src, 300, "cosine", 500, 8, api_name="/forward")
    assert _digest(a[0]) == _digest(b[0]) and _digest(a[1]) == _digest(b[1])
    assert _digest(a[0]) != _digest(c[0])


def test_every_upload_kind_gets_a_result_or_a_clear_error(client, corpus):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    for name, (path, ok) in corpus.items():
        if ok:
            out = client.predict(handle_file(str(path)), 100, "linear", 1000, 0, api_name="/forward")
            w, h = Image.open(out[0]).size
            assert max(w, h) <= 512, name  # processed at a bounded resolution, in its own aspect ratio
        else:
            with pytest.raises(AppError) as err:
                client.predict(handle_file(str(path)), 100, "linear", 1000, 0, api_name="/forward")
            msg = str(err.value)
            assert len(msg) > 15 and "error" not in msg.lower()[:6], f"{name}: {msg}"


@pytest.mark.parametrize(
    "args,fragment",
    [
        ((-1, "linear", 1000, 0), "less than minimum"),
        ((1000, "linear", 1000, 0), "greater than maximum"),
        ((600, "linear", 500, 0), "t must be between 0 and 499"),
        ((10, "nope", 1000, 0), "not in the list of choices"),
        ((10, "linear", 1000, "abc"), "must be a finite number"),
    ],
)
def test_forward_bad_parameters(client, corpus, args, fragment):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=fragment):
        client.predict(handle_file(str(corpus["rgb.png"][0])), *args, api_name="/forward")


#: /forward's parameters and results as clients have called them (name, component, default): kept as they are.
FORWARD_PARAMETERS = [("image", "Image"), ("t", "Slider", 250), ("schedule", "Dropdown", "linear")]
FORWARD_PARAMETERS += [("T", "Slider", 1000), ("seed", "Number", 0)]
FORWARD_RETURNS = ["Image", "Image", "Image", "Markdown", "Image", "Markdown"]


def test_forward_keeps_its_parameters_and_results(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/forward"]
    params = [
        (p["parameter_name"], p["component"], *(() if p["component"] == "Image" else (p["parameter_default"],)))
        for p in info["parameters"]
    ]
    assert params == FORWARD_PARAMETERS
    assert [r["component"] for r in info["returns"]] == FORWARD_RETURNS
    choices = ["linear", "linear_improved", "scaled_linear", "cosine", "sigmoid"]
    assert info["parameters"][2]["type"] == {"enum": choices, "type": "string"}


def test_forward_x_t_is_q_sample_on_the_seeds_noise(client, corpus):
    """/forward's x_t is the core's q_sample on the seed's noise (``forward_noise``): the eps /forward_scrub sends."""
    from gradio_client import handle_file

    from ddpm_core import GaussianDiffusion, NoiseSchedule
    from ddpm_core.explore import forward_noise
    from ddpm_core.imaging import MAX_SIDE_DEFAULT, load_image, pil_to_tensor, to_uint8

    src = corpus["rgb.png"][0]
    x_t = client.predict(handle_file(str(src)), 600, "cosine", 800, 5, api_name="/forward")[0]
    x0 = pil_to_tensor(load_image(str(src), mode="RGB", max_side=MAX_SIDE_DEFAULT))
    core = GaussianDiffusion(NoiseSchedule.make("cosine", 800)).q_sample(x0, 600, forward_noise(x0, 5))
    assert np.array_equal(_img(x_t), to_uint8(core)[0].astype(np.int16))


def _scrub_arrays(d: dict) -> tuple[np.ndarray, np.ndarray]:
    import base64

    shape = (d["height"], d["width"], d["channels"])
    x0 = np.frombuffer(base64.b64decode(d["x0"]), dtype=np.uint8).reshape(shape)
    eps = np.frombuffer(base64.b64decode(d["eps"]), dtype="<f4").reshape(shape)
    return x0, eps


def test_forward_scrub_sends_the_cores_x0_eps_and_readouts(client):
    """/forward_scrub: x0 and eps at display size as the core computes them, the table for every t, and each t's
    readout cells as /forward writes them."""
    from gradio_client import handle_file

    from ddpm_core import GaussianDiffusion, NoiseSchedule
    from ddpm_core.explore import forward_scrub
    from ddpm_core.imaging import MAX_SIDE_DEFAULT, load_image, pil_to_tensor, to_uint8
    from ui.tabs.forward import SCRUB_SIDE

    src = Path(__file__).resolve().parents[1] / "examples" / "sunset.png"  # 512 x 384: scaled down to 256 x 192
    d = client.predict(handle_file(str(src)), "linear", 1000, 3, api_name="/forward_scrub")
    assert (d["width"], d["height"], d["channels"], d["T"], d["seed"]) == (SCRUB_SIDE, 192, 3, 1000, 3)
    x0, eps = _scrub_arrays(d)
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear", 1000))
    core = forward_scrub(
        pil_to_tensor(load_image(str(src), mode="RGB", max_side=MAX_SIDE_DEFAULT)), diffusion, 3, max_side=SCRUB_SIDE
    )
    assert np.array_equal(x0, to_uint8(core.x0)[0])
    assert np.array_equal(eps, core.eps[0].permute(1, 2, 0).numpy())
    for key in ("sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "snr", "beta"):
        assert d["table"][key] == core.table[key].tolist(), key
    assert len(d["readout"]) == 1000
    for t in (0, 250, 999):
        readout = client.predict(handle_file(str(src)), t, "linear", 1000, 3, api_name="/forward")[3]
        assert readout.splitlines()[-1] == "| " + " | ".join(d["readout"][t]) + " |"
    again = client.predict(handle_file(str(src)), "linear", 1000, 3, api_name="/forward_scrub")
    other = client.predict(handle_file(str(src)), "linear", 1000, 4, api_name="/forward_scrub")
    assert again["eps"] == d["eps"] and other["eps"] != d["eps"]
    with pytest.raises(Exception, match="needs T"):
        client.predict(handle_file(str(src)), "linear_improved", 15, 0, api_name="/forward_scrub")


def test_schedules_endpoint_and_csv(client):
    out = client.predict(["linear", "sigmoid"], 100, api_name="/schedules")
    *plots, csv = out
    assert len(plots) == 6
    first = plots[0]
    assert {c for c in first["columns"]} >= {"t", "value", "schedule"} and len(first["data"]) == 200
    import pandas as pd

    table = pd.read_csv(csv)
    assert set(table["schedule"]) == {"linear", "sigmoid"} and len(table) == 200
    lin = table[table.schedule == "linear"]
    assert lin["alpha_bar"].is_monotonic_decreasing and lin["beta"].iloc[0] == pytest.approx(1e-4)
    # at T = 1000 the plots are thinned (the page stays light), the CSV keeps every t
    *plots, csv = client.predict(["linear", "cosine"], 1000, api_name="/schedules")
    for plot in plots:
        ts = [row[0] for row in plot["data"] if row[2] == "cosine"]
        assert 240 <= len(ts) <= 260 and 999 in ts and 998 in ts, len(ts)
    assert len(pd.read_csv(csv)) == 2000


def _sample(
    client,
    seed,
    sampler="DDPM (fewer steps)",
    steps=20,
    batch=4,
    model="ddpm-mnist-28",
    eta=0.0,
    variance="model default",
):
    return client.predict(model, sampler, steps, eta, variance, batch, seed, api_name="/sample")


def test_sampling_is_reproducible_by_seed(client):
    a, b, c = _sample(client, 3), _sample(client, 3), _sample(client, 4)
    gal_a, gal_b, gal_c = ([_digest(x["image"]) for x in r[0]] for r in (a, b, c))
    assert len(gal_a) == 4 and gal_a == gal_b
    assert not set(gal_a) & set(gal_c)
    traj, anim, files, info = a[1], a[2], a[3], a[4]
    assert Image.open(traj).size[0] > 10 * 28
    with Image.open(anim) as im:
        assert im.n_frames >= 10
    assert any(str(f).endswith(".zip") for f in files)
    assert "ddpm-mnist-28" in info and "20 DDPM steps" in info and "frozen TorchScript" in info  # the CPU fast path


def test_ddim_and_variance_override(client):
    out = _sample(client, 1, sampler="DDIM", steps=10, batch=2, eta=0.5, variance="fixed_large")
    assert len(out[0]) == 2 and "10 DDIM steps" in out[4] and "η = 0.5" in out[4]  # DDIM's noise is set by eta
    out = _sample(client, 2, sampler="DDPM (fewer steps)", steps=5, batch=1, variance="fixed_large")
    assert "5 DDPM steps" in out[4] and "variance fixed_large" in out[4]


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(steps=0), "less than minimum"),
        (dict(batch=10**6), "greater than maximum"),
        (dict(seed="x"), "finite number"),
        (dict(model="../../etc/passwd"), "not allowed"),
        (dict(model="https://evil.example/model"), "not allowed"),
        (dict(model="google/ddpm-cifar10-32"), "cannot be reached"),
        (dict(variance="learned_range"), "does not fit this model"),
    ],
)
def test_sampling_bad_parameters(client, kwargs, fragment):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=fragment):
        _sample(client, **{"seed": 0, **kwargs})


def test_denoise_from_t(client, corpus):
    from gradio_client import handle_file

    gallery, info = client.predict(
        handle_file(str(corpus["gray.png"][0])), "ddpm-mnist-28", 300, 3, 10, 0, api_name="/denoise_from_t"
    )
    assert len(gallery) == 2 + 3 and "t = 300" in info
    again = client.predict(
        handle_file(str(corpus["gray.png"][0])), "ddpm-mnist-28", 300, 3, 10, 0, api_name="/denoise_from_t"
    )[0]
    assert [_digest(g["image"]) for g in gallery] == [_digest(g["image"]) for g in again]


def test_readme_front_matter_is_a_valid_spaces_card():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(Path(__file__).resolve().parents[1] / "README.md")
    data = card.data.to_dict()
    assert data["sdk"] == "gradio" and data["app_file"] == "app.py" and data["python_version"] == "3.11"
    import gradio

    assert data["sdk_version"] == gradio.__version__  # the card pins the gradio the tests ran with
    for key in ("license", "short_description", "suggested_hardware", "models", "title", "emoji"):
        assert data.get(key), key
    assert len(data["short_description"]) <= 60


def test_python_app_py_serves_on_the_configured_port(tmp_path):
    """The README's run command ends in `python app.py`: a real process, on GRADIO_SERVER_PORT."""
    import os
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200 and b"DDPM Explorer" in r.read()
                    break
            except OSError:
                assert proc.poll() is None, "".join(lines)[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("app.py did not start serving within 90 s")
        # the fast path for the default request is prepared in the background at start-up, not on a user's time
        while time.time() < deadline and not any("fast-path warm-up" in line for line in lines):
            time.sleep(0.5)
        assert any("fast-path warm-up ready" in line for line in lines), "".join(lines)[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_default_setting_is_read_from_the_bundled_models_measured_curve():
    """The Sample tab's default (sampler, steps) is the cheapest point within the stated margin of the best on the
    shipped curve, and the Sampler radio shows it."""
    from ddpm_core.checkpoints import BUNDLED_DEFAULT, CHECKPOINT_DIR
    from ddpm_core.quality import cheapest_within, load_curve
    from ddpm_core.samplers import SAMPLERS
    from ui.common import DEFAULT_SAMPLER, DEFAULT_STEPS
    from ui.tabs.sample import SAMPLER_CHOICES, default_choice

    curve = load_curve(CHECKPOINT_DIR / BUNDLED_DEFAULT)
    assert curve is not None, "the bundled model ships its curve.json"
    best = cheapest_within(curve)
    assert (DEFAULT_SAMPLER, DEFAULT_STEPS) == (best["sampler"], best["steps"])
    assert default_choice() in SAMPLER_CHOICES and default_choice().split(" ")[0] in SAMPLERS[best["sampler"]].label


def test_warm_up_prepares_the_default_request_and_skips_zero_gpu(monkeypatch):
    import app
    from ddpm_core.sampling import generate

    app.warm_up_default()
    assert app.WARM["status"].startswith("ready")
    first = generate(
        app.model(app.BUNDLED_DEFAULT),
        batch_size=app.DEFAULT_BATCH,
        num_inference_steps=app.DEFAULT_STEPS,
        sampler=app.DEFAULT_SAMPLER,
        n_snapshots=0,
        n_frames=0,
    )
    assert first.setup_seconds == 0.0  # the first visitor's request found its loop ready
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    app.warm_up_default()
    assert app.WARM["status"].startswith("skipped")
    # a GPU attached per request: the tabs ask the fast path for the eager step, no graph kept across requests
    from ui.common import fast_path

    bundled = app.model(app.BUNDLED_DEFAULT)
    assert fast_path(bundled) == {"mode": "eager", "upgrade": None}
    zero = generate(bundled, batch_size=2, num_inference_steps=3, **fast_path(bundled))
    assert zero.path == "eager channels_last"
    monkeypatch.delenv("SPACES_ZERO_GPU")
    # a CPU: the frozen trace, nothing to build in the background
    assert fast_path(bundled) == {"mode": None, "upgrade": None}


def test_the_space_computes_on_one_cpu_thread_unless_told(monkeypatch):
    """``python app.py`` sets torch's threads on a CPU from ``DDPM_CPU_THREADS`` (default 1); a bad value is refused
    with a message, not taken as some number."""
    from ui.common import cpu_threads

    monkeypatch.delenv("DDPM_CPU_THREADS", raising=False)
    assert cpu_threads() == 1
    monkeypatch.setenv("DDPM_CPU_THREADS", "2")
    assert cpu_threads() == 2
    for bad in ("0", "two", "-1", "", "1.5"):
        monkeypatch.setenv("DDPM_CPU_THREADS", bad)
        with pytest.raises(ValueError, match="DDPM_CPU_THREADS"):
            cpu_threads()


def test_the_sample_summary_speaks_the_visitors_language():
    """The language switch reaches what the handler writes: the run's summary and its progress lines (the
    language is a gr.State, not a parameter of the /sample endpoint)."""
    from ui.tabs.sample import sample

    zh = list(sample("ddpm-mnist-28", "DDIM", 3, 0.0, "model default", 1, 0, "zh"))
    assert zh[0][4] == "采样中… 共 3 步" and "3 步 DDIM" in zh[-1][4] and "种子 0" in zh[-1][4], zh[-1][4]
    assert "（冻结的 TorchScript" in zh[-1][4] and "frozen" not in zh[-1][4], zh[-1][4]
    en = list(sample("ddpm-mnist-28", "DDIM", 3, 0.0, "model default", 1, 0))
    assert en[0][4] == "Sampling… 3 steps" and "3 DDIM steps" in en[-1][4] and "seed 0" in en[-1][4], en[-1][4]


@pytest.mark.parametrize(
    "path",
    [
        "frozen TorchScript",
        "eager (frozen TorchScript is the CPU path)",
        "eager (TorchScript trace failed: RuntimeError)",
        "eager (the TorchScript trace did not match the module)",
        "eager channels_last (no CUDA graph: not a CUDA device)",
        "torch.compile, one CUDA graph per step",
        "eager channels_last (torch.compile failed: RuntimeError) (CUDA graph capture failed: RuntimeError)",
    ],
)
def test_what_runs_is_said_in_chinese_with_only_product_names_left(path):
    """``FastLoop.path`` as ddpm_core.fast composes it, in the Chinese summary: only names of things stay Latin."""
    from ui.tabs.sample import path_text

    zh = path_text(path, "zh")
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", zh))
    assert words <= {"TorchScript", "CUDA", "CPU", "torch.compile", "channels_last", "RuntimeError"}, zh
    assert path_text(path) == path


def test_compare_runs_each_pair_from_the_same_noise(client):
    """/compare: one image per pair, and a table whose distances show the deterministic samplers converging on one
    image while DDPM, stochastic, ends elsewhere. The reference is the highest-order deterministic sampler's run
    (DPM-Solver++ 2M, second order), not DDIM's longer one (first order)."""
    pairs = ["DDPM · 100", "DDIM · 200", "DDIM · 10", "DPM-Solver++ · 20"]
    gallery, table = client.predict("ddpm-mnist-28", 3, pairs, api_name="/compare")
    assert len(gallery) == 4 and "distance to DPM-Solver++ · 20" in table
    rows = {r.split("|")[1].strip(): r.split("|")[2:5] for r in table.splitlines()[2:]}
    assert list(rows) == pairs and [int(rows[p][0]) for p in pairs] == [100, 200, 10, 20]  # one evaluation a step
    dist = {p: float(rows[p][2]) for p in pairs}
    assert dist["DPM-Solver++ · 20"] == 0.0
    assert max(dist["DDIM · 200"], dist["DDIM · 10"]) < dist["DDPM · 100"] / 2
    with pytest.raises(Exception, match="not in the list of choices"):  # gradio checks the choices first
        client.predict("ddpm-mnist-28", 3, ["DDIM · 7"], api_name="/compare")


def _figure(plot: dict) -> Image.Image:
    """A gr.Plot's matplotlib figure as the page receives it (a data URL of an image)."""
    import base64
    import io

    assert plot["type"] == "matplotlib"
    return Image.open(io.BytesIO(base64.b64decode(plot["plot"].split(",", 1)[1])))


@pytest.fixture
def full_lab_training(monkeypatch):
    """The lab's training without its wall-clock budget: these tests check what the full 2,500 steps learn, on a
    machine whose load they do not know (the budget has its own test in tests/test_lab2d.py)."""
    monkeypatch.setattr("ui.tabs.lab2d.TRAIN_BUDGET_S", None)


def test_the_2d_lab_trains_then_draws_every_panel_in_one_session(client, full_lab_training):
    """/lab_train keeps the trained model in the client's session; /lab_sample, /lab_forward and /lab_field use it.
    Before training, they say what to do."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    fresh = Client(client.src, verbose=False, analytics_enabled=False)
    with pytest.raises(AppError, match="Train a model first"):
        fresh.predict(100, api_name="/lab_field")
    # the three-argument call of before the training-set size existed: it trains on all 4,000 points
    loss, data, info = client.predict("ring", "linear", "epsilon", api_name="/lab_train")
    assert info.startswith("Trained 2500 steps (training points: 4,000)") and _figure(data).size[0] > 300
    rows = loss["data"]
    assert len(rows) == 2500 // 25 and rows[-1][1] < rows[0][1]  # (step, loss): the loss went down
    figure, text, paths = client.predict("ddim", 50, -1, 1, 0, api_name="/lab_sample")
    ed = float(re.search(r"\*\*([\d.]+)\*\*", text).group(1))
    floor = float(re.search(r"data: ([\d.]+)\)", text).group(1))
    assert _figure(figure).size[0] > 300 and ed < 3 * floor + 0.005, text
    # on all 4,000 points the model generalises: about 1% of its samples come nearer to a training point than 99% of
    # held-out data does, as for new data (ddpm_core.lab2d.NO_COPIES: at most 5%)
    assert "Essentially no sample is a copy" in text and _copies(text) <= 5, text
    # the player's data, sent once: the 2,000 points at x_T and after each of the 50 steps, over the training points
    assert (paths["frames"], paths["points"], paths["data_points"], paths["lim"]) == (51, 2000, 2000, 3.2)
    assert paths["step"] == list(range(51)) and paths["t"][0] == 980 and paths["t"][-1] is None
    from ddpm_core.lab2d import OFF_AXES

    q = np.frombuffer(base64.b64decode(paths["xy"]), dtype="<i2").reshape(51, 2000, 2)
    inside = [f[(f != OFF_AXES).all(axis=1)] * paths["lim"] / paths["levels"] for f in (q[0], q[-1])]
    assert len(inside[0]) > 1990 and abs(inside[0].std() - 1) < 0.05  # N(0, I), nearly all inside the axes
    assert abs(np.median(np.hypot(*inside[1].T)) - 2) < 0.1  # then the ring
    assert len(paths["xy"]) + len(paths["data"]) < 0.6e6  # 51 frames of int16, base64
    overview, zoom, text = client.predict(300, 1, 1.9, 0.1, False, 0, 0, api_name="/lab_posterior")
    with Image.open(overview) as im:
        assert im.size == (420, 420)
    assert _figure(zoom).size[0] > 300
    # at t = 300 x_t says little about x_0: many of the 4,000 training points could have made it
    cand = float(re.search(r"about \*\*([\d.]+)\*\*", text).group(1))
    err = float(re.search(r"\*\*([\d.]+) σ\*\* from the data", text).group(1))
    assert 100 < cand < 4000 and err < 0.5, text  # the network's step lands within 0.5 σ of the data's own
    # x_0 chosen on the far side of the ring: its true posterior lies far from the step the network takes, which
    # stays on the data's own reverse step (the average over every x_0 that could have made x_t)
    *_, text = client.predict(300, 100, 1.9, 0.1, True, -2.0, 0.0, api_name="/lab_posterior")
    err = float(re.search(r"\*\*([\d.]+) σ\*\* from the data", text).group(1))
    gap = float(re.search(r"\*\*([\d.]+) σ\*\* from the true posterior", text).group(1))
    assert err < 0.5 < 2 < gap, text
    *_, text = client.predict(20, 500, 1.9, 0.1, False, 0, 0, api_name="/lab_posterior")  # a jump past s = 0
    assert text.startswith("At t = 20")
    with pytest.raises(AppError, match="x_t must be between -3.2 and 3.2, got 7"):
        client.predict(300, 1, 7, 0.1, False, 0, 0, api_name="/lab_posterior")
    figure, text = client.predict(50, api_name="/lab_field")
    err = float(re.search(r"\*\*([\d.]+)\*\*", text).group(1))
    # the ring is a Gaussian mixture: the true score is drawn beside the learned one, which is close to it
    assert _figure(figure).size[0] > 300 and err < 0.5, text
    assert _figure(client.predict(300, api_name="/lab_forward")).size[0] > 300
    assert _figure(client.predict(api_name="/lab_quality")).size[0] > 300


def _copies(text: str) -> int:
    """The percentage of copies the lab's readout gives."""
    return int(re.search(r"\*\*Copies: (\d+)%\*\*", text).group(1))


def test_the_2d_lab_on_one_point_samples_copies_of_it(client, full_lab_training):
    """/lab_train's trailing training-set size: on one point the samples are copies of it, the readout says so, and
    the reverse-step panel says the data's step is the true posterior there."""
    *_, info = client.predict("moons", "linear", "epsilon", None, 1, api_name="/lab_train")
    assert info.startswith("Trained 2500 steps (training points: 1)"), info
    _, text, _ = client.predict("ddpm", 100, -1, 1, 0, api_name="/lab_sample")
    assert "Essentially every sample is a copy" in text and _copies(text) >= 90, text
    *_, text = client.predict(300, 100, 1.9, 0.1, False, 0, 0, api_name="/lab_posterior")
    assert "about **1.0** training points" in text and "With **one training point**" in text, text


def test_the_2d_lab_learns_a_drawn_shape(full_lab_training):
    """A sketch (an opaque ring on a clear canvas, as the Sketchpad sends it) is the training data; the samples come
    near held-out points of the same drawing."""
    from ui.tabs.lab2d import lab_sample, lab_train

    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(xx - 100, yy - 100)
    canvas = np.zeros((200, 200, 4), np.uint8)
    canvas[(r > 50) & (r < 60), 3] = 255
    *_, (_, data, info, run) = lab_train("drawn", "linear", "epsilon", {"composite": canvas})
    assert run.dataset == "drawn" and info.startswith("Trained")
    radius = run.data.norm(dim=1) / 3.2 * 100  # back to canvas pixels
    assert ((radius > 48.5) & (radius < 61.5)).all()  # a point lies anywhere within its pixel
    _, text, _ = lab_sample(run, "ddim", 50, -1, 1, 0)
    ed = float(re.search(r"\*\*([\d.]+)\*\*", text).group(1))
    floor = float(re.search(r"data: ([\d.]+)\)", text).group(1))
    assert ed < 3 * floor + 0.005, text


def test_a_click_on_the_posterior_panel_picks_the_point_under_it():
    """The clickable panel's fixed axes: a pixel maps back to the point matplotlib drew there (to a pixel's width),
    and a click moves x_t or x_0 as the mode says, clamped to the panel."""
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from ui import plots2d as P
    from ui.tabs.lab2d import _clicked

    fig = Figure(figsize=(P.CLICK_PIXELS / 100, P.CLICK_PIXELS / 100), dpi=100)
    ax = fig.add_axes(P.CLICK_AXES)
    ax.set(xlim=(-P.LIM, P.LIM), ylim=(-P.LIM, P.LIM))
    pixel = 2 * P.LIM / (P.CLICK_AXES[2] * P.CLICK_PIXELS)  # one pixel in the data's units
    for point in [(0.0, 0.0), (1.5, -2.0), (-3.0, 3.0)]:
        px, py = ax.transData.transform(point)
        back = P.pixel_to_point(px, P.CLICK_PIXELS - py)  # a click counts pixels from the top
        assert np.allclose(back, point, atol=1e-9), (point, back)
    centre = [P.CLICK_PIXELS * (P.CLICK_AXES[0] + P.CLICK_AXES[2] / 2), P.CLICK_PIXELS * (1 - P.CLICK_AXES[1])]
    click = SimpleNamespace(index=[round(centre[0]), round(centre[1])])  # the bottom middle of the axes
    x, y, own, x0x, x0y = _clicked("x_t", 9, 9, False, 0.5, 0.5, click)
    assert abs(x) <= pixel and abs(y + P.LIM) <= pixel and (own, x0x, x0y) == (False, 0.5, 0.5)
    x, y, own, x0x, x0y = _clicked("x0", 1.0, 2.0, False, 0.5, 0.5, click)
    assert (x, y, own) == (1.0, 2.0, True) and abs(x0x) <= pixel and abs(x0y + P.LIM) <= pixel
    assert _clicked("x_t", 0, 0, False, 0, 0, SimpleNamespace(index=[0, 0])) == (-P.LIM, P.LIM, False, 0, 0)
