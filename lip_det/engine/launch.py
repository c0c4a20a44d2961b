"""Multi-process training on CUDA or on the CPU.

detectron2's ``launch`` starts one process per GPU with the NCCL backend; v0.6 asserts that CUDA
is available, and later versions pick NCCL whenever it is, even for a CPU model. ``launch`` here
chooses by the model's device: CUDA goes to detectron2's ``launch`` unchanged, the CPU gets the
same process layout with the gloo backend.
"""

import logging
import os
from datetime import timedelta

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch

__all__ = ["launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_processes_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    device="cuda",
    timeout=DEFAULT_TIMEOUT,
):
    """detectron2's ``launch`` (same arguments, ``dist_url="auto"`` included) plus ``device``:
    "cuda" (one process per GPU, NCCL, detectron2's own launcher) or "cpu" (processes over gloo).
    Must be called on every machine; ``main_func(*args)`` runs in every process."""
    if torch.device(device).type != "cpu":
        return detectron2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; give a tcp:// address")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
        ),
        daemon=False,
    )
    return None


def _free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank, main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args,
    timeout,
):  # fmt: skip
    # Each process would otherwise start one thread per core: N processes would oversubscribe
    # the machine N times. OMP_NUM_THREADS, when set, is the user's choice.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // num_processes_per_machine))
    global_rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    _create_local_process_group(num_processes_per_machine, machine_rank)
    comm.synchronize()  # as detectron2 does: avoids a timeout right after init_process_group
    main_func(*args)


def _create_local_process_group(num_processes_per_machine, machine_rank):
    """detectron2's comm.get_local_rank() needs the group of this machine's processes."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        comm.create_local_process_group(num_processes_per_machine)
        return
    # v0.6 builds it inside its launcher: every process creates every machine's group
    num_machines = dist.get_world_size() // num_processes_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
