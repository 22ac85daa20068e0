"""Per-round CSV rows, the end-of-run summary, and the progress display.

``metrics.csv`` is appended and flushed once per round, so a crashed or interrupted run keeps
every finished round; on resume the rows past the checkpoint (and a damaged tail) are dropped
first, so the file never holds a round twice or a half row. Timing columns (``wall_s``,
``train_s``, ``eval_s``) are the only ones that differ between two runs with the same seed.

``clients.csv`` holds one row per (round, client), written the same way just before the
round's ``metrics.csv`` row and cut back with it on resume: what each client cost (bytes,
samples, local steps, training FLOPs), whether the clock's deadline dropped it and the width
of its sub-model. ``widths.csv`` (strategies with ``strategy.eval_widths``) holds the test
accuracy of each width's sub-model at the rounds they are tested. The
simulated ``sim_*`` columns of ``metrics.csv`` are a function of it (:mod:`afd_cli.network`).

``wall_s`` is the whole round: sampling, training, codecs, aggregation, evaluation and the
round's checkpoint (when one is due), which is written just before its row. The checkpoint
holds that row (with ``wall_s`` up to the checkpoint), and a resume after a kill between the
two appends it from there: the one case where ``wall_s`` leaves its checkpoint out.
``train_s``: local training, wall time; ``eval_s``: test evaluation.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class ClientRow:
    """One client's part of a round (a row of ``clients.csv``): what it cost on the wire and
    in local training, and whether the clock's deadline dropped it."""

    round: int
    client: int
    bytes_down: int
    bytes_up: int  # 0 when not sent (dropped by the deadline, or skipped as non-finite)
    samples: int
    steps: int  # local SGD steps: ceil(samples / batch_size) * local_epochs
    flops: int  # FLOPs of its local training (forward + backward of the model it trained)
    dropped: int  # 1: finished after network.deadline_s, left out of the round
    width: float = 1.0  # its sub-model's nominal width (a tier; 1 - rate for dropout)


@dataclass
class RoundRow:
    """A row of ``metrics.csv``: one round."""

    round: int
    dataset: str
    model: str
    partition: str
    strategy: str
    compression: str
    seed: int
    clients: int
    skipped: int  # clients dropped for a non-finite loss or update (on_nonfinite=skip_client)
    dropped: int  # clients past network.deadline_s, left out of the round (stragglers)
    bytes_down: int
    bytes_up: int
    cum_bytes_down: int
    cum_bytes_up: int
    cum_bytes: int
    train_loss: float
    test_loss: float | None  # None: not evaluated this round (an empty cell)
    test_acc: float | None
    keep_fraction: float
    sparsity: float
    sim_round_s: float | None  # simulated seconds of the round (network.*; empty with none)
    sim_time_s: float | None  # simulated seconds since the start of the run
    wall_s: float  # the whole round, its checkpoint included (see the module docstring)
    train_s: float
    eval_s: float


COLUMNS = [f.name for f in fields(RoundRow)]
TIMING_COLUMNS = ("wall_s", "train_s", "eval_s")
SIM_COLUMNS = ("sim_round_s", "sim_time_s")  # written with 12 digits: re-timing matches them
TEXT_COLUMNS = ("dataset", "model", "partition", "strategy", "compression")
CLIENT_COLUMNS = [f.name for f in fields(ClientRow)]
# the integer columns, which are all a clients.csv had before ``width`` (such files are still
# read, resumed and re-timed; their rows have an empty width)
CLIENT_INT_COLUMNS = [c for c in CLIENT_COLUMNS if c != "width"]
WIDTH_COLUMNS = ["round", "width", "test_loss", "test_acc"]  # widths.csv


