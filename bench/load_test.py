"""A bounded load test of the Space on 127.0.0.1: concurrent gradio_client users mixing every endpoint.

    python bench/load_test.py --users 16 --calls 6
    python bench/load_test.py --hostile --seconds 60 --users 24 --huge 8

Starts the app in this process, then each user thread makes ``--calls`` calls, cycling forward / schedules /
sample (10 steps, batch 2) / forward; a quarter of the users send identical requests (same image, same seed).
Reports completed/refused counts, latency percentiles per endpoint and the process's peak RSS.

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
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT  # offline environment, the repo on the import path


def user_address(k: int) -> str:
    return f"203.0.113.{k % 250 + 1}"


def run_load(
    url: str,
    users: int = 16,
    calls: int = 6,
    image: str | None = None,
    deadline_s: float = 600,
    pid: int | None = None,
) -> dict:
    import numpy as np
    import psutil
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    proc = psutil.Process(pid)  # the server (this process when it serves in-process)
    peak = {"rss": proc.memory_info().rss}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.05)

    if image is None:
        image = "/tmp/ddpm-load.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(image)
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    digests: dict[str, set] = {"forward-identical": set(), "sample-identical": set()}
    lock = threading.Lock()
    t_end = time.monotonic() + deadline_s

    def user(k: int):
        client = Client(
            url,
            verbose=False,
            analytics_enabled=False,
            download_files=f"/tmp/ddpm-load-dl/{k}",
            headers={"X-Forwarded-For": user_address(k)},
        )
        identical = k % 4 == 0
        for c in range(calls):
            if time.monotonic() > t_end:
                return
            kind = ("forward", "schedules", "sample", "forward")[c % 4]
            t0 = time.perf_counter()
            try:
                if kind == "forward":
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
                        with lock:
                            digests["forward-identical"].add(hashlib.sha256(data).hexdigest())
                elif kind == "schedules":
                    client.predict(["linear", "sigmoid"], 1000, api_name="/schedules")
                else:
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
                        with lock:
                            digests["sample-identical"].add(
                                tuple(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths)
                            )
                with lock:
                    lat.setdefault(kind, []).append(time.perf_counter() - t0)
            except AppError as err:  # a clean refusal (e.g. queue full) is allowed; anything else is not
                with lock:
                    errors.append(f"{kind}: {err}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    watcher.join()

    def pct(v, q):
        return float(np.percentile(v, q)) if v else float("nan")

    return {
        "users": users,
        "calls_per_user": calls,
        "wall_s": time.perf_counter() - t0,
        "completed": sum(len(v) for v in lat.values()),
        "refused": len(errors),
        "errors": errors[:5],
        "latency_s": {
            k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v)}
            for k, v in lat.items()
        },
        "peak_rss_mb": peak["rss"] / 2**20,
        "identical_forward_variants": len(digests["forward-identical"]),
        "identical_sample_variants": len(digests["sample-identical"]),
    }


HOSTILE = "198.51.100.7"


def huge_tiff(k: int) -> str:
    """A 40-megapixel 8-bit RGB TIFF (the pixel limit), deflated to a few MB (under the 30 MB upload limit)."""
    import numpy as np
    from PIL import Image

    path = f"/tmp/ddpm-huge-{k}.tif"
    if not Path(path).exists():
        ramp = (np.arange(8000, dtype=np.uint16)[None, :] * 255 // 7999 + 40 * k) % 256
        Image.fromarray(
            np.repeat(np.broadcast_to(ramp.astype(np.uint8)[:, :, None], (5000, 8000, 1)), 3, axis=2)
        ).save(path, compression="tiff_deflate")
    return path


def run_hostile(
    url: str, seconds: float = 60, users: int = 0, huge: int = 0, cache: Path | None = None, pid: int | None = None
) -> dict:
    """The flood of unlistened joins, a polite client, and optionally ``users`` ordinary users and ``huge``
    40-megapixel uploads, all at once for ``seconds``."""
    import uuid

    import httpx
    import numpy as np
    import psutil
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    from ui.files import cache_root, folder_bytes

    cache = cache or cache_root()
    deps = httpx.get(url + "config", timeout=10).json()["dependencies"]
    ids = {d.get("api_name"): d["id"] for d in deps}
    proc = psutil.Process(pid)  # the server
    peak = {"rss": proc.memory_info().rss, "disk": 0}
    huge_paths = [huge_tiff(k) for k in range(huge)]  # made before the clock starts
    stop = threading.Event()
    t_end = time.monotonic() + seconds
    flood = {"accepted": 0, "refused": 0}
    polite_lat: dict[str, list[float]] = {}
    polite_errors: list[str] = []
    huge_lat: list[float] = []

    def watch():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            peak["disk"] = max(peak["disk"], folder_bytes(cache))
            time.sleep(0.1)

    def attacker():
        heavy = ["ddpm-mnist-28", "DDPM (all T steps)", 1000, 0.0, "model default", 16, 0]
        with httpx.Client(headers={"X-Forwarded-For": HOSTILE}, timeout=10) as http:
            k = 0
            while time.monotonic() < t_end:
                fn, data = (ids["sample"], heavy) if k % 2 == 0 else (ids["forward"], [None, 5, "linear", 1000, 0])
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

    def polite():
        image = "/tmp/ddpm-hostile.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(image)
        client = Client(
            url,
            verbose=False,
            analytics_enabled=False,
            download_files="/tmp/ddpm-load-dl/polite",
            headers={"X-Forwarded-For": "192.0.2.10"},
        )
        c = 0
        while time.monotonic() < t_end:
            kind = ("forward", "forward", "schedules", "forward", "sample")[c % 5]
            t0 = time.perf_counter()
            try:
                if kind == "forward":
                    client.predict(handle_file(image), (c * 97) % 1000, "linear", 1000, c, api_name="/forward")
                elif kind == "schedules":
                    client.predict(["linear", "squaredcos_cap_v2"], 1000, api_name="/schedules")
                else:
                    client.predict(
                        "ddpm-mnist-28", "DDPM (fewer steps)", 10, 0.0, "model default", 2, c, api_name="/sample"
                    )
                polite_lat.setdefault(kind, []).append(time.perf_counter() - t0)
            except AppError as err:
                polite_errors.append(f"{kind}: {err}")
            c += 1

    def huge_upload(k: int):
        path = huge_paths[k]
        client = Client(
            url,
            verbose=False,
            analytics_enabled=False,
            download_files=f"/tmp/ddpm-load-dl/huge{k}",
            headers={"X-Forwarded-For": f"192.0.2.{100 + k}"},
        )
        t0 = time.perf_counter()
        try:
            client.predict(handle_file(path), 100, "linear", 1000, 0, api_name="/forward")
            huge_lat.append(time.perf_counter() - t0)
        except AppError as err:
            polite_errors.append(f"huge upload: {err}")

    background = {}
    threads = [
        threading.Thread(target=watch, daemon=True),
        threading.Thread(target=attacker),
        threading.Thread(target=polite),
    ]
    threads += [threading.Thread(target=huge_upload, args=(k,)) for k in range(huge)]
    if users:
        threads.append(
            threading.Thread(
                target=lambda: background.update(run_load(url, users, calls=10**6, deadline_s=seconds, pid=pid))
            )
        )
    for th in threads:
        th.start()
    for th in threads[1:]:
        th.join()
    stop.set()

    def pct(v, q):
        return float(np.percentile(v, q)) if v else float("nan")

    return {
        "seconds": seconds,
        "flood": flood,
        "polite_errors": polite_errors[:5],
        "polite_refused": len(polite_errors),
        "polite_latency_s": {
            k: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "max": max(v)} for k, v in polite_lat.items()
        },
        "huge_uploads": {"n": huge, "completed": len(huge_lat), "max_s": max(huge_lat) if huge_lat else None},
        "background_users": {k: background.get(k) for k in ("users", "completed", "refused", "errors")}
        if users
        else None,
        "peak_rss_mb": peak["rss"] / 2**20,
        "peak_cache_mb": peak["disk"] / 2**20,
    }


def serve(port: int, cache: str) -> subprocess.Popen:
    """The app in a process of its own (so that the clients here neither share its interpreter lock nor count
    in its memory), as behind the Spaces proxy: users are told apart by X-Forwarded-For."""
    code = (
        "import app; app.GUARD.trust_proxy = True; "
        f"app.launch(warm=False, server_name='127.0.0.1', server_port={port}, quiet=True)"
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
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--huge", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    cache = tempfile.mkdtemp(prefix="ddpm-load-cache-")  # the server's gradio cache, measured on its own
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve(port, cache)
    url = f"http://127.0.0.1:{port}/"
    try:
        if args.hostile:
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
