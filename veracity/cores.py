"""How a process shares the machine's cores: its share of threads for torch, OpenCV and FFmpeg.

Worker pools (:mod:`veracity.pool`, extraction's, the benchmark's and the monitor's, the
service's job workers) give each process ``cores // processes`` threads: each of torch,
OpenCV and FFmpeg otherwise starts a thread per core in every process, and the processes
fight over the cores. Nothing here changes a result, only how the cores are shared.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container may narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_share(workers: int) -> int:
    """Threads for each of ``workers`` processes: the cores shared out, at least one each."""
    return max(1, available_cores() // max(1, workers))


def share_threads(threads: int, torch_threads: bool = True) -> None:
    """Give this process's torch and OpenCV thread pools ``threads`` threads each, and
    decode video on one thread when that is the process's share.

    ``torch_threads=False`` leaves torch alone (and unimported). None of this changes a
    result, only how the cores are shared. Call it in a spawned process, or before the
    process has used OpenCV's threads: a forked child cannot resize a pool it inherited.
    """
    import cv2

    from veracity.media.decode import set_decode_threads

    # OpenCV (face detection, resizing) starts a pool of every core in each process, as
    # torch and FFmpeg do: each needs the process's share, or the processes fight over the cores.
    cv2.setNumThreads(threads)
    set_decode_threads(threads > 1)
    if torch_threads:
        import torch

        torch.set_num_threads(threads)