def intact_rows(path: Path, keep_rounds: int | None = None) -> list[dict[str, str]]:
    """The rows of ``metrics.csv`` that are whole and in order (rounds 1, 2, ...), at most
    ``keep_rounds`` of them; reading stops at the first damaged line.

    A line counts as whole when it ends in a newline, has one field per header column, the
    next round number, and a number (or an empty cell) in every numeric column. A half row
    left by a cut file, garbage or NUL bytes therefore end the intact part; whatever came
    after them is not trusted (the caller recomputes those rounds).
    """
    try:
        lines = path.read_bytes().split(b"\n")[:-1]  # the last piece has no newline: partial
    except FileNotFoundError:
        return []
    header = _fields(lines[0]) if lines else None
    if not header or "round" not in header:
        return []
    rows: list[dict[str, str]] = []
    for raw in lines[1:]:
        if keep_rounds is not None and len(rows) >= keep_rounds:
            break
        fields = _fields(raw)
        if fields is None or len(fields) != len(header):
            break
        row = dict(zip(header, fields, strict=True))
        if row["round"] != str(len(rows) + 1) or not all(
            _is_number(v) for k, v in row.items() if k not in TEXT_COLUMNS
        ):
            break
        rows.append(row)
    return rows


def sim_time_to(path: Path, target: float) -> float | None:
    """Simulated seconds (``sim_time_s``) at the first round of ``metrics.csv`` whose test
    accuracy reached ``target``; None if none did (or the run has no clock)."""
    for row in intact_rows(path):
        acc, sim = row.get("test_acc", ""), row.get("sim_time_s", "")
        if acc and sim and float(acc) >= target - 1e-12:
            return float(sim)
    return None


def _fields(raw: bytes) -> list[str] | None:
    try:
        return next(csv.reader([raw.decode("utf-8").removesuffix("\r")]))
    except (UnicodeDecodeError, csv.Error, StopIteration):  # undecodable, NUL bytes, empty
        return None


def _is_number(v: str) -> bool:
    if v == "":
        return True
    try:
        float(v)
    except ValueError:
        return False
    return True


def intact_client_rows(
    path: Path, per_round: int, keep_rounds: int | None = None
) -> list[dict[str, str]]:
    """The rows of ``clients.csv`` of its first whole rounds (``per_round`` rows each, rounds
    1, 2, ... in order, every cell an integer but the width, a number or empty), at most
    ``keep_rounds`` rounds; reading stops at the first damaged line, and a round cut short by
    it is left out. A file from before the ``width`` column is read too (no ``width`` key)."""
    try:
        lines = path.read_bytes().split(b"\n")[:-1]
    except FileNotFoundError:
        return []
    header = _fields(lines[0]) if lines else None
    if header not in (CLIENT_COLUMNS, CLIENT_INT_COLUMNS):
        return []
    rows: list[dict[str, str]] = []
    for raw in lines[1:]:
        fields = _fields(raw)
        if fields is None or len(fields) != len(header):
            break
        row = dict(zip(header, fields, strict=True))
        if not all(row[c].isdigit() for c in CLIENT_INT_COLUMNS):
            break
        if not _is_number(row.get("width", "")):
            break
        if int(row["round"]) != len(rows) // per_round + 1:
            break
        rows.append(row)
    whole = len(rows) // per_round
    if keep_rounds is not None:
        whole = min(whole, keep_rounds)
    return rows[: whole * per_round]


