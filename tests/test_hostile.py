"""A hostile visitor against the real server (127.0.0.1 only, bounded): queue floods, odd JSON, disk, odd images.

Clients are told apart as behind the Spaces proxy, by the first address of X-Forwarded-For (addresses from the
documentation ranges of RFC 5737: only header values, no traffic goes there).
"""

import json
import threading
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
    # every queue of the page has its limits written out (the lab's were a default of 4 while the README said 2)
    groups = {fn.concurrency_id for fn in app.GUARD._blocks.fns.values() if not fn.concurrency_id.isdigit()}
    assert groups <= set(app.GUARD.per_client), groups - set(app.GUARD.per_client)  # others: one event's own
    assert app.GUARD.limits("lab_run")[0] == 2 and app.GUARD.limits("lab_train")[0] == 1


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


def test_the_janitor_admits_uploads_from_its_count_and_walks_only_when_short_of_room(tmp_path):
    """Every upload walked the whole cache folder on the server's event loop: with a large folder on a cold disk the
    first uploads after a start waited for seconds, and every other request with them."""
    import os

    from ui.files import Janitor

    def put(name: str, size: int, age: int) -> None:
        f = tmp_path / name
        f.write_bytes(b"\0" * size)
        os.utime(f, (1000 + age, 1000 + age))

    for k in range(3):
        put(f"old{k}", 1000, k)
    jan = Janitor(cap=5000, root=tmp_path)
    assert jan.run_once() == 3000 and jan.stats["walks"] == 1
    assert jan.reserve(1000) and jan.stats["walks"] == 1  # 3000 + 1000 fits: admitted from the count
    put("up0", 1000, 10)
    jan.release(1000)
    assert (jan.used, jan.arrived, jan.reserved) == (3000, 1000, 0)
    assert not jan.reserve(6000) and jan.stats["walks"] == 1  # larger than the cap: refused without a walk
    assert jan.reserve(1500) and jan.stats["walks"] == 2  # 4000 + 1500 does not fit: walked, oldest removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old2", "up0"]  # 3500 room, down to 0.8 x 3500
    assert (jan.used, jan.arrived, jan.reserved) == (2000, 0, 1500)


def test_a_long_walk_of_the_cache_holds_up_only_the_upload_that_needs_it(server, monkeypatch):
    """An upload that must make room waits for the walk of the folder; the server answers everyone else meanwhile."""
    import os

    import httpx

    import ui.files as files

    _, url = server
    old = files.out_path("old.bin")  # an old result, for the walk to remove
    old.write_bytes(bytes(3 * 2**20))
    os.utime(old, (1000, 1000))
    files.JANITOR.run_once()  # the count is the folder's size now
    monkeypatch.setattr(files.JANITOR, "cap", files.folder_bytes(files.cache_root()) + 2**20)
    result = {}

    def upload():
        with httpx.Client(timeout=30) as http:
            r = http.post(
                url + "gradio_api/upload",
                files={"files": ("u.png", bytes(2 * 2**20), "image/png")},  # beyond the room left: it must walk
                headers={"X-Forwarded-For": POLITE},
            )
            result["status"] = r.status_code

    with files.JANITOR._walk:  # a walk in progress, as long as this block
        sender = threading.Thread(target=upload)
        sender.start()
        time.sleep(1.0)
        assert sender.is_alive() and not result  # the upload waits for the walk
        with httpx.Client(timeout=5) as http:
            t0 = time.perf_counter()
            assert http.get(url + "config").status_code == 200
            assert time.perf_counter() - t0 < 2.0  # the server did not wait with it
    sender.join(30)
    assert result.get("status") == 200 and not old.exists()


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


def _raw_call(url: str, api_name: str, data: list, address: str = POLITE) -> str:
    """The REST API without gradio_client (which fills in defaults and uploads paths): the final SSE message."""
    import httpx

    with httpx.Client(timeout=60, headers={"X-Forwarded-For": address}) as http:
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


