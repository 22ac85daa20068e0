"""One run over several processes (torchrun, gloo on CPU) gives the numbers of one process.

The processes are started with torch's own launcher (``python -m torch.distributed.run
--standalone``). A launch starts Python and torch three times (launcher + 2 processes), so
the runs are tiny (digits, mlp, 10 clients, 3 per round) and the one-process references run
in this process. "Identical" is checked on the whole metrics.csv but the timing columns, and
bit for bit on the checkpoint (global weights, merged client state, strategy state).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from helpers import AFD, SMALL
from omegaconf import OmegaConf

from afd_cli import compose
from afd_cli.config import ConfigError, validate
from afd_cli.federated import distributed, team
from afd_cli.metrics import COLUMNS, TIMING_COLUMNS, intact_rows
from afd_cli.run import build as building
from afd_cli.run import checkpoint as ckpts
from afd_cli.run import loop, rundir
from afd_cli.stateindex import SlotTable, join

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

ROOT = Path(__file__).resolve().parents[1]
MULTINODE = ROOT / "examples" / "multinode.sh"  # docs/distributed.md includes it
BASE = [o for o in SMALL if not o.startswith("progress=")] + ["progress=none", "device=cpu"]
KEEP = [c for c in COLUMNS if c not in TIMING_COLUMNS]
# single (replicated score map) with DGC and downlink (client state on the owning process)
DGC = ["strategy=single", "strategy.rate=0.25", "compression=dgc", "compression.downlink=true"]
DGC += ["compression.warmup_rounds=2"]
CONFIGS = {
    # lr 2: a client's training turns non-finite in round 3 and is skipped in every process
    "fedavg-skip": ["strategy=fedavg", "schedule.lr=2", "on_nonfinite=skip_client"],
    "single-dgc-downlink": DGC,
    # per-client score maps (every process holds all, the client's process writes them) and
    # DGC, both spilled to state/ by every process under a tiny memory budget
    "multi-dgc-spill": ["strategy=multi", "compression=dgc", "state.memory_mb=0"],
    # widths per client, a stochastic codec (its draws must not depend on the process) and
    # per-client downlink copies, spilled
    "heterofl-qsgd-downlink": [
        "strategy=heterofl",
        "compression=qsgd",
        "compression.downlink=true",
        "state.memory_mb=0",
    ],
}


def torchrun(n: int, cwd: Path, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """``afd ARGS`` on ``n`` processes, started by torch's launcher on a free local port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={n}", "--no-python", *AFD, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, **kw)


