"""A hostile visitor against the real server (127.0.0.1 only, bounded): queue floods, odd JSON, disk, odd images.

Clients are told apart as behind the Spaces proxy, by the first address of X-Forwarded-For (addresses from the
documentation ranges of RFC 5737: only header values, no traffic goes there).
"""

import json
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HOSTILE, POLITE = "198.51.100.7", "203.0.113.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The Space with its own gradio cache folder (the disk cap is measured there), as if behind a proxy."""
    from conftest import free_port

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        import app

        mp.setattr(app.GUARD, "trust_proxy", True)
        demo = app.build_demo()
        port = free_port()
        app.launch(demo, warm=False, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        yield app, f"http://127.0.0.1:{port}/"
        demo.close()


@pytest.fixture
def polite(server, tmp_path):
    from gradio_client import Client

    return Client(
        server[1],
        verbose=False,
        analytics_enabled=False,
        download_files=str(tmp_path),
        headers={"X-Forwarded-For": POLITE},
    )


def _fn_index(url: str, api_name: str) -> int:
    import httpx

    deps = httpx.get(url + "config", timeout=10).json()["dependencies"]
    return next(d["id"] for d in deps if d.get("api_name") == api_name)


def _join(http, url, fn_index, data, session=None):
    """POST a job to the queue and never listen for its result."""
    body = {
        "data": data,
        "fn_index": fn_index,
        "session_hash": session or uuid.uuid4().hex[:10],
        "event_data": None,
        "trigger_id": None,
    }
    return http.post(url + "gradio_api/queue/join", json=body, headers={"X-Forwarded-For": HOSTILE}, timeout=10)


def _wait(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_a_flood_of_unlistened_joins_neither_runs_nor_starves_the_others(server, polite):
    import httpx
    from gradio_client import handle_file

    app, url = server
    sample_id, forward_id = _fn_index(url, "sample"), _fn_index(url, "forward")
    steps0, dropped0 = app.STATS["steps"], app.GUARD.stats["dropped"]
    heavy = [
        "ddpm-mnist-28",
        "DDPM (all T steps)",
        1000,
        0.0,
        "model default",
        16,
        0,
        None,
    ]  # None: the language State
    with httpx.Client() as http:
        sample_codes = [_join(http, url, sample_id, heavy).status_code for _ in range(40)]
        forward_codes = [
            _join(http, url, forward_id, [None, 5, "linear", 1000, 0, None]).status_code for _ in range(20)
        ]
    # one visitor's share: 2 sampling jobs, 2 forward jobs; everything past it is refused at once
    assert sample_codes.count(200) == 2 and sample_codes.count(503) == 38, sample_codes
    assert forward_codes.count(200) == 2 and forward_codes.count(503) == 18, forward_codes

    # meanwhile a polite visitor is served, promptly and without refusals
    img = handle_file(str(EXAMPLES / "shapes.png"))
    latencies = []
    for k in range(6):
        t0 = time.perf_counter()
        out = polite.predict(img, 100 * k, "linear", 1000, k, api_name="/forward")
        latencies.append(time.perf_counter() - t0)
        assert Path(out[0]).is_file()
    assert polite.predict(["linear", "sigmoid"], 1000, api_name="/schedules")
    assert max(latencies) < 3.0, latencies
    out = polite.predict("ddpm-mnist-28", "DDPM (fewer steps)", 5, 0.0, "model default", 1, 0, api_name="/sample")
    assert len(out[0]) == 1

    # the unlistened jobs were dropped before computing: none of their 16 x 1000 steps ran
    assert _wait(lambda: app.GUARD.stats["dropped"] - dropped0 >= 4, 30), app.GUARD.stats
    assert app.STATS["steps"] - steps0 <= 5  # the polite 5-step run only
    # and the share is free again
    with httpx.Client() as http:
        assert _wait(lambda: not app.GUARD.admit("sampler", HOSTILE), 10)
        assert _join(http, url, sample_id, heavy).status_code == 200


def test_without_a_trusted_proxy_the_header_is_ignored(server, monkeypatch):
    app, _ = server
    monkeypatch.setattr(app.GUARD, "trust_proxy", False)

    class Req:
        headers = {"x-forwarded-for": HOSTILE}

        class client:
            host = "127.0.0.1"

    assert app.GUARD.client_key(Req) == "127.0.0.1"
    monkeypatch.setattr(app.GUARD, "trust_proxy", True)
    assert app.GUARD.client_key(Req) == HOSTILE


def test_the_forward_queue_is_not_the_sampling_queue(server):
    """A full sampling queue refuses only sampling: the per-group sizes are independent."""
    app, _ = server
    assert app.GUARD.limits("sampler") == (2, 16) and app.GUARD.limits("forward") == (2, 32)
    assert app.GUARD.admit("forward", "192.0.2.50") is None


def test_the_disk_stays_under_its_cap_and_fresh_results_survive(server, polite, monkeypatch):
    from gradio_client import handle_file

    import ui.files as files

    app, _ = server
    root = files.cache_root()
    polite.predict(handle_file(str(EXAMPLES / "shapes.png")), 1, "linear", 1000, 0, api_name="/forward")
    before = {p for p in root.rglob("*") if p.is_file()}
    out = polite.predict(handle_file(str(EXAMPLES / "shapes.png")), 2, "linear", 1000, 0, api_name="/forward")
    new = {p for p in root.rglob("*") if p.is_file()} - before
    # four images, written once where gradio serves them (no second copy in gradio's cache)
    assert len([p for p in new if p.suffix == ".png"]) == 4, sorted(map(str, new))

    cap = files.folder_bytes(root) + 3 * 2**20
    monkeypatch.setattr(files.JANITOR, "cap", cap)
    monkeypatch.setattr(files.JANITOR, "every_s", 0.05)
    img = handle_file(str(EXAMPLES / "rings.png"))
    peak = 0
    for k in range(25):
        out = polite.predict(img, 10 * k, "linear", 1000, k, api_name="/forward")
        time.sleep(0.1)
        peak = max(peak, files.folder_bytes(root))
    one_call = 4 * 2**20  # what one /forward writes at most (four PNGs of at most 512 px): the sweep's overshoot
    assert peak <= cap + one_call, (peak, cap)
    assert files.JANITOR.stats["removed"] > 0
    assert all(Path(p).is_file() for p in out[:3] if isinstance(p, str))  # the newest results are still there


def test_sweep_removes_oldest_first(tmp_path):
    import os

    from ui.files import folder_bytes, sweep

    for k in range(10):
        f = tmp_path / f"d{k}" / "x.bin"
        f.parent.mkdir()
        f.write_bytes(b"\0" * 1000)
        os.utime(f, (1000 + k, 1000 + k))
    used, removed = sweep(tmp_path, cap=5000, low_water=0.8)
    assert (used, removed) == (4000, 6) and folder_bytes(tmp_path) == 4000
    assert sorted(p.parent.name for p in tmp_path.rglob("*.bin")) == ["d6", "d7", "d8", "d9"]
    assert not (tmp_path / "d0").exists()  # emptied folders go too
    assert sweep(tmp_path, cap=5000) == (4000, 0)


def test_repeated_schedules_are_computed_once(polite):
    t0 = time.perf_counter()
    plots = polite.predict(["linear"] * 100, 1000, api_name="/schedules")
    assert time.perf_counter() - t0 < 5
    assert {row[-1] for row in plots[0]["data"]} == {"linear"} and len(plots[0]["data"]) <= 260  # thinned, once


HUGE = 10**400


@pytest.mark.parametrize(
    "endpoint,args,fragment",
    [
        ("/forward", ["__IMG__", HUGE, "linear", 1000, 0], "t \\(timestep\\) is far out of range"),
        ("/forward", ["__IMG__", 5, "linear", HUGE, 0], "T is far out of range"),
        ("/forward", ["__IMG__", 5, "linear", 1000, HUGE], "Seed is far out of range"),
        ("/sample", ["ddpm-mnist-28", "DDIM", HUGE, 0.0, "model default", 1, 0], "Steps is far out of range"),
        ("/sample", ["ddpm-mnist-28", "DDIM", 5, 0.0, "model default", HUGE, 0], "Batch size is far out of range"),
        ("/sample", ["ddpm-mnist-28", "DDIM", 5, 0.0, "model default", 1, -HUGE], "Seed is far out of range"),
        ("/schedules", [["linear"], HUGE], "T is far out of range"),
        ("/denoise_from_t", ["__IMG__", "ddpm-mnist-28", 10**309, 2, 10, 0], "far out of range"),
        ("/sample", [["a", "b"], "DDIM", 5, 0.0, "model default", 1, 0], "must be text"),
        ("/sample", [{"repo": "x"}, "DDIM", 5, 0.0, "model default", 1, 0], "must be text"),
        ("/sample", ["a/" + "b" * 10_000, "DDIM", 5, 0.0, "model default", 1, 0], "too long"),
        ("/schedules", [7, 1000], "Schedules must be a list of names"),
        ("/schedules", [None, 1000], "Schedules must be a list of names"),
        ("/forward", ["__IMG__", 5, "linear_improved", 15, 0], "linear_improved needs T ≥ 21"),
    ],
)
def test_odd_values_get_a_clear_message(polite, endpoint, args, fragment):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    args = [handle_file(str(EXAMPLES / "shapes.png")) if a == "__IMG__" else a for a in args]
    with pytest.raises(AppError, match=fragment) as err:
        polite.predict(*args, api_name=endpoint)
    assert len(str(err.value)) < 300  # a 10 KB request is never echoed back whole


def _raw_call(url: str, api_name: str, data: list) -> str:
    """The REST API without gradio_client (which fills in defaults and uploads paths): the final SSE message."""
    import httpx

    with httpx.Client(timeout=60, headers={"X-Forwarded-For": POLITE}) as http:
        event_id = http.post(f"{url}gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        text = http.get(f"{url}gradio_api/call/{api_name}/{event_id}").text
    return text


def test_a_missing_argument_and_a_foreign_path_are_named(server):
    url = server[1]
    text = _raw_call(url, "forward", [{"path": str(EXAMPLES / "shapes.png"), "meta": {"_type": "gradio.FileData"}}, 5])
    assert "event: error" in text and "missing" in text.lower(), text[-500:]
    text = _raw_call(
        url, "forward", [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, 5, "linear", 1000, 0]
    )
    assert "event: error" in text and "not uploaded to this Space" in text, text[-500:]


@pytest.mark.parametrize("size", [(1, 1), (32, 1), (1, 32)])
def test_one_pixel_high_or_wide_images_keep_their_shape(polite, tmp_path, size):
    from gradio_client import handle_file
    from PIL import Image

    path = tmp_path / "thin.png"
    Image.new("RGB", size, (10, 200, 10)).save(path)
    out = polite.predict(handle_file(str(path)), 0, "linear", 1000, 0, api_name="/forward")
    for k in (0, 4):  # x_t and the posterior mean
        img = Image.open(out[k])
        assert img.size == size and img.mode == "RGB"
        r, g, b = img.getpixel((0, 0))
        assert g > 150 and r < 80 and b < 80  # still green at t = 0 (1% noise)


def test_fuzz_every_endpoint_with_arbitrary_json(polite):
    """Any JSON value for any parameter: a valid result or a clear message, never the generic error."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)
    )
    json_values = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=8,
    )
    img = handle_file(str(EXAMPLES / "shapes.png"))
    valid = {
        "/forward": [img, 5, "linear", 1000, 0],
        "/sample": ["ddpm-mnist-28", "DDPM (fewer steps)", 2, 0.0, "model default", 1, 0],
        "/schedules": [["linear"], 100],
    }

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(endpoint=st.sampled_from(sorted(valid)), position=st.integers(0, 6), value=json_values)
    def check(endpoint, position, value):
        args = list(valid[endpoint])
        args[position % len(args)] = value
        try:
            polite.predict(*args, api_name=endpoint)
        except AppError as err:
            message = str(err)
            assert message and "Traceback" not in message and "upstream Gradio app has raised" not in message, (
                endpoint,
                position,
                json.dumps(value)[:200],
                message,
            )

    check()


def test_the_source_folder_is_not_written_at_run_time(tmp_path):
    """Spaces may mount the app read-only: building and serving the app writes nothing beside its source
    (gradio writes a .pyi stub beside the source of every component subclass unless told not to)."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(root / "app.py", src / "app.py")
    shutil.copytree(root / "ui", src / "ui", ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    code = "import app; app.build_demo(); print('built')"
    env = {**__import__("os").environ, "PYTHONPATH": f"{src}:{root}", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert "built" in out.stdout, out.stderr[-2000:]
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
