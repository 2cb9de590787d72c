"""A bounded load test of the Space on 127.0.0.1: concurrent gradio_client users mixing every endpoint.

    python bench/load_test.py --users 16 --calls 6

Starts the app in this process, then each user thread makes ``--calls`` calls, cycling forward / schedules /
sample (10 steps, batch 2) / forward; a quarter of the users send identical requests (same image, same seed).
Reports completed/refused counts, latency percentiles per endpoint and the process's peak RSS.
Traffic goes to 127.0.0.1 only; the number of requests and the time are bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_load(url: str, users: int = 16, calls: int = 6, image: str | None = None, deadline_s: float = 600) -> dict:
    import numpy as np
    import psutil
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    proc = psutil.Process()
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
        client = Client(url, verbose=False, analytics_enabled=False, download_files=f"/tmp/ddpm-load-dl/{k}")
        identical = k % 4 == 0
        for c in range(calls):
            if time.monotonic() > t_end:
                return
            kind = ("forward", "schedules", "sample", "forward")[c % 4]
            t0 = time.perf_counter()
            try:
                if kind == "forward":
                    out = client.predict(handle_file(image), 0 if identical else (k * 37 + c * 101) % 1000, "linear", 1000,
                                         0 if identical else k, api_name="/forward")
                    data = Path(out[0]).read_bytes()
                    Image.open(io.BytesIO(data)).load()  # arrives whole: decodes completely
                    if identical:
                        with lock:
                            digests["forward-identical"].add(hashlib.sha256(data).hexdigest())
                elif kind == "schedules":
                    client.predict(["linear", "sigmoid"], 1000, api_name="/schedules")
                else:
                    out = client.predict("ddpm-mnist-28", "DDPM (fewer steps)", 10, 0.0, "model default", 2,
                                         0 if identical else k, api_name="/sample")
                    paths = [g["image"] for g in out[0]]
                    for p in paths:
                        Image.open(p).load()
                    if identical:
                        with lock:
                            digests["sample-identical"].add(tuple(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths))
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
        "users": users, "calls_per_user": calls, "wall_s": time.perf_counter() - t0,
        "completed": sum(len(v) for v in lat.values()), "refused": len(errors), "errors": errors[:5],
        "latency_s": {k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99), "max": max(v)} for k, v in lat.items()},
        "peak_rss_mb": peak["rss"] / 2**20,
        "identical_forward_variants": len(digests["forward-identical"]),
        "identical_sample_variants": len(digests["sample-identical"]),
    }


def main():
    import app

    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--calls", type=int, default=6)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_demo()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        r = run_load(f"http://127.0.0.1:{port}/", args.users, args.calls)
    finally:
        demo.close()
    print(f"{r['users']} users x {r['calls_per_user']} calls: {r['completed']} completed, {r['refused']} refused, "
          f"{r['wall_s']:.1f} s wall, peak RSS {r['peak_rss_mb']:.0f} MB; identical requests gave "
          f"{r['identical_forward_variants']} forward / {r['identical_sample_variants']} sample variant(s)")
    print("| endpoint | n | p50 s | p90 s | p99 s | max s |\n|---|---|---|---|---|---|")
    for k, v in sorted(r["latency_s"].items()):
        print(f"| /{k} | {v['n']} | {v['p50']:.2f} | {v['p90']:.2f} | {v['p99']:.2f} | {v['max']:.2f} |")
    for e in r["errors"]:
        print("refused:", e)


if __name__ == "__main__":
    main()
