"""The first uploads after a start, with a full cache folder on a cold disk.

    python bench/cold_cache.py --files 30000 --json bench/results/cold-cache.json

Fills a fresh gradio cache folder with ``--files`` old results of 16 KB (480 MB at the default, under the 1 GB
cap), drops the kernel's page cache when allowed (root), and times one walk of the folder as the disk cap measures
it: what an upload once waited for on the server's event loop, with every other request behind it. Then drops the
page cache again, starts the app in a process of its own on that folder (it walks the folder once before serving),
and times its first four uploads, each beside a GET of the page's config, as a visitor arriving first would see.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from load_test import serve

from common import TMP, free_port, machine


def fill(root: Path, n: int, size: int = 16 * 2**10) -> None:
    blob = os.urandom(size)
    for k in range(n):
        folder = root / "ddpm-explorer" / f"{k:08x}"
        folder.mkdir(parents=True)
        f = folder / "image.png"
        f.write_bytes(blob)
        os.utime(f, (1e9 + k, 1e9 + k))


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main():
    import httpx

    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=30000)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    cache = TMP / "ddpm-cold-cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    fill(cache, args.files)
    from ui.files import folder_bytes

    cold = drop_page_cache()
    t0 = time.perf_counter()
    used = folder_bytes(cache)
    walk_s = time.perf_counter() - t0

    drop_page_cache()
    port = free_port()
    t0 = time.perf_counter()
    proc = serve(port, str(cache))
    start_s = time.perf_counter() - t0
    url = f"http://127.0.0.1:{port}/"
    uploads, pages = [], []
    try:
        for k in range(4):
            res = {}

            def upload(k=k, res=res):
                t = time.perf_counter()
                r = httpx.post(
                    url + "gradio_api/upload", files={"files": (f"u{k}.png", os.urandom(2**20))}, timeout=120
                )
                res["s"], res["status"] = time.perf_counter() - t, r.status_code

            sender = threading.Thread(target=upload)
            sender.start()
            time.sleep(0.05)
            t = time.perf_counter()
            assert httpx.get(url + "config", timeout=120).status_code == 200
            pages.append(time.perf_counter() - t)
            sender.join()
            assert res["status"] == 200, res
            uploads.append(res["s"])
    finally:
        proc.terminate()
        proc.wait(30)
        subprocess.run(["rm", "-rf", str(cache)], check=True)

    out = {
        "machine": machine(),
        "files": args.files,
        "folder_mb": round(used / 2**20, 1),
        "page_cache_dropped": cold,
        "walk_cold_s": round(walk_s, 2),
        "app_start_s": round(start_s, 2),
        "first_uploads_s": [round(s, 3) for s in uploads],
        "config_beside_them_s": [round(s, 3) for s in pages],
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
