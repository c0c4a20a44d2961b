"""What each task of a ``--slurm`` job runs (see :mod:`.slurm`): the run's arguments on this
node from submitit's JobEnvironment, and :class:`TrainingJob`, the checkpointable callable
submitit pickles, runs, and requeues with ``--resume`` through its ``checkpoint()`` protocol."""

import copy
import os
import signal
import zlib

from .signals import DEFAULT_STOP_SIGNALS, TrainingInterrupted

__all__ = ["PORT_BASE", "PORT_RANGE", "TrainingJob", "job_arguments"]

# --dist-url port of a multi-node job: derived from the job id, the same on every node
PORT_BASE, PORT_RANGE = 20000, 20000


def _port(job_id):
    return PORT_BASE + zlib.crc32(str(job_id).encode()) % PORT_RANGE


def job_arguments(args, plan, env, *, requeued=False):
    """The run's arguments on this node: machine layout from ``env`` (submitit's
    JobEnvironment), ``--resume`` once the job has been requeued, submitit's signal added to the
    stop signals."""
    node_args = copy.copy(args)
    node_args.num_gpus = plan["processes_per_node"]
    node_args.num_machines = env.num_tasks
    node_args.machine_rank = env.global_rank
    if plan["dist_url"]:
        node_args.dist_url = plan["dist_url"]
    elif env.num_tasks == 1:
        node_args.dist_url = "auto"
    else:
        host = "127.0.0.1" if env.cluster == "local" else env.hostnames[0]
        node_args.dist_url = f"tcp://{host}:{_port(env.job_id)}"
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if requeued or restarts > 0:
        node_args.resume = True
    node_args.overwrite = False  # done once, when submitting
    signals = list(getattr(args, "stop_signals", None) or DEFAULT_STOP_SIGNALS)
    usr = "SIG" + env.USR_SIG
    if usr not in signals:
        signals.append(usr)
    node_args.stop_signals = signals
    return node_args


class TrainingJob:
    """What each task of the job runs (pickled by submitit): ``run(args)`` for this node, then,
    if training stopped on submitit's signal, submitit's checkpoint-and-requeue. Checkpointable
    the submitit way: :meth:`checkpoint` returns the same job with --resume."""

    def __init__(self, args, plan, requeued=False):
        self.args = args
        self.plan = plan
        self.requeued = requeued

    def __call__(self):
        import submitit

        from .train_net import run

        env = submitit.JobEnvironment()
        usr_signal = getattr(signal, "SIG" + env.USR_SIG)
        requeue = signal.getsignal(usr_signal)  # submitit's checkpoint_and_try_requeue
        args = job_arguments(self.args, self.plan, env, requeued=self.requeued)
        print(
            f"lip_det: task {env.global_rank} of {env.num_tasks}: --num-gpus {args.num_gpus} "
            f"--machine-rank {args.machine_rank} --dist-url {args.dist_url}"
            + (" --resume" if args.resume else ""),
            flush=True,
        )
        try:
            return run(args)
        except TrainingInterrupted as e:
            print(f"lip_det: {e}", flush=True)
            if e.signum == usr_signal and callable(requeue):
                requeue(usr_signal, None)  # checkpoint() below, then requeue; exits the task
            raise

    def checkpoint(self, *args, **kwargs):
        """submitit's checkpoint(): called on submitit's signal, in the first task. The training
        processes stop by themselves (they get the signal too, or from their launcher) and
        write the checkpoint; wait for any still running, then resubmit with --resume."""
        import multiprocessing

        from submitit.helpers import DelayedSubmission

        for child in multiprocessing.active_children():
            child.join()
        print("lip_det: requeued; the next run resumes from the last checkpoint", flush=True)
        return DelayedSubmission(TrainingJob(self.args, self.plan, requeued=True))
