"""Sampling CLI throughput: 1 process x T threads against P processes x T/P threads (torchrun, gloo), same images.

    python bench/multiprocess_sampling.py                      # 1 x 2 threads vs 2 x 1, --num 64 --batch 16 --steps 20
    python bench/multiprocess_sampling.py --repeats 5 --json bench/results/multiprocess-sampling.json

Each run is the whole command, ``python -m ddpm_core.sample --model ddpm-mnist-28 --num 64 --batch 16 --steps 20``
into a fresh folder (or the same under ``torchrun --nproc_per_node P``), and the configurations alternate so that
drift in the machine's speed hits both alike. Two figures per run, medians reported:

- end to end: images / the command's wall time (process start, imports, model load, the fast path's trace included);
- sampling: images / the slowest process's time in its sampling loop (from ``sampling.json``), start-up excluded.

The load average is read before every run: on a shared machine other processes take cores from both alike, but
not equally: a process whose OpenMP threads wait on each other at every operator's barrier loses far more to a
descheduled thread than single-threaded processes do. ``--json PATH`` appends the session to the file's list.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(processes: int, threads: int, args, out: Path, port: int) -> dict:
    cli = [
        "-m",
        "ddpm_core.sample",
        "--model",
        args.model,
        "--num",
        str(args.num),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--out",
        str(out),
    ]
    cmd = (
        [sys.executable, *cli]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            *cli[:2],
            "--",
            *cli[2:],
        ]
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(ROOT),
    }
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rec = json.loads((out / "sampling.json").read_text())
    assert rec["num_processes"] == processes and rec["images"] == args.num
    loop = max(r["seconds"] for r in rec["ranks"])
    return {
        "processes": processes,
        "threads": threads,
        "wall_s": round(wall, 3),
        "loop_s": loop,
        "images_per_s_end_to_end": round(args.num / wall, 3),
        "images_per_s_sampling": round(args.num / loop, 3),
        "load_1min_before": round(load, 2),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ddpm-mnist-28")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="in total: the single process gets all, each of P gets T/P")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=29571)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def alternating_runs(configs: list[tuple[int, int]], args) -> list[dict]:
    """``args.repeats`` rounds of every (processes, threads) configuration in turn, each printed as it ends."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for n, t in configs:
                runs.append(run(n, t, args, Path(tmp) / f"{n}x{t}-{i}", args.port + i))
                print(json.dumps(runs[-1]), flush=True)
    return runs


def summarize(configs: list[tuple[int, int]], runs: list[dict]) -> list[dict]:
    """Per configuration: the median throughputs, and their ratios to the first (single-process) configuration."""
    summary = []
    for n, t in configs:
        mine = [r for r in runs if r["processes"] == n]
        summary.append(
            {
                "config": f"{n} process{'es' if n > 1 else ''} x {t} thread{'s' if t > 1 else ''}",
                "images_per_s_end_to_end": statistics.median(r["images_per_s_end_to_end"] for r in mine),
                "images_per_s_sampling": statistics.median(r["images_per_s_sampling"] for r in mine),
            }
        )
    base = summary[0]
    for s in summary:
        s["end_to_end_vs_1_process"] = round(s["images_per_s_end_to_end"] / base["images_per_s_end_to_end"], 3)
        s["sampling_vs_1_process"] = round(s["images_per_s_sampling"] / base["images_per_s_sampling"], 3)
    return summary


def print_summary(summary: list[dict], load_range: list[float]) -> None:
    print("\n| config | images/s end to end | images/s sampling |\n|---|---|---|")
    for s in summary:
        print(
            f"| {s['config']} | {s['images_per_s_end_to_end']:.2f} ({s['end_to_end_vs_1_process']:.2f}x) | "
            f"{s['images_per_s_sampling']:.2f} ({s['sampling_vs_1_process']:.2f}x) |"
        )
    print(f"load average (1 min) before the runs: {load_range}")


def append_session(path: Path, result: dict) -> None:
    """Adds ``result``, stamped with the time it finished, to the list of sessions in the JSON file at ``path``."""
    # appended, not replaced: runs on a loaded and on a quiet machine side by side
    path.parent.mkdir(parents=True, exist_ok=True)
    sessions = json.loads(path.read_text())["sessions"] if path.exists() else []
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path.write_text(json.dumps({"sessions": sessions + [result]}, indent=2) + "\n")


def main(argv=None):
    args = parse_args(argv)
    configs = [(1, args.threads), (args.processes, max(1, args.threads // args.processes))]
    runs = alternating_runs(configs, args)
    summary = summarize(configs, runs)
    import torch

    result = {
        "command": f"python -m ddpm_core.sample --model {args.model} --num {args.num} --batch {args.batch} "
        f"--steps {args.steps}",
        "repeats": args.repeats,
        "summary": summary,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_1min_range": [min(r["load_1min_before"] for r in runs), max(r["load_1min_before"] for r in runs)],
        },
    }
    print_summary(summary, result["machine"]["load_1min_range"])
    if args.json:
        append_session(args.json, result)
    return result


if __name__ == "__main__":
    main()