def launch(n: int, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    p = torchrun(n, cwd, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def one_process(run_dir: Path, overrides: list[str], rounds: int, resume: bool = False) -> Path:
    """The run of one process (here), with the .hydra/ files `afd resume` reads."""
    overrides = [*BASE, *overrides, f"schedule.rounds={rounds}"]
    composed = compose.compose([*overrides, f"resume={resume}"])
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    OmegaConf.save(composed, run_dir / ".hydra" / "config.yaml")
    loop.run(validate(composed), run_dir)
    return run_dir


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")[KEEP]


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Bit for bit (NaN, the downlink's "never sent", included): tensors, dicts, numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        bits = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        assert torch.equal(*bits), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def checkpoint(run_dir: Path) -> dict:
    """The checkpoint with every client's state inline (its index names files in ``state/``,
    written by one process or by each process of a torchrun run)."""
    ckpt = ckpts.load(run_dir / "checkpoint.pt")
    if "store" in ckpt:
        cfg = validate(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
        ckpts.inline_store(ckpt, cfg, building.build(cfg), run_dir / rundir.STATE_DIR)
    return ckpt


def state_files(run_dir: Path) -> list[str]:
    """The client-state files the checkpoint names, as namespace/client (not generation)."""
    index = ckpts.load(run_dir / "checkpoint.pt").get("store", {"slots": {}})
    on_disk = {p.relative_to(run_dir / "state") for p in (run_dir / "state").rglob("*.bin")}
    named = {Path(n) / f"c{c}_g{g}.bin" for n, t in index["slots"].items() for c, g in t.items()}
    assert on_disk == named, on_disk ^ named  # nothing else left behind
    return [f"{n}/{c}" for n, t in index["slots"].items() for c in t]


def assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(metrics(a), metrics(b))
    # the per-client record (bytes, samples, FLOPs) is the same whichever process trained whom
    pd.testing.assert_frame_equal(pd.read_csv(a / "clients.csv"), pd.read_csv(b / "clients.csv"))
    ca, cb = checkpoint(a), checkpoint(b)
    for key in ("weights", "strategy", "compressor"):
        assert_same(ca[key], cb[key], key)
    assert ca["state"]["round"] == cb["state"]["round"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict[str, Path]:
    """One-process runs: 3 rounds of each config, and 4 of the DGC one (for the resumes)."""
    root = tmp_path_factory.mktemp("one")
    out = {name: one_process(root / name, o, 3) for name, o in CONFIGS.items()}
    out["dgc-4"] = one_process(root / "dgc-4", DGC, 4)
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict[str, Path]:
    """Two-process runs, made on first use."""
    root, made = tmp_path_factory.mktemp("two"), {}

    def get(name: str) -> Path:
        if name not in made:
            args = [*BASE, *CONFIGS[name], "schedule.rounds=3", f"hydra.run.dir={root / name}"]
            p = launch(2, root, "run", *args)
            assert p.returncode == 0, p.stderr[-3000:]
            made[name] = root / name
        return made[name]

    return get  # type: ignore[return-value]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_give_the_one_process_run(refs, two, name):
    run_dir = two(name)
    files = state_files(run_dir)  # first: reading a checkpoint back deletes unnamed files
    assert_same_run(refs[name], run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    ref = json.loads((refs[name] / "summary.json").read_text())
    assert summary["processes"] == 2 and ref["processes"] == 1
    assert summary["compressor_state_bytes"] == ref["compressor_state_bytes"]
    # each process holds its own clients' state: the summary adds them up, not rank 0's alone
    assert summary["client_state_bytes"] == ref["client_state_bytes"]
    if name == "fedavg-skip":
        assert metrics(run_dir)["skipped"].sum() > 0  # the case it is there for happened
    # rank 0 alone wrote the directory, and only once; every process its clients' state
    assert sorted(f.name for f in run_dir.iterdir()) == [
        ".hydra",
        ".lock",  # the one-writer lock (held by rank 0 only), kept between runs
        "checkpoint.pt",
        "clients.csv",
        "metrics.csv",
        "partition.csv",
        *(["state"] if (refs[name] / "state").exists() else []),
        "status.json",
        "summary.json",
        *(["widths.csv"] if name.startswith("heterofl") else []),
    ]
    if name.startswith("heterofl"):  # each width's accuracy, evaluated by rank 0
        assert (run_dir / "widths.csv").read_text() == (refs[name] / "widths.csv").read_text()
    assert sorted(files) == sorted(state_files(refs[name]))


def test_two_process_run_resumes_exactly_on_one(refs, two, tmp_path):
    """N=2 -> N=1: the checkpoint holds every process's client state, keyed by client."""
    run_dir = tmp_path / "r"
    shutil.copytree(two("single-dgc-downlink"), run_dir)
    one_process(run_dir, DGC, 4, resume=True)
    assert_same_run(refs["dgc-4"], run_dir)


def test_two_process_run_resumes_exactly_on_two(refs, two, tmp_path):
    """N=2 -> N=2: each process takes its clients' share of the joined index back."""
    run_dir = tmp_path / "r"
    shutil.copytree(two("single-dgc-downlink"), run_dir)
    p = launch(2, tmp_path, "resume", str(run_dir), "schedule.rounds=4")
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_run(refs["dgc-4"], run_dir)


def test_one_process_run_resumes_exactly_on_two(refs, tmp_path):
    """N=1 -> N=2 through `afd resume` under torchrun: each process keeps its clients."""
    run_dir = tmp_path / "r"
    shutil.copytree(refs["single-dgc-downlink"], run_dir)
    p = launch(2, tmp_path, "resume", str(run_dir), "schedule.rounds=4")
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_run(refs["dgc-4"], run_dir)
    assert json.loads((run_dir / "resume.log").read_text())["changed"]["schedule.rounds"] == [3, 4]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_nodes_rehearsed_on_this_machine_give_the_one_process_run(refs, tmp_path):
    """docs/distributed.md's multi-node recipe (examples/multinode.sh, included there as it
    is): two torchrun agents, one process each, meeting at a c10d rendezvous on localhost."""
    run_dir = tmp_path / "r"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ENDPOINT": f"localhost:{free_port()}",
        "RUN_ID": f"afd-test-{os.getpid()}",
        "NODES": "2",
        "PROCS": "1",
        "RUN_DIR": str(run_dir),
    }
    args = [*BASE, *CONFIGS["single-dgc-downlink"], "schedule.rounds=3"]
    nodes = [
        subprocess.Popen(
            ["bash", str(MULTINODE), *args],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert_same_run(refs["single-dgc-downlink"], run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["processes"] == 2


def test_the_docs_multinode_recipe_is_the_script_the_test_runs():
    page = (ROOT / "docs" / "distributed.md").read_text()
    assert '--8<-- "examples/multinode.sh"' in page
    script = MULTINODE.read_text()
    assert "--rdzv-backend=c10d" in script and "--nnodes=" in script


def _child_with_rank(parent: int, rank: int) -> int | None:
    """The pid of the launcher's child with RANK=rank (from /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_process_ends_the_run_with_a_message_and_a_resumable_checkpoint(tmp_path):
    args = [*BASE, "progress=plain", "schedule.rounds=1000", "hydra.run.dir=r"]
    p = torchrun(
        2,
        tmp_path,
        "run",
        *args,
        env={"AFD_DIST_TIMEOUT": "20"},  # a hang would be bounded too
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for line in p.stdout:
            if line.startswith("round 2/"):
                break
        victim = _child_with_rank(p.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, stderr = p.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    run_dir = tmp_path / "r"
    assert p.returncode != 0
    assert took < 60, took
    said = [ln for ln in stderr.splitlines() if f"continue with: afd resume {run_dir}" in ln]
    assert len(said) == 1, stderr[-3000:]  # one line, from rank 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] in ("failed", "interrupted"), status
    done = ckpts.load(run_dir / "checkpoint.pt")["state"]["round"]
    assert done >= 2 and len(intact_rows(run_dir / "metrics.csv")) >= done
    # resumable, and exactly: one more round on one process is the uninterrupted run's
    one_process(run_dir, [], done + 1, resume=True)
    ref = one_process(tmp_path / "ref", [], done + 1)
    assert_same_run(ref, run_dir)


@cuda
def test_nccl_processes_one_gpu_each_match_one_process(tmp_path):
    """nccl, one GPU per process (a single GPU: the nccl path with one process); the
    sequential trainer. GPU kernels may round differently run to run, so: close, not equal."""
    n = min(2, torch.cuda.device_count())
    gpu = ["device=cuda", "trainer=sequential", *DGC]
    p = launch(n, tmp_path, "run", *BASE, *gpu, "schedule.rounds=3", "hydra.run.dir=r")
    assert p.returncode == 0, p.stderr[-3000:]
    ref = metrics(one_process(tmp_path / "ref", gpu, 3))
    got = metrics(tmp_path / "r")
    assert got.bytes_down.tolist() == ref.bytes_down.tolist()
    assert got.train_loss.tolist() == pytest.approx(ref.train_loss.tolist(), rel=1e-4)


# --- the pieces, in this process ---------------------------------------------------------------


def test_clients_belong_to_client_mod_processes():
    assert [distributed.owner(c, 3) for c in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_an_inline_checkpoint_state_splits_into_each_process_share():
    """A torchrun checkpoint from before the per-process state files held every client's
    compressor state inline; each process loads its own clients' share of it."""
    t = torch.ones(2)
    merged = {"round": 3, "names": ["w"], "up": {0: {"v": t}, 1: {"v": t}, 2: {"v": t}}}
    assert team.own_share(merged, 1, 2)["up"].keys() == {1}
    assert team.own_share(merged, 0, 3)["up"].keys() == {0}
    assert team.own_share(merged, 0, 2)["round"] == 3


def test_process_indexes_join_into_one_and_refuse_a_client_named_twice():
    spaces = {"up": {"numel": 2, "dtype": "fp32", "layout": None, "sharded": True}}

    def index(gens: dict[int, int], next_gen: int) -> dict:
        return {
            "version": 2,
            "next_gen": next_gen,
            "spaces": spaces,
            "slots": {"up": SlotTable(gens)},
            "checksum": "crc32",
            "sums": {"up": SlotTable({c: 7 for c in gens})},
        }

    joined = join([index({0: 1, 2: 3}, 5), index({1: 2}, 8)])
    assert joined["slots"]["up"] == {0: 1, 1: 2, 2: 3} and joined["next_gen"] == 8
    assert joined["sums"]["up"] == {0: 7, 1: 7, 2: 7} and joined["spaces"] == spaces
    with pytest.raises(RuntimeError, match="named by two processes"):
        join([index({0: 1}, 5), index({0: 2}, 8)])


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_bad_collective_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=f"AFD_DIST_TIMEOUT={value!r} is out of range"):
        distributed.timeout_s()


def test_without_torchrun_a_run_is_one_process():
    assert distributed.world() is None and distributed.is_lead() and distributed.size() == 1


def test_exit_process_runs_atexit_handlers_and_keeps_the_code(tmp_path):
    """A torchrun process ends through os._exit (gloo can abort interpreter finalisation);
    the atexit handlers (process group, the state store's spill directory) still run."""
    mark = tmp_path / "ran"
    code = (
        "import atexit, pathlib, sys\n"
        "from afd_cli.federated import distributed\n"
        f"atexit.register(pathlib.Path({str(mark)!r}).write_text, 'yes')\n"
        "print('said', flush=False)\n"
        "distributed.exit_process(3)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "said\n"  # flushed before os._exit
    assert mark.read_text() == "yes"


def test_each_tensor_is_aggregated_by_one_process_the_largest_spread_first():
    w = {"a": torch.zeros(100), "b": torch.zeros(60), "c": torch.zeros(50), "d": torch.zeros(5)}
    assert team.split_tensors(w, 1) == [["a", "b", "c", "d"]]
    assert team.split_tensors(w, 2) == [["a", "d"], ["b", "c"]]
    assert team.split_tensors(w, 5)[4] == []  # more processes than tensors: some sum none


@pytest.mark.parametrize("name", ["none", "dgc", "hadamard"])
def test_a_part_of_an_upload_decodes_as_the_whole_does(name):
    """What a process decodes of an upload (its tensors) is bit for bit the whole decode's."""
    from afd_cli.compression import RoundContext, make
    from afd_cli.models import build as build_model
    from afd_cli.submodel import View

    model = build_model("mlp", (1, 8, 8), 10, hidden=16)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    comp = make(name, shapes, 0, "cpu")
    gen = torch.Generator().manual_seed(1)
    update = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    view = View(model)
    comp.begin_round(0)
    payload = comp.encode_up_many([0], [update], [view], RoundContext(0, 1))[0]
    whole = comp.decode_up(0, payload, view)
    names = set(team.split_tensors(update, 2)[1])
    part = comp.decode_up_part(0, payload, view, names)
    assert set(part) == names and 0 < len(names) < len(whole)
    assert_same(part, {k: whole[k] for k in part}, "decoded")
