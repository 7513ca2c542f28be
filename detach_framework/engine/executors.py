"""Where the runs of a study execute: subprocesses on this machine, or one SLURM job each through submitit.

The study (engine/study.py) decides what runs and when: which runs are pending, which must wait for which,
the log lines and the failures. An executor only starts one `detach` command and says when and how it ended.

- `LocalPool`: `slots` subprocesses at a time, each with its share of the CPU threads and, when several GPUs
  are visible, the GPU that runs the fewest of them.
- `SubmititPool`: each command is one job submitted through submitit (an optional dependency, the `slurm`
  extra), `slots` of them queued or running at a time. The job runs the same command on the node.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from detach_framework.errors import UserError

# How long an interrupted study waits for a local run to stop by itself (Ctrl-C reaches the whole process
# group, and the run then saves its checkpoint) before it sends SIGTERM (e.g. only the study was signalled).
STOP_GRACE_S = 10.0
INSTALL_SUBMITIT = "pip install 'detach-framework[slurm]'"
DEFAULT_SLURM_TIME_MIN = 1440  # submitit's own default, 5 minutes, would end any training


@dataclass(frozen=True)
class Outcome:
    """How a job ended; `detail` closes its log line ("exit 0") and, when it failed, its failure line."""

    ok: bool
    detail: str


class JobHandle(Protocol):
    """One started command."""

    where: str  # appended to the run's start line: " on GPU 1", " (job 4242)", or ""

    def poll(self) -> Outcome | None:
        """None while it runs, then how it ended."""
        ...


class Executor(Protocol):
    slots: int  # commands running (or queued) at a time
    poll_seconds: float  # how long the study sleeps when no job ended and none can start

    def start(self, command: list[str], log_file: Path, name: str) -> JobHandle:
        """Start `command` with its stdout and stderr in `log_file`; `name` names the job where jobs have names."""
        ...

    def stop(self, handles: list[Any]) -> None:
        """Stop these jobs (its own, still running), for a study that is interrupted."""
        ...


def visible_gpus() -> list[str]:
    """The CUDA devices of this process, as CUDA_VISIBLE_DEVICES ids a child can be given; [] without CUDA."""
    import torch

    count = torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES and creates no CUDA context
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [item.strip() for item in listed.split(",")][:count]


class LocalPool:
    """Runs each command as a subprocess of this one, `slots` at a time."""

    poll_seconds = 0.2

    def __init__(self, slots: int, gpus: list[str] | None = None) -> None:
        self.slots = slots
        self.threads = max(1, (os.cpu_count() or 1) // max(slots, 1))
        self.gpus = visible_gpus() if gpus is None else gpus
        self.busy: Counter[str] = Counter()  # GPU id -> jobs running on it

    def start(self, command: list[str], log_file: Path, name: str) -> _LocalJob:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        gpu = None
        if len(self.gpus) > 1:  # with one GPU (or none) every job sees what this process sees
            gpu = min(self.gpus, key=lambda candidate: self.busy[candidate])  # the first of the least busy
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log = open(log_file, "w")  # noqa: SIM115 - closed when the job ends
        try:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            log.close()
            raise
        if gpu is not None:
            self.busy[gpu] += 1
        return _LocalJob(self, process, log, gpu)

    def stop(self, handles: list[_LocalJob]) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for job in handles:
            try:
                job.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.terminate()  # the run finishes any checkpoint write and exits 143
        for job in handles:
            job.process.wait()
            job.release()


@dataclass
class _LocalJob:
    pool: LocalPool
    process: subprocess.Popen
    log: IO[str]
    gpu: str | None
    ended: bool = False

    @property
    def where(self) -> str:
        return f" on GPU {self.gpu}" if self.gpu is not None else ""

    def poll(self) -> Outcome | None:
        code = self.process.poll()
        if code is None:
            return None
        self.release()
        return Outcome(code == 0, f"exit {code}")

    def release(self) -> None:
        if not self.ended:
            self.ended = True
            self.log.close()
            if self.gpu is not None:
                self.pool.busy[self.gpu] -= 1


@dataclass(frozen=True)
class SlurmSettings:
    """The resources of each run's job; None leaves a value to the cluster's defaults."""

    partition: str | None = None
    time_min: int | None = None  # None: DEFAULT_SLURM_TIME_MIN
    cpus: int | None = None
    gpus: int | None = None
    options: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "lab"}

    def parameters(self) -> dict[str, Any]:
        """`AutoExecutor.update_parameters` arguments: submitit's generic names, slurm_* where it has none
        (other clusters, such as the tests' local one, ignore those; None values are left unset)."""
        return {
            "timeout_min": self.time_min or DEFAULT_SLURM_TIME_MIN,
            "cpus_per_task": self.cpus,
            "gpus_per_node": self.gpus,
            "slurm_partition": self.partition,
            "slurm_additional_parameters": dict(self.options) or None,
        }


def submitit_pool(folder: Path, settings: SlurmSettings, slots: int, cluster: str = "slurm") -> SubmititPool:
    """A SubmititPool writing submitit's files (job scripts, pickles, job logs) under `folder`. `cluster` is
    submitit's name for where jobs go: "slurm", or "local" (its LocalExecutor: local processes)."""
    try:
        import submitit
    except ImportError:
        raise UserError(f"--executor submitit needs the submitit package: {INSTALL_SUBMITIT}") from None
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError:  # submitit's SLURM executor refuses a machine without srun
        raise UserError(
            "--executor submitit: no SLURM on this machine (srun not found); run detach ablate where sbatch "
            "works, or use --executor local"
        ) from None
    executor.update_parameters(**settings.parameters())
    return SubmititPool(executor, slots, settings)


@dataclass(frozen=True)
class CommandJob:
    """What each submitted job runs: the command, with its output in the run's log file. Pickled by submitit
    and called on the node, where the environment is the job's own plus `env`."""

    command: tuple[str, ...]
    log_file: str
    cwd: str  # the submitting directory: the command's relative paths are relative to it
    env: dict[str, str]

    def __call__(self) -> int:
        with open(self.log_file, "w") as log:
            completed = subprocess.run(
                self.command, cwd=self.cwd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
            )
        return completed.returncode


class SubmititPool:
    """Submits each command as one job of a submitit executor, `slots` at a time."""

    poll_seconds = 2.0  # a poll reads the job's result file; submitit rate-limits its own sacct calls

    def __init__(self, executor: Any, slots: int, settings: SlurmSettings) -> None:
        self.executor, self.slots = executor, slots
        threads = str(settings.cpus) if settings.cpus else None  # else the node's default
        self.env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if threads else {}

    def start(self, command: list[str], log_file: Path, name: str) -> _SubmititJob:
        self.executor.update_parameters(name=name)
        job = CommandJob(tuple(command), str(log_file.resolve()), os.getcwd(), dict(self.env))
        return _SubmititJob(self.executor.submit(job))

    def stop(self, handles: list[_SubmititJob]) -> None:
        for handle in handles:
            handle.job.cancel(check=False)  # queued or running: a rerun of the study resumes the run


@dataclass
class _SubmititJob:
    job: Any  # a submitit Job

    @property
    def where(self) -> str:
        return f" (job {self.job.job_id})"

    def poll(self) -> Outcome | None:
        if not self.job.done():
            return None
        try:
            code = self.job.result()
        except Exception as exc:  # the job ended outside the command: time limit, node failure, cancelled
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            return Outcome(False, f"job {self.job.job_id} did not finish: {first.strip()}")
        return Outcome(code == 0, f"exit {code}")
