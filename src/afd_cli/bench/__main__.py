"""``python -m afd_cli.bench``: run the sections, print them, write the JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import TRAINER_CLIENTS, console
from . import __doc__ as DOC
from .checkpoint import _print_checkpoint, checkpoint_cost
from .codec import _print_codec, codec_sizes
from .loop import _print_afd_vs_bare, afd_vs_researcher
from .rounds import _print_rounds, child, rounds_in_subprocesses
from .scale import SCALE_CLIENTS, _print_scale, cpu_model, scale_child, scale_in_subprocesses
from .torchrun import MODELS, _print_torchrun, torchrun_cost
from .trainers import _print_trainers, trainer_throughput


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m afd_cli.bench", description=(DOC or "").split("\n")[0]
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    ap.add_argument("--only", default="a,b,c,d,e,f,g", help="sections, e.g. a,c (h: torchrun)")
    ap.add_argument(
        "--clients",
        default=",".join(map(str, SCALE_CLIENTS)),
        help="(g): federation sizes, e.g. 1000,100000,1000000",
    )
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS), help="(h): the model")
    ap.add_argument("--child", nargs=4, metavar=("STRATEGY", "COMPRESSION", "DEVICE", "ROUNDS"))
    ap.add_argument("--scale-child", nargs=2, type=int, metavar=("CLIENTS", "ROUNDS"))
    args = ap.parse_args(argv)
    if args.child:
        s, c, d, n = args.child
        print(json.dumps(child(s, c, d, int(n))), flush=True)
        return 0
    if args.scale_child:
        print(json.dumps(scale_child(*args.scale_child)), flush=True)
        return 0

    only = set(args.only.split(","))
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "setup": "mnist iid, 100 clients, 10 per round, E=1, B=10, lr 0.05"
        if only - {"g"}
        else f"synthetic, {args.clients} clients, 100 per round, dgc",
        "cpu": cpu_model(),
        "load_avg": os.getloadavg(),
    }
    console.print(
        f"[bold]afd benchmark[/]: {results['setup']}; medians of {args.repeats} rounds; "
        f"{results['cpu_count']} CPUs ({results['cpu']}, load {results['load_avg'][0]:.2f}), "
        f"torch {torch.__version__} ({results['torch_threads']} threads)"
    )
    cuda = torch.cuda.is_available()
    if "a" in only:
        results["afd_vs_bare"] = afd_vs_researcher(args.repeats)
        _print_afd_vs_bare(results["afd_vs_bare"])
    if "b" in only:
        results["rounds"] = rounds_in_subprocesses("cpu", args.repeats)
        _print_rounds(results["rounds"])
    if "c" in only:
        results["codec"] = codec_sizes()
        _print_codec(results["codec"])
    if "d" in only and cuda:
        results["trainers_cuda"] = [trainer_throughput(c) for c in TRAINER_CLIENTS]
        _print_trainers(
            results["trainers_cuda"],
            "(d) CUDA trainers, B=10, 200 samples/client: client-samples/s",
        )
        results["rounds_cuda"] = rounds_in_subprocesses("cuda", args.repeats)
        _print_rounds(results["rounds_cuda"])
    elif "d" in only:
        console.print("(d) CUDA: skipped, no GPU visible (torch.cuda.is_available() is False)")
    if "e" in only:
        workers = torch.get_num_threads()
        results["trainers_cpu"] = [
            trainer_throughput(10, "cpu", 600, m, workers) for m in ("cnn_mnist", "mlp")
        ]
        _print_trainers(
            results["trainers_cpu"],
            f"(e) CPU trainers (why trainer=auto is sequential here), 10 clients x 600 "
            f"samples, B=10, {workers} threads: client-samples/s",
        )
    if "f" in only:
        results["checkpoint"] = checkpoint_cost(args.repeats)
        _print_checkpoint(results["checkpoint"])
    if "g" in only:
        sizes = tuple(int(n) for n in args.clients.split(","))
        results["scale"] = scale_in_subprocesses(sizes, max(args.repeats, 5))
        _print_scale(results["scale"])
    if "h" in only:
        results["torchrun"] = torchrun_cost(args.repeats, args.model)
        _print_torchrun(results["torchrun"])
    results["wall_s"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {path} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