# ---------------------------------------------------------------- the sketchpad's back doors
def _sketch(path: str, layers: int = 0) -> dict:
    from gradio_client import handle_file

    return {"background": None, "layers": [handle_file(path)] * layers, "composite": handle_file(path)}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def test_no_component_function_is_reachable(server):
    """gradio's /component_server ran the image editor's accept_blobs: one 300-byte request with a layer index of
    10^8 kept 763 MB for ever. The page calls no component function, so the route is closed."""
    import httpx

    from ui.guard import server_functions

    app, url = server
    demo_fns = server_functions(app.GUARD._blocks)
    # every server function the page's components have, and none of them needed by the page: the canvas calls
    # accept_blobs only when a change or input listener is attached to it, and none is
    assert demo_fns == [("SafeSketchpad", "accept_blobs")], demo_fns
    config = httpx.get(url + "config", timeout=10).json()
    sketch = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "lab-sketch")
    listened = {(t[0], t[1]) for d in config["dependencies"] for t in d["targets"]}
    assert not {(sketch["id"], "change"), (sketch["id"], "input")} & listened

    before = _rss_mb()
    files = {"files": ("x.png", b"\0", "image/png")}
    data = {
        "data": json.dumps({"id": "a", "type": "layer", "index": 10**8}),
        "component_id": str(sketch["id"]),
        "fn_name": "accept_blobs",
        "session_hash": "bomb",
    }
    for route in ("gradio_api/component_server", "gradio_api/component_server/"):
        r = httpx.post(url + route, data={"data": json.dumps(data)}, files=files, timeout=30)
        assert r.status_code == 404 and "no component functions" in r.text, (r.status_code, r.text[:200])
    assert _rss_mb() - before < 50