class MetricsWriter:
    """Appends one row per round to ``metrics.csv``; on resume keeps the first ``keep_rounds``
    intact rows (see :func:`intact_rows`) and drops everything after them."""

    def __init__(self, path: Path, keep_rounds: int = 0):
        self.path = path
        rows = intact_rows(path, keep_rounds) if keep_rounds else []
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)

    def write(self, row: RoundRow | dict[str, Any]) -> None:
        row = asdict(row) if isinstance(row, RoundRow) else row
        self._writer.writerow({k: _fmt(row.get(k), 12 if k in SIM_COLUMNS else 6) for k in COLUMNS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ClientsWriter:
    """Appends a round's rows to ``clients.csv``; on resume keeps the rows of the first
    ``keep_rounds`` whole rounds (see :func:`intact_client_rows`) and drops the rest."""

    def __init__(self, path: Path, per_round: int, keep_rounds: int = 0):
        rows = intact_client_rows(path, per_round, keep_rounds) if keep_rounds else []
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CLIENT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CLIENT_COLUMNS)

    def write(self, rows: list[ClientRow] | list[dict[str, Any]]) -> None:
        plain = [asdict(r) if isinstance(r, ClientRow) else r for r in rows]
        self._writer.writerows(
            [
                {**{k: int(r[k]) for k in CLIENT_INT_COLUMNS}, "width": _width(r.get("width"))}
                for r in plain
            ]
        )
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _width(v: Any) -> Any:
    """A width cell: the number, or empty for a row from before the column (a checkpoint's
    pending row of an older run)."""
    return "" if v is None or v == "" else _fmt(float(v))


def intact_width_rows(path: Path, keep_rounds: int | None = None) -> list[dict[str, str]]:
    """The rows of ``widths.csv`` up to round ``keep_rounds``, in order, stopping at the first
    damaged line (as :func:`intact_rows`)."""
    try:
        lines = path.read_bytes().split(b"\n")[:-1]
    except FileNotFoundError:
        return []
    if not lines or _fields(lines[0]) != WIDTH_COLUMNS:
        return []
    rows: list[dict[str, str]] = []
    for raw in lines[1:]:
        fields = _fields(raw)
        if fields is None or len(fields) != len(WIDTH_COLUMNS) or not all(map(_is_number, fields)):
            break
        row = dict(zip(WIDTH_COLUMNS, fields, strict=True))
        if not row["round"].isdigit() or (rows and int(row["round"]) < int(rows[-1]["round"])):
            break
        if keep_rounds is not None and int(row["round"]) > keep_rounds:
            break
        rows.append(row)
    return rows


class WidthsWriter:
    """``widths.csv``: the test loss and accuracy of each width's sub-model, one row per width
    at the rounds its strategy tests them (HeteroFL's evaluation); created with the first
    rows, and on resume cut back to the rounds kept, like ``metrics.csv``."""

    def __init__(self, path: Path, keep_rounds: int = 0):
        self.path = path
        rows = intact_width_rows(path, keep_rounds) if keep_rounds else []
        self._file = None
        if rows:
            self._open(rows)
        else:
            path.unlink(missing_ok=True)

    def _open(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=WIDTH_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=WIDTH_COLUMNS)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._file is None:
            self._open([])
        self._writer.writerows([{k: _fmt(r[k]) for k in WIDTH_COLUMNS} for r in rows])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _fmt(v: Any, digits: int = 6) -> Any:
    """None (not evaluated) is an empty cell; NaN and infinities are written as ``nan``,
    ``inf``, ``-inf``, never blank, so a diverged value cannot pass for a missing one."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return v


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RoundProgress:
    """A rich bar for rounds and clients on a terminal; one plain line per round otherwise."""

    def __init__(
        self, total_rounds: int, clients_per_round: int, mode: str = "auto", start: int = 0
    ):
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.total = total_rounds
        self.console = Console(stderr=False)
        if mode == "rich":
            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._rounds = self._p.add_task("rounds", total=total_rounds, completed=start, info="")
            self._clients = self._p.add_task("clients", total=clients_per_round, info="")
            self._p.start()

    def client_done(self) -> None:
        if self.mode == "rich":
            self._p.advance(self._clients)

    def round_done(self, r: RoundRow | dict[str, Any], note: str = "") -> None:
        """Round ``r`` is done; ``note`` ends its line (e.g. the loss exploded)."""
        row = asdict(r) if isinstance(r, RoundRow) else r
        acc = row.get("test_acc")
        acc_s = "" if acc is None or acc != acc else f"acc {acc:.4f} "
        mb = row["cum_bytes"] / 1e6
        skipped = f" ({row['skipped']} skipped)" if row.get("skipped") else ""
        skipped += f" ({row['dropped']} past the deadline)" if row.get("dropped") else ""
        skipped += note
        line = (
            f"round {row['round']}/{self.total} {acc_s}loss {row['train_loss']:.4f} "
            f"{mb:,.1f} MB {row['wall_s']:.1f}s{skipped}"
        )
        if self.mode == "rich":
            self._p.update(self._rounds, advance=1, info=f"{acc_s}{mb:,.1f} MB{note}")
            self._p.reset(self._clients)
        elif self.mode == "plain":
            print(line, flush=True)

    def close(self) -> None:
        if self.mode == "rich":
            # the clients bar only means something mid-round: the last frame (left on the
            # terminal) must not show a stale "clients 0/N"
            self._p.remove_task(self._clients)
            self._p.stop()
