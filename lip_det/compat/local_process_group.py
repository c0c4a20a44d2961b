"""local_process_group: detectron2's group of one machine's processes, for launchers other than
detectron2's own.

Problem: ``comm.get_local_rank()`` and ``get_local_size()`` need ``comm._LOCAL_PROCESS_GROUP``.
v0.6 creates it only inside its own launcher (``engine/launch.py:111-117``, which asserts CUDA),
and its ``utils/comm.py`` has no function for it, so a launcher of its own (lip_det's gloo
launcher for CPU processes, :mod:`lip_det.engine.launch`) must set that private global itself.

Probe (direct): ``hasattr(detectron2.utils.comm, "create_local_process_group")``. Importing
``detectron2.utils.comm`` costs < 1 ms here (torch is already imported by ``detectron2``) and
``import detectron2.modeling`` imports it anyway.

Change: nothing in detectron2. :func:`create_local_process_group` calls comm's function where there
is one and otherwise does what v0.6's launcher does (every process creates every machine's
group, keeps its own).

Upstream: 650c60ed ("provide {create,get}_local_process_group", 2023-01-18); HEAD
``utils/comm.py:38``, called by its launcher at ``engine/launch.py:115``.
"""

from ._base import Finding, find_spec

__all__ = ["create_local_process_group"]

NAME = "local_process_group"
UPSTREAM = "fixed in 650c60ed (2023-01): HEAD utils/comm.py:38 create_local_process_group"


def _comm_has_it():
    from detectron2.utils import comm

    return hasattr(comm, "create_local_process_group")


def probe():
    if find_spec("detectron2.utils.comm") is None:
        return Finding(False, "not needed: this detectron2 has no utils.comm")
    if _comm_has_it():
        return Finding(False, "not needed: comm.create_local_process_group exists (650c60ed)")
    return Finding(
        True,
        "comm has no create_local_process_group: lip_det's launcher sets comm._LOCAL_PROCESS_GROUP",
        ("detectron2.utils.comm",),
    )


def apply(finding):
    pass  # create_local_process_group() checks for comm's function itself, at each call


def create_local_process_group(num_processes_per_machine, machine_rank):
    """Create the process group of this machine's processes, which ``comm.get_local_rank()``
    needs, after ``torch.distributed.init_process_group``. Every process must call it (it is a
    collective); ranks are numbered machine by machine, as detectron2's launcher numbers them."""
    from detectron2.utils import comm

    if _comm_has_it():
        comm.create_local_process_group(num_processes_per_machine)
        return
    _create_by_hand(comm, num_processes_per_machine, machine_rank)


def _create_by_hand(comm, num_processes_per_machine, machine_rank):
    # as v0.6's engine/launch.py:111-117 does
    import torch.distributed as dist

    num_machines = dist.get_world_size() // num_processes_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
