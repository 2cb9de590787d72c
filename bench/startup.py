"""What a visitor waits on, cold and warm: start-up of the Space's process and the default sampling request.

    python bench/startup.py [--steps N] [--batch B]
    python bench/startup.py --server   # the Space as a visitor meets it: `python app.py`, then two Generate clicks

In a fresh process: importing and building the app, loading the bundled model, then the default request
(bundled model, batch 8, the device's default steps) twice: first on a cold fast path (its one-off set-up, the
TorchScript trace on a CPU or the CUDA graph capture on a GPU, included), then warm. At start-up the app pays the
set-up before it serves (`app.warm_up_default`), so the first visitor meets the warm figure.
"""

import argparse
import os
import subprocess
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402

import common  # noqa: E402, F401 - offline environment, the repo on the import path
from ddpm_core.checkpoints import BUNDLED_DEFAULT, load_checkpoint  # noqa: E402
from ddpm_core.sampling import generate, pick_device  # noqa: E402

try:
    import app  # noqa: E402
except ImportError:  # a GPU box with torch and diffusers only: time the model and the requests, not the UI
    app = None


def main():
    device, dtype = pick_device()
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=app.DEFAULT_STEPS if app else (100 if device.type == "cpu" else 1000))
    p.add_argument("--batch", type=int, default=app.DEFAULT_BATCH if app else 8)
    p.add_argument("--server", action="store_true", help="time `python app.py` and its first two sample requests")
    args = p.parse_args()
    if args.server:
        return server_requests(args.steps, args.batch)
    t_import = time.perf_counter() - T0
    t = time.perf_counter()
    if app:
        app.build_demo()
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    model = load_checkpoint(BUNDLED_DEFAULT, device, dtype)
    t_load = time.perf_counter() - t
    rows = []
    for label in ("cold fast path (first request, set-up included)", "warm fast path (every later request)"):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = generate(model, batch_size=args.batch, seed=0, num_inference_steps=args.steps)
        rows.append((label, time.perf_counter() - t, res.setup_seconds, res.path))
    dev = torch.cuda.get_device_name() if model.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"#### start-up and the default request ({BUNDLED_DEFAULT}, batch {args.batch}, {args.steps} DDPM steps), {dev}\n"
    )
    print(
        f"| stage | s |\n|---|---|\n| import torch, ddpm_core{', gradio, app' if app else ' (no gradio here)'} | {t_import:.1f} |"
        + (f"\n| build the Blocks | {t_build:.1f} |" if app else "")
        + f"\n| load the bundled model | {t_load:.2f} |"
    )
    for label, secs, setup, path in rows:
        print(f"| {label} | {secs:.2f} (set-up {setup:.2f}; {path}) |")


def server_requests(steps: int, batch: int, port: int = 7899) -> None:
    """`python app.py` in a process of its own, as a Space starts it (the fast path's warm-up before it serves);
    as soon as the page answers, the Sample tab's default request (the button's first click), then the same with
    another seed (a second visitor), both through the real server with gradio_client."""
    import httpx
    from gradio_client import Client

    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=common.ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            try:
                if httpx.get(url + "config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if proc.poll() is not None or time.perf_counter() - t0 > 300:
                raise RuntimeError("the app did not start")
        t_page = time.perf_counter() - t0
        client = Client(url, verbose=False)
        rows = []
        for label, seed in (("first Generate (as the page appears)", 0), ("second Generate", 1)):
            t = time.perf_counter()
            client.predict(
                BUNDLED_DEFAULT, "DDPM (fewer steps)", steps, 0.0, "model default", batch, seed, api_name="/sample"
            )
            rows.append((label, time.perf_counter() - t))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"#### the Space's first requests ({BUNDLED_DEFAULT}, batch {batch}, {steps} DDPM steps), `python app.py`\n")
    print(f"| stage | s |\n|---|---|\n| start until the page answers | {t_page:.1f} |")
    for label, secs in rows:
        print(f"| {label} | {secs:.2f} |")
    print(f"| first / second | {rows[0][1] / rows[1][1]:.2f} |")


if __name__ == "__main__":
    main()
