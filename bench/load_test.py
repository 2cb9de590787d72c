"""A bounded load test of the Space on 127.0.0.1: concurrent gradio_client users mixing every endpoint.

    python bench/load_test.py --users 16 --calls 6
    python bench/load_test.py --hostile --seconds 60 --users 24 --huge 8
    python bench/load_test.py --fair --seconds 300 --users 4 --json bench/results/cpu-fair-share.json

Starts the app in this process, then each user thread makes ``--calls`` calls, cycling forward / schedules /
sample (10 steps, batch 2) / forward; a quarter of the users send identical requests (same image, same seed).
Reports completed/refused counts, latency percentiles per endpoint and the process's peak RSS.

``--fair``: for ``--seconds`` (300), one hostile visitor keeps its share of the sampling queue full of the costliest
requests the CPU budget admits (16 digits x 500 DDPM steps, listening to them), makes REST calls that each open a
fresh session, and uploads 29 MB files; meanwhile ``--users`` (4) polite visitors make the Sample tab's default
request one after another. Reports each polite request's wait (until its first reverse step is reported) and its
latency, the server's peak RSS, the peak size of its cache folder and its session count.

``--hostile``: for ``--seconds``, one client floods the queue with joins it never listens to (sampling at
1000 steps x batch 16, and forward), while one polite client cycles /forward, /schedules and /sample, ``--users``
more polite users run the ordinary load and ``--huge`` users each upload a 40-megapixel TIFF. Reports the polite
client's latencies and refusals, the flood's accepted/refused joins, the peak size of gradio's cache folder and
the peak RSS.

Users are told apart as behind the Spaces proxy, by X-Forwarded-For (addresses from RFC 5737's documentation
ranges, as header values only). Traffic goes to 127.0.0.1 only; the number of requests and the time are bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import ROOT, TMP, free_port  # offline environment, the repo on the import path


def user_address(k: int) -> str:
    return f"203.0.113.{k % 250 + 1}"


def client_for(url: str, folder: str, address: str):
    """A gradio client downloading into ``<temp>/ddpm-load-dl/<folder>``, seen by the app as coming from ``address``."""
    from gradio_client import Client

    return Client(
        url,
        verbose=False,
        analytics_enabled=False,
        download_files=str(TMP / "ddpm-load-dl" / folder),
        headers={"X-Forwarded-For": address},
        # a loaded server may take longer than httpx's 5 s to answer a new client's /config and /info; the load is
        # what is measured, not how soon a client may connect
        httpx_kwargs={"timeout": 60},
    )


def noise_png(path: str, seed: int, shape: tuple[int, int, int]) -> str:
    """A seeded uniform-noise RGB image saved at ``path``; returns the path."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def pct(v: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(v, q)) if v else float("nan")


def latency_summary(lat: dict[str, list[float]], percentiles: tuple[int, ...]) -> dict:
    """Per endpoint: the number of calls, the given percentiles ("p50", ...) and the maximum, in seconds."""
    return {k: {"n": len(v), **{f"p{q}": pct(v, q) for q in percentiles}, "max": max(v)} for k, v in lat.items()}


def run_all(threads: list[threading.Thread]) -> None:
    for th in threads:
        th.start()
    for th in threads:
        th.join()