def test_a_sketch_is_decoded_by_the_allow_list(server, polite, tmp_path, monkeypatch):
    """An EPS file sent as the drawing ran Ghostscript (a planted `gs` on PATH ran with the upload); a 9.7 KB PNG of
    8,900 x 8,900 1-bit pixels referenced by 8 layers took the server to a 4.8 GB peak. Both are refused now, by the
    same allow-list and pixel limit as every upload, with the message an upload gets."""
    from gradio_client.exceptions import AppError
    from PIL import Image

    marker = tmp_path / "gs-ran"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\ntouch {marker}\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{gs.parent}:{__import__('os').environ['PATH']}")
    eps = tmp_path / "drawing.png"  # named as an image, but PostScript inside
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(AppError, match="not an image in an accepted format"):
        polite.predict("drawn", "linear", "epsilon", _sketch(str(eps)), api_name="/lab_train")
    assert not marker.exists()

    bomb = tmp_path / "bomb.png"
    Image.new("1", (8900, 8900)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 20_000
    before = _rss_mb()
    with pytest.raises(AppError, match="the limit is 40 MP"):
        polite.predict("drawn", "linear", "epsilon", _sketch(str(bomb), layers=8), api_name="/lab_train")
    assert _rss_mb() - before < 200  # not 4.8 GB: nothing was decoded

    with pytest.raises(AppError, match="corrupt or truncated") as err:
        truncated = tmp_path / "cut.png"
        Image.new("L", (64, 64), 0).save(truncated)
        truncated.write_bytes(truncated.read_bytes()[:60])
        polite.predict("drawn", "linear", "epsilon", _sketch(str(truncated)), api_name="/lab_train")
    assert "Could not preprocess" not in str(err.value)


def test_an_unlistened_sketch_costs_nothing(server, tmp_path):
    """A sketch sent by a client that never listens cost 2 GB and 6 CPU-seconds before its job was dropped: the
    canvas's value is now a path, decoded by the handler only once someone listens."""
    import httpx
    from PIL import Image

    from ui.fair import CPU

    app, url = server
    bomb = tmp_path / "bomb.png"
    Image.new("1", (6000, 6000)).save(bomb, optimize=True)  # 36 MP: under the limit, 36 MB once decoded as L
    with httpx.Client() as http:
        up = http.post(
            url + "gradio_api/upload",
            files={"files": ("bomb.png", bomb.read_bytes(), "image/png")},
            headers={"X-Forwarded-For": HOSTILE},
            timeout=30,
        ).json()[0]
        sketch = {
            "background": None,
            "layers": [{"path": up, "meta": {"_type": "gradio.FileData"}}] * 8,
            "composite": {"path": up, "meta": {"_type": "gradio.FileData"}},
        }
        turns = CPU.stats["turns"]
        before, cpu = _rss_mb(), time.process_time()
        assert (
            _join(http, url, _fn_index(url, "lab_train"), ["drawn", "linear", "epsilon", sketch, None]).status_code
            == 200
        )
        # the job leaves the queue unrun (dropped for want of a listener): no training step took a turn of the CPU
        assert _wait(lambda: not any(e.concurrency_id == "lab_train" for e, _ in app.GUARD._events()), 30)
        time.sleep(0.5)
        assert CPU.stats["turns"] == turns
    assert _rss_mb() - before < 100 and time.process_time() - cpu < 2.0


# ---------------------------------------------------------------- the CPU shared by cost
def test_a_request_over_the_cpu_budget_is_refused_at_once(polite):
    from gradio_client.exceptions import AppError

    t0 = time.perf_counter()
    with pytest.raises(AppError, match="on this CPU one request may cost at most"):
        polite.predict("ddpm-mnist-28", "DDPM (all T steps)", 1000, 0.0, "model default", 16, 0, api_name="/sample")
    assert time.perf_counter() - t0 < 10


def test_a_short_request_never_waits_behind_another_visitors_long_ones(server, polite, tmp_path):
    """Two long requests of one visitor made another visitor's 0.3 s request wait 469 s: now every step takes a turn
    of the CPU, the least-served visitor first, so the short request runs beside them at once."""
    from gradio_client import Client

    app, url = server
    hostile = Client(
        url, verbose=False, analytics_enabled=False, download_files=str(tmp_path), headers={"X-Forwarded-For": HOSTILE}
    )
    heavy = ("ddpm-mnist-28", "DDPM (fewer steps)", 200, 0.0, "model default", 16, 0)  # ~1,200 GFLOP each
    steps0 = app.STATS["steps"]
    jobs = [hostile.submit(*heavy, api_name="/sample") for _ in range(2)]
    assert _wait(lambda: app.STATS["steps"] - steps0 >= 4, 120)  # both heavy jobs are computing
    t0 = time.perf_counter()
    out = polite.predict("ddpm-mnist-28", "DDIM", 5, 0.0, "model default", 1, 0, api_name="/sample")
    waited = time.perf_counter() - t0
    assert len(out[0]) == 1
    running = [not j.done() for j in jobs]
    for j in jobs:
        j.cancel()
    hostile.close()
    assert all(running) and waited < 10, (running, waited)
    # the hostile visitor hung up: its jobs stop at their next turn, not after their 200 steps
    stopped = app.STATS["steps"]
    time.sleep(3)
    assert app.STATS["steps"] - stopped <= 4


def test_forged_forwarded_addresses_are_one_visitor(server):
    """Behind the proxy, nine forged X-Forwarded-For values filled the queue as nine visitors. The proxy appends the
    address it was reached from; only that entry names the client."""
    import httpx

    app, url = server
    fn = _fn_index(url, "sample")
    heavy = ["ddpm-mnist-28", "DDPM (fewer steps)", 100, 0.0, "model default", 1, 0, None]
    with httpx.Client() as http:
        codes = []
        for k in range(9):
            body = {
                "data": heavy,
                "fn_index": fn,
                "session_hash": uuid.uuid4().hex[:10],
                "event_data": None,
                "trigger_id": None,
            }
            forged = {"X-Forwarded-For": f"198.18.0.{k}, {HOSTILE}"}  # the client's claim, then the proxy's entry
            codes.append(http.post(url + "gradio_api/queue/join", json=body, headers=forged, timeout=10).status_code)
    assert codes.count(200) == 2 and codes.count(503) == 7, codes
    assert _wait(lambda: not app.GUARD.admit("sampler", HOSTILE), 30)


# ---------------------------------------------------------------- caches that cannot be filled
def test_uploads_count_against_the_cap_and_the_apps_own_files_survive(server, polite, monkeypatch):
    """30 uploads of 29 MB took the cache from 593 MB to 1,463 MB (cap 1,024 MB); the next sweep then removed the
    example images the page points to, and /forward with the default image failed for every visitor."""
    import httpx
    from gradio_client import handle_file

    import ui.files as files

    app, url = server
    root = files.cache_root()
    cap = 3 * 2**20
    monkeypatch.setattr(files.JANITOR, "cap", cap)  # older files (earlier tests' results) are swept to make room
    blob = bytes(2**20)  # 1 MB each: ten of them do not fit under the cap together
    peak = 0
    with httpx.Client() as http:
        for k in range(10):
            r = http.post(
                url + "gradio_api/upload",
                files={"files": (f"u{k}.png", blob, "image/png")},
                headers={"X-Forwarded-For": POLITE},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            peak = max(peak, files.folder_bytes(root))
        assert peak <= cap, (peak, cap)
        too_big = http.post(
            url + "gradio_api/upload",
            files={"files": ("big.png", bytes(4 * 2**20), "image/png")},
            headers={"X-Forwarded-For": POLITE},
            timeout=30,
        )
        assert too_big.status_code == 503 and "disk is full" in too_big.text  # larger than the whole cap
        # the page's example images are served from the repo, out of the sweep's reach
        config = http.get(url + "config", timeout=10).json()
        example = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "input-image")
        value = example["props"]["value"]
        assert str(EXAMPLES) in value["path"]
        assert http.get(value["url"], timeout=10).status_code == 200
    out = polite.predict(handle_file(value["path"]), 5, "linear", 1000, 0, api_name="/forward")
    assert Path(out[0]).is_file()


def test_fresh_session_hashes_cannot_fill_the_memory(server):
    """300 calls with a fresh session hash each kept 300 sessions of about 1 MB (every REST call opens a session of its
    own); gradio keeps up to 10,000. One visitor now keeps at most its own few sessions, and the app at most
    SESSION_CAPACITY."""
    app, url = server
    holder = app.GUARD._blocks.state_holder
    assert holder.capacity == app.SESSION_CAPACITY
    address = "198.51.100.99"
    for _ in range(30):
        assert "event: complete" in _raw_call(url, "schedules", [["linear"], 100], address)
    assert len(app.GUARD.sessions[address]) == app.GUARD.sessions_per_client
    assert len(set(holder.session_data) & set(app.GUARD.sessions[address])) <= app.GUARD.sessions_per_client
    assert len(holder.session_data) <= app.GUARD.sessions_per_client * len(app.GUARD.sessions)


def test_a_page_holding_only_its_heartbeat_open_is_listening(server):
    """Between two chained events the page may hold only its heartbeat stream open (its result stream closed after
    the first event's result and not reopened yet): a job that joins then is the page's and runs. Without the
    heartbeat, nobody is there and the job is dropped as before."""
    import threading

    import httpx

    app, url = server
    fn = _fn_index(url, "schedules")
    session, gone = uuid.uuid4().hex[:10], uuid.uuid4().hex[:10]
    opened, leave = threading.Event(), threading.Event()

    def page():
        with httpx.Client(timeout=30, headers={"X-Forwarded-For": HOSTILE}) as http:
            with http.stream("GET", f"{url}gradio_api/heartbeat/{session}") as response:
                chunks = response.iter_raw()  # kept: a generator left to the collector closes the stream
                next(chunks)  # the first "ALIVE"
                opened.set()
                leave.wait(60)

    heartbeat = threading.Thread(target=page, daemon=True)
    heartbeat.start()
    try:
        assert opened.wait(30) and _wait(lambda: app.GUARD.listening.get(session) == 1, 10)
        dropped = app.GUARD.stats["dropped"]
        with httpx.Client() as http:
            for s in (session, gone):
                assert _join(http, url, fn, [["linear", "cosine"], 100, None], s).status_code == 200
        left = lambda s: not any(e.session_hash == s for e, _ in app.GUARD._events())  # noqa: E731
        assert _wait(lambda: left(session) and left(gone), 30)
        assert app.GUARD.stats["dropped"] - dropped == 1  # the job of the session nobody holds open
    finally:
        leave.set()
        heartbeat.join(30)
    assert _wait(lambda: session not in app.GUARD.listening, 10)