class PeakWatch:
    """The peaks of a process's RSS and, given ``disk_bytes``, of what it returns (a folder's size), sampled every
    ``period`` s between ``start()`` and ``stop()``; the RSS is first read when this is made."""

    def __init__(self, pid: int | None, period: float, disk_bytes: Callable[[], int] | None = None):
        import psutil

        self.proc = psutil.Process(pid)
        self.rss, self.disk = self.proc.memory_info().rss, 0
        self.period, self.disk_bytes = period, disk_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.rss = max(self.rss, self.proc.memory_info().rss)
            if self.disk_bytes is not None:
                self.disk = max(self.disk, self.disk_bytes())
            time.sleep(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Tally:
    """What the client threads report, under one lock: latencies per endpoint, refusals, and the distinct results
    of identical requests."""

    def __init__(self):
        self.lat: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.digests: dict[str, set] = {"forward-identical": set(), "sample-identical": set()}
        self.lock = threading.Lock()

    def latency(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.lat.setdefault(kind, []).append(seconds)

    def refused(self, kind: str, err: Exception) -> None:
        with self.lock:
            self.errors.append(f"{kind}: {err}")

    def result(self, key: str, digest) -> None:
        with self.lock:
            self.digests[key].add(digest)


def forward_call(client, image: str, k: int, c: int, identical: bool, tally: Tally) -> None:
    """User ``k``'s call ``c`` to /forward; the noised image must arrive whole."""
    from gradio_client import handle_file
    from PIL import Image

    out = client.predict(
        handle_file(image),
        0 if identical else (k * 37 + c * 101) % 1000,
        "linear",
        1000,
        0 if identical else k,
        api_name="/forward",
    )
    data = Path(out[0]).read_bytes()
    Image.open(io.BytesIO(data)).load()  # arrives whole: decodes completely
    if identical:
        tally.result("forward-identical", hashlib.sha256(data).hexdigest())


def sample_call(client, k: int, identical: bool, tally: Tally) -> None:
    """User ``k``'s call to /sample (10 steps, batch 2); every image must arrive whole."""
    from PIL import Image

    out = client.predict(
        "ddpm-mnist-28",
        "DDPM (fewer steps)",
        10,
        0.0,
        "model default",
        2,
        0 if identical else k,
        api_name="/sample",
    )
    paths = [g["image"] for g in out[0]]
    for p in paths:
        Image.open(p).load()
    if identical:
        tally.result("sample-identical", tuple(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths))


def load_user(url: str, k: int, calls: int, image: str, t_end: float, tally: Tally) -> None:
    """User ``k``: ``calls`` calls cycling forward / schedules / sample / forward, until ``t_end``; every fourth user
    sends identical requests (same image, same seed)."""
    from gradio_client.exceptions import AppError

    client = client_for(url, str(k), user_address(k))
    identical = k % 4 == 0
    for c in range(calls):
        if time.monotonic() > t_end:
            return
        kind = ("forward", "schedules", "sample", "forward")[c % 4]
        t0 = time.perf_counter()
        try:
            if kind == "forward":
                forward_call(client, image, k, c, identical, tally)
            elif kind == "schedules":
                client.predict(["linear", "sigmoid"], 1000, api_name="/schedules")
            else:
                sample_call(client, k, identical, tally)
            tally.latency(kind, time.perf_counter() - t0)
        except AppError as err:  # a clean refusal (e.g. queue full) is allowed; anything else is not
            tally.refused(kind, err)


def run_load(
    url: str,
    users: int = 16,
    calls: int = 6,
    image: str | None = None,
    deadline_s: float = 600,
    pid: int | None = None,
) -> dict:
    """``users`` concurrent users of ``calls`` calls each, stopping at ``deadline_s``: completed and refused calls,
    latencies per endpoint, the server's peak RSS and how many distinct results identical requests got."""
    peaks = PeakWatch(pid, period=0.05)  # the server (this process when it serves in-process)
    if image is None:
        image = noise_png(str(TMP / "ddpm-load.png"), 0, (256, 320, 3))
    tally = Tally()
    t_end = time.monotonic() + deadline_s
    threads = [threading.Thread(target=load_user, args=(url, k, calls, image, t_end, tally)) for k in range(users)]
    peaks.start()
    t0 = time.perf_counter()
    run_all(threads)
    peaks.stop()
    return {
        "users": users,
        "calls_per_user": calls,
        "wall_s": time.perf_counter() - t0,
        "completed": sum(len(v) for v in tally.lat.values()),
        "refused": len(tally.errors),
        "errors": tally.errors[:5],
        "latency_s": latency_summary(tally.lat, (50, 90, 99)),
        "peak_rss_mb": peaks.rss / 2**20,
        "identical_forward_variants": len(tally.digests["forward-identical"]),
        "identical_sample_variants": len(tally.digests["sample-identical"]),
    }


HOSTILE = "198.51.100.7"


def huge_tiff(k: int) -> str:
    """A 40-megapixel 8-bit RGB TIFF (the pixel limit), deflated to a few MB (under the 30 MB upload limit)."""
    import numpy as np
    from PIL import Image

    path = str(TMP / f"ddpm-huge-{k}.tif")
    if not Path(path).exists():
        ramp = (np.arange(8000, dtype=np.uint16)[None, :] * 255 // 7999 + 40 * k) % 256
        Image.fromarray(
            np.repeat(np.broadcast_to(ramp.astype(np.uint8)[:, :, None], (5000, 8000, 1)), 3, axis=2)
        ).save(path, compression="tiff_deflate")
    return path


def flood_joins(url: str, ids: dict, t_end: float, flood: dict) -> None:
    """Until ``t_end``, joins the queue from HOSTILE without ever listening, alternating 1000-step sampling at batch
    16 and forward; counts the accepted and refused joins in ``flood``."""
    import uuid

    import httpx

    # a raw join carries every input, the language State's null included
    heavy = ["ddpm-mnist-28", "DDPM (all T steps)", 1000, 0.0, "model default", 16, 0, None]
    with httpx.Client(headers={"X-Forwarded-For": HOSTILE}, timeout=10) as http:
        k = 0
        while time.monotonic() < t_end:
            fn, data = (ids["sample"], heavy) if k % 2 == 0 else (ids["forward"], [None, 5, "linear", 1000, 0, None])
            body = {
                "data": data,
                "fn_index": fn,
                "session_hash": uuid.uuid4().hex[:10],
                "event_data": None,
                "trigger_id": None,
            }
            ok = http.post(url + "gradio_api/queue/join", json=body).status_code == 200
            flood["accepted" if ok else "refused"] += 1
            k += 1
            time.sleep(0.005)


def polite_user(url: str, t_end: float, tally: Tally) -> None:
    """Until ``t_end``, one well-behaved client cycling /forward (three in five calls), /schedules and /sample."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    image = noise_png(str(TMP / "ddpm-hostile.png"), 1, (384, 512, 3))
    client = client_for(url, "polite", "192.0.2.10")
    c = 0
    while time.monotonic() < t_end:
        kind = ("forward", "forward", "schedules", "forward", "sample")[c % 5]
        t0 = time.perf_counter()
        try:
            if kind == "forward":
                client.predict(handle_file(image), (c * 97) % 1000, "linear", 1000, c, api_name="/forward")
            elif kind == "schedules":
                client.predict(["linear", "cosine"], 1000, api_name="/schedules")
            else:
                client.predict(
                    "ddpm-mnist-28", "DDPM (fewer steps)", 10, 0.0, "model default", 2, c, api_name="/sample"
                )
            tally.latency(kind, time.perf_counter() - t0)
        except AppError as err:
            tally.refused(kind, err)
        c += 1


def huge_upload(url: str, k: int, path: str, lat: list[float], tally: Tally) -> None:
    """Upload ``k``: the TIFF at ``path`` to /forward; its latency goes to ``lat``, a refusal to ``tally``."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = client_for(url, f"huge{k}", f"192.0.2.{100 + k}")
    t0 = time.perf_counter()
    try:
        client.predict(handle_file(path), 100, "linear", 1000, 0, api_name="/forward")
        lat.append(time.perf_counter() - t0)
    except AppError as err:
        tally.refused("huge upload", err)


def run_hostile(
    url: str, seconds: float = 60, users: int = 0, huge: int = 0, cache: Path | None = None, pid: int | None = None
) -> dict:
    """The flood of unlistened joins, a polite client, and optionally ``users`` ordinary users and ``huge``
    40-megapixel uploads, all at once for ``seconds``."""
    import httpx

    from ui.files import cache_root, folder_bytes

    cache = cache or cache_root()
    deps = httpx.get(url + "config", timeout=10).json()["dependencies"]
    ids = {d.get("api_name"): d["id"] for d in deps}
    peaks = PeakWatch(pid, period=0.1, disk_bytes=lambda: folder_bytes(cache))  # the server and its cache
    huge_paths = [huge_tiff(k) for k in range(huge)]  # made before the clock starts
    t_end = time.monotonic() + seconds
    flood = {"accepted": 0, "refused": 0}
    polite = Tally()  # the huge uploads' refusals count with the polite client's
    huge_lat: list[float] = []
    background = {}
    threads = [
        threading.Thread(target=flood_joins, args=(url, ids, t_end, flood)),
        threading.Thread(target=polite_user, args=(url, t_end, polite)),
    ]
    threads += [
        threading.Thread(target=huge_upload, args=(url, k, path, huge_lat, polite))
        for k, path in enumerate(huge_paths)
    ]
    if users:
        threads.append(
            threading.Thread(
                target=lambda: background.update(run_load(url, users, calls=10**6, deadline_s=seconds, pid=pid))
            )
        )
    peaks.start()
    run_all(threads)
    peaks.stop()
    return {
        "seconds": seconds,
        "flood": flood,
        "polite_errors": polite.errors[:5],
        "polite_refused": len(polite.errors),
        "polite_latency_s": latency_summary(polite.lat, (50, 95)),
        "huge_uploads": {"n": huge, "completed": len(huge_lat), "max_s": max(huge_lat) if huge_lat else None},
        "background_users": {k: background.get(k) for k in ("users", "completed", "refused", "errors")}
        if users
        else None,
        "peak_rss_mb": peaks.rss / 2**20,
        "peak_cache_mb": peaks.disk / 2**20,
    }


def _until_started(job, t0: float, timeout: float = 600) -> float:
    """Seconds from ``t0`` until ``job`` (a gradio_client Job) reports its first reverse step, or finishes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        units = status.progress_data or []
        if any((u.index or 0) >= 1 and (u.unit or "") in ("steps", "步") for u in units) or job.done():
            return time.perf_counter() - t0
        time.sleep(0.05)
    return float("inf")


def polite_default(url: str, k: int, t_end: float, waits: list[float], tally: Tally) -> None:
    """Polite visitor ``k``: the Sample tab's default request (gradio_client fills in the page's defaults), one after
    another until ``t_end``; each request's wait until its first step goes to ``waits``, its latency to ``tally``."""
    from gradio_client.exceptions import AppError

    client = client_for(url, f"polite{k}", f"192.0.2.{20 + k}")
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        try:
            job = client.submit(api_name="/sample")
            waits.append(_until_started(job, t0))
            job.result(timeout=600)
            tally.latency("sample (default)", time.perf_counter() - t0)
        except AppError as err:
            tally.refused("sample", err)


def hostile_visitor(url: str, t_end: float, counts: dict) -> None:
    """Until ``t_end``: two of the costliest admitted /sample requests always running (the visitor's share), REST calls
    that each open a fresh session, and 29 MB uploads, all from one address."""
    import httpx

    client = client_for(url, "hostile", HOSTILE)
    costliest = ("ddpm-mnist-28", "DDPM (fewer steps)", 500, 0.0, "model default", 16, 0)  # 3,021 GFLOP
    jobs: list = []
    with httpx.Client(headers={"X-Forwarded-For": HOSTILE}, timeout=60) as http:
        while time.monotonic() < t_end:
            jobs = [j for j in jobs if not j.done()]
            while len(jobs) < 2:
                jobs.append(client.submit(*costliest, api_name="/sample"))
                counts["heavy"] += 1
            r = http.post(f"{url}gradio_api/call/schedules", json={"data": [["linear"], 100]})
            counts["fresh_sessions"] += r.status_code == 200
            blob = os.urandom(29 * 2**20)  # new bytes each time: gradio stores uploads by content
            up = http.post(f"{url}gradio_api/upload", files={"files": ("big.png", blob, "image/png")})
            counts["uploads" if up.status_code == 200 else "uploads_refused"] += 1
            time.sleep(0.5)
    for j in jobs:
        try:
            j.cancel()
        except Exception:  # the run is over: a cancel refused or timed out changes no figure
            pass
    client.close()


def run_fair(url: str, seconds: float, users: int, cache: Path, pid: int | None) -> dict:
    """One hostile visitor and ``users`` polite ones making the default request, for ``seconds``."""
    from ui.files import folder_bytes

    peaks = PeakWatch(pid, period=0.2, disk_bytes=lambda: folder_bytes(cache))
    t_end = time.monotonic() + seconds
    waits: list[float] = []
    tally = Tally()
    counts = {"heavy": 0, "fresh_sessions": 0, "uploads": 0, "uploads_refused": 0}
    threads = [threading.Thread(target=hostile_visitor, args=(url, t_end, counts))]
    threads += [threading.Thread(target=polite_default, args=(url, k, t_end, waits, tally)) for k in range(users)]
    peaks.start()
    run_all(threads)
    peaks.stop()
    return {
        "seconds": seconds,
        "polite_users": users,
        "polite_requests": len(waits),
        "polite_wait_s": {"p50": pct(waits, 50), "p95": pct(waits, 95), "max": max(waits, default=float("nan"))},
        "polite_latency_s": latency_summary(tally.lat, (50, 95)),
        "polite_refused": len(tally.errors),
        "polite_errors": tally.errors[:5],
        "hostile": counts,
        "peak_rss_mb": peaks.rss / 2**20,
        "peak_cache_mb": peaks.disk / 2**20,
    }


def serve(port: int, cache: str, warm: bool = False) -> subprocess.Popen:
    """The app in a process of its own (so that the clients here neither share its interpreter lock nor count
    in its memory), as behind the Spaces proxy: users are told apart by X-Forwarded-For. ``warm``: after the
    warm-up ``python app.py`` runs before serving."""
    code = (
        "import app; app.GUARD.trust_proxy = True; "
        f"app.launch(warm={warm}, server_name='127.0.0.1', server_port={port}, quiet=True)"
    )
    env = {**os.environ, "GRADIO_TEMP_DIR": cache, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the app exited during start-up")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start within 180 s")


def main():
    import tempfile

    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--calls", type=int, default=6)
    p.add_argument("--hostile", action="store_true")
    p.add_argument("--fair", action="store_true")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--huge", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    cache = tempfile.mkdtemp(prefix="ddpm-load-cache-")  # the server's gradio cache, measured on its own
    port = free_port()
    server = serve(port, cache, warm=args.fair)
    url = f"http://127.0.0.1:{port}/"
    try:
        if args.fair:
            r = run_fair(url, args.seconds, args.users, Path(cache), pid=server.pid)
        elif args.hostile:
            r = run_hostile(url, args.seconds, args.users, args.huge, cache=Path(cache), pid=server.pid)
        else:
            r = run_load(url, args.users, args.calls, pid=server.pid)
    finally:
        server.terminate()
        server.wait(30)
    if args.json:
        import json
        import platform

        meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average_at_end": os.getloadavg()}
        Path(args.json).write_text(json.dumps({**vars(args), **meta, "results": r}, indent=1) + "\n")
    if args.fair:
        w, lat = r["polite_wait_s"], r["polite_latency_s"].get("sample (default)", {})
        print(
            f"{r['polite_users']} polite visitors, {r['polite_requests']} default requests: wait p50 {w['p50']:.2f} s, "
            f"p95 {w['p95']:.2f} s, max {w['max']:.2f} s; latency p50 {lat.get('p50', float('nan')):.1f} s, p95 "
            f"{lat.get('p95', float('nan')):.1f} s; refused {r['polite_refused']}; hostile {r['hostile']}; "
            f"peak RSS {r['peak_rss_mb']:.0f} MB; peak cache folder {r['peak_cache_mb']:.0f} MB"
        )
        return
    if args.hostile:
        print(
            f"flood: {r['flood']['accepted']} joins accepted, {r['flood']['refused']} refused; polite refusals: {r['polite_refused']}; huge uploads "
            f"{r['huge_uploads']['completed']}/{r['huge_uploads']['n']}; peak RSS {r['peak_rss_mb']:.0f} MB; "
            f"peak cache folder {r['peak_cache_mb']:.0f} MB"
        )
        print("| polite endpoint | n | p50 s | p95 s | max s |\n|---|---|---|---|---|")
        for k, v in sorted(r["polite_latency_s"].items()):
            print(f"| /{k} | {v['n']} | {v['p50']:.2f} | {v['p95']:.2f} | {v['max']:.2f} |")
        return
    print(
        f"{r['users']} users x {r['calls_per_user']} calls: {r['completed']} completed, {r['refused']} refused, "
        f"{r['wall_s']:.1f} s wall, peak RSS {r['peak_rss_mb']:.0f} MB; identical requests gave "
        f"{r['identical_forward_variants']} forward / {r['identical_sample_variants']} sample variant(s)"
    )
    print("| endpoint | n | p50 s | p90 s | p99 s | max s |\n|---|---|---|---|---|---|")
    for k, v in sorted(r["latency_s"].items()):
        print(f"| /{k} | {v['n']} | {v['p50']:.2f} | {v['p90']:.2f} | {v['p99']:.2f} | {v['max']:.2f} |")
    for e in r["errors"]:
        print("refused:", e)


if __name__ == "__main__":
    main()
