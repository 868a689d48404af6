"""`bnnrepro repro`: the stages of the DVC pipeline in parallel, on local GPUs or a SLURM cluster.

    bnnrepro repro --jobs 8 --gpus 0,1,2,3,4,5,6,7            # one node, one stage per GPU
    bnnrepro repro --jobs 64 --engine slurm --partition gpu    # one SLURM job per stage

No scheduler of our own: submitit (the engine) starts the jobs, DVC runs and caches the stages. The
coordinator walks DVC's DAG and submits each stage whose upstream stages are done. A job runs
`dvc repro <stage>` in a workspace of its own (a git worktree under .dvc/tmp/parallel/) whose DVC cache is
this workspace's cache: DVC saves each finished stage in the run-cache there, the next job restores its
upstream stages from it, and the final plain `dvc repro` here restores every stage the workers ran
("cached - skipping run") and runs only those DVC cannot restore (the reports). docs/parallel.md explains
why the hand-off is safe.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from bnnrepro.errors import InputError, UsageError

WORK = Path(".dvc/tmp/parallel")  # workspaces, logs and the engine's job folder, under the main workspace
SHARED = ("checkpoints", "runs")  # not DVC outputs: a killed training resumes from checkpoints/ in any workspace
# The outputs in a worktree only pass through it: links into the cache instead of copies, so that N worktrees
# do not hold N copies of every prepared dataset (DVC makes linked files read-only; no stage edits its
# inputs in place). The main workspace keeps its own cache.type.
WORKER_LINKS = "reflink,hardlink,symlink,copy"
POLL_SECONDS = 1.0
LOCAL_TIMEOUT_MIN = 60 * 24 * 30  # submitit's local jobs are killed after timeout_min (default 2): never, here


# ---- the plan: which stages run, and after which -------------------------------------------------------

def restorable(stage) -> bool:
    """Whether DVC saves the stage's result in the run-cache, so that another workspace can restore it.
    DVC's own conditions (dvc/stage/cache.py: _can_hash; dvc/stage/__init__.py: Stage.run), less the
    hashes of the deps, which do not exist before the upstream stages ran: a command, deps and outs, not
    always run or frozen, outs that are local files of the repository and not `persist`, and each
    `cache: false` output a metric or a plot."""
    outs_ok = all(out.protocol == "local" and out.is_in_repo and not out.persist
                  and (out.use_cache or out.is_metric or out.is_plot) for out in stage.outs)
    return bool(stage.cmd and stage.deps and stage.outs and not stage.always_changed and not stage.frozen and outs_ok)


def plan(root: Path) -> dict[str, set[str]]:
    """stage -> the planned stages it waits for, for every stage that `dvc repro` would run and that
    a worker can hand back; in dependency order. A stage runs when it changed or a stage upstream of it
    runs. Stages that cannot be restored (see restorable) are left to the final `dvc repro`."""
    import networkx as nx
    from dvc.repo import Repo

    todo: dict[str, set[str]] = {}
    with Repo(str(root)) as repo, repo.lock:
        graph = repo.index.graph  # an edge goes from a stage to a stage it depends on
        changed: set = set()
        for stage in reversed(list(nx.topological_sort(graph))):  # dependencies first
            upstream = nx.descendants(graph, stage)
            if stage.is_data_source or stage.frozen:
                continue
            if upstream & changed or stage.changed():
                changed.add(stage)
                if restorable(stage):
                    todo[stage.addressing] = {s.addressing for s in upstream} & todo.keys()
    return todo


def blocked_by(failed: str, plan_: dict[str, set[str]]) -> set[str]:
    """Every planned stage downstream of `failed`."""
    blocked, grew = {failed}, True
    while grew:
        more = {s for s, upstream in plan_.items() if upstream & blocked} - blocked
        blocked |= more
        grew = bool(more)
    return blocked - {failed}


# ---- the workspaces --------------------------------------------------------------------------------------

def git(args: Sequence[str], cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def snapshot(root: Path) -> str:
    """A commit of the working tree as it is now, uncommitted and untracked (not ignored) files included,
    made through a temporary index: neither HEAD nor the index changes. The workers check it out, so they
    run the params and code the user sees, committed or not."""
    try:
        head = git(["rev-parse", "--verify", "HEAD"], root)
    except subprocess.CalledProcessError:
        raise InputError(f"{root}: no commit yet - commit the project once, then run again") from None
    index = root / git(["rev-parse", "--git-path", "index"], root)
    temp = root / WORK / "snapshot.index"
    if index.exists():
        shutil.copy2(index, temp)
    env = {**os.environ, "GIT_INDEX_FILE": str(temp)}
    git(["add", "--all"], root, env)
    tree = git(["write-tree"], root, env)
    temp.unlink()
    if git(["rev-parse", "HEAD^{tree}"], root) == tree:
        return head
    return git(["commit-tree", tree, "-p", head, "-m", "bnnrepro repro: the working tree"], root)


def cache_dir(root: Path) -> Path:
    """The DVC cache of the main workspace: the workers' cache too."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return Path(repo.cache.legacy.path).resolve()  # the cache folder (files/ and runs/ below it)


def prepare_workspace(root: Path, workspace: Path, commit: str, cache: Path) -> None:
    """A git worktree of the main workspace at `commit`, with the main workspace's DVC cache and its
    checkpoints/ and runs/ folders. A workspace from an earlier run is reset to `commit`: what it has
    of DVC outputs stays, and DVC checks it like any workspace."""
    if not (workspace / ".git").exists():
        git(["worktree", "add", "--force", "--detach", str(workspace), commit], root)
    else:
        git(["checkout", "--quiet", "--force", "--detach", commit], workspace)
        git(["clean", "--quiet", "--force", "-d"], workspace)
    local = root / ".dvc" / "config.local"  # the user's own settings (remotes, site cache) hold here too
    if local.exists():
        shutil.copy2(local, workspace / ".dvc" / "config.local")
    from dvc.config import Config

    with Config(dvc_dir=str(workspace / ".dvc")).edit("local") as conf:
        conf.setdefault("cache", {}).update(dir=str(cache), type=WORKER_LINKS)
    for name in SHARED:  # `git clean` above removes the links (git ignores `/checkpoints/` as folders only)
        (root / name).mkdir(exist_ok=True)
        if not (workspace / name).is_symlink():
            (workspace / name).symlink_to(root / name, target_is_directory=True)


# ---- one job: what runs on the engine's worker -------------------------------------------------------

def venv_first_on_path(env) -> dict[str, str]:
    """`env` with this Python's bin folder first on PATH: the stages' `python` is this environment's, as
    under `make repro`, also when the coordinator was started as .venv/bin/bnnrepro without activating."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def run_stage(stage: str, workspace: str, log: str, env_update: dict[str, str | None]) -> int:
    """`dvc repro <stage>` in `workspace`, its output in `log`; the exit code. Runs in the engine's job
    process; `env_update` sets (or, for None, removes) variables such as CUDA_VISIBLE_DEVICES."""
    env = venv_first_on_path(os.environ)
    for key, value in env_update.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    with open(log, "w") as out:
        return subprocess.run([sys.executable, "-m", "dvc", "repro", stage], cwd=workspace, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode


# ---- the engine ------------------------------------------------------------------------------------------

@dataclass
class Options:
    jobs: int
    engine: str = "local"  # a submitit cluster: local (processes on this machine) | slurm
    gpus: list[str] = field(default_factory=list)  # local: CUDA devices, handed out one per running job
    gpus_per_job: int = 1  # slurm
    partition: str | None = None  # slurm
    time_min: int = 24 * 60  # slurm: the time limit of one job
    cpus_per_job: int | None = None  # slurm
    slurm: dict[str, str] = field(default_factory=dict)  # further sbatch options (--slurm-arg KEY=VALUE)


def executor(options: Options, folder: Path):
    """The submitit executor of `options.engine`: the same code submits to SLURM and to local processes."""
    import submitit

    if options.engine == "slurm" and shutil.which("sbatch") is None:
        raise UsageError("--engine slurm: sbatch is not on PATH - run on a node that submits SLURM jobs")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=options.engine)
    if options.engine == "slurm":
        params = {"timeout_min": options.time_min, "gpus_per_node": options.gpus_per_job, "nodes": 1,
                  "tasks_per_node": 1, "slurm_additional_parameters": dict(options.slurm)}
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.cpus_per_job:
            params["cpus_per_task"] = options.cpus_per_job
        ex.update_parameters(**params)
    elif options.engine == "local":
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    return ex


def job_env(options: Options, slot: int) -> dict[str, str | None]:
    """The device of the job in `slot`: a GPU of --gpus, round robin; without --gpus, the coordinator's
    own CUDA_VISIBLE_DEVICES (submitit's local jobs would otherwise see none). SLURM sets it per job."""
    if options.engine == "slurm":
        return {}
    if options.gpus:
        return {"CUDA_VISIBLE_DEVICES": options.gpus[slot % len(options.gpus)]}
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}


# ---- the coordinator -------------------------------------------------------------------------------------

@dataclass
class Running:
    job: object  # a submitit Job
    slot: int  # the worktree (and, locally, the GPU) the job uses
    log: Path


@dataclass
class Schedule:
    """The planned stages on their way: waiting -> running -> done or failed; blocked when a stage upstream
    of them failed."""
    plan: dict[str, set[str]]
    free_slots: list[int]
    waiting: dict[str, set[str]] = field(init=False)
    running: dict[str, Running] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    failed: dict[str, Path] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.waiting = dict(self.plan)

    def ready(self) -> list[str]:
        """Waiting stages whose upstream stages are done, as many as there are free slots."""
        return [s for s, upstream in self.waiting.items() if not upstream - set(self.done)][:len(self.free_slots)]

    def start(self, stage: str, submit) -> None:
        slot = self.free_slots.pop(0)
        self.running[stage] = submit(stage, slot)
        del self.waiting[stage]

    def finish(self, stage: str) -> set[str]:
        """Record a finished job; the stages that its failure blocks (none if it succeeded)."""
        r = self.running.pop(stage)
        self.free_slots.append(r.slot)
        if finished_ok(r.job):
            self.done.append(stage)
            return set()
        self.failed[stage] = r.log
        newly_blocked = blocked_by(stage, self.plan) & self.waiting.keys()
        for s in newly_blocked:
            del self.waiting[s]
        self.blocked |= newly_blocked
        return newly_blocked

    def status(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": len(self.waiting), "failed": len(self.failed),
                "blocked": len(self.blocked)}


def log_name(stage: str) -> str:
    return stage.replace("/", "_").replace(":", "_") + ".log"


def finished_ok(job) -> bool:
    """The job's exit code of `dvc repro` is 0; a job that died (killed, timed out) did not finish."""
    try:
        return job.result() == 0
    except Exception:  # submitit's UncompletedJobError / FailedJobError: the job process itself failed
        return False


@contextmanager
def coordinator_lock(root: Path) -> Iterator[None]:
    """One coordinator per workspace (the worktrees under .dvc/tmp/parallel/ are its own): a second one
    stops at once."""
    (root / WORK).mkdir(parents=True, exist_ok=True)
    with open(root / WORK / "lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `bnnrepro repro` runs in {root}; wait for it or use another clone") from None
        yield


def run_parallel(root: Path, plan_: dict[str, set[str]], options: Options) -> Schedule:
    """Run the planned stages, at most `options.jobs` at a time, each in a worktree of its own; the
    schedule at the end (done, failed, blocked)."""
    from tqdm import tqdm

    commit, cache = snapshot(root), cache_dir(root)
    slots = list(range(min(options.jobs, len(plan_))))
    for slot in slots:
        prepare_workspace(root, root / WORK / f"worker{slot}", commit, cache)
    (root / WORK / "logs").mkdir(exist_ok=True)
    ex = executor(options, root / WORK / "jobs")

    def submit(stage: str, slot: int) -> Running:
        log = root / WORK / "logs" / log_name(stage)
        ex.update_parameters(name=stage.split(":")[-1])  # squeue shows the stage, e.g. sgdat@sgdm-cifar10
        job = ex.submit(run_stage, stage, str(root / WORK / f"worker{slot}"), str(log), job_env(options, slot))
        return Running(job, slot, log)

    schedule = Schedule(plan_, slots)
    bar = tqdm(total=len(plan_), unit="stage", dynamic_ncols=True)  # its ETA: the mean stage time so far
    try:
        while schedule.waiting or schedule.running:
            for stage in schedule.ready():
                schedule.start(stage, submit)
            for stage in [s for s, r in schedule.running.items() if r.job.done()]:
                log = schedule.running[stage].log
                newly_blocked = schedule.finish(stage)
                if stage in schedule.failed:
                    bar.write(f"FAILED {stage}: its log is {log}; {len(newly_blocked)} stages after it are blocked")
                bar.update(1 + len(newly_blocked))
            bar.set_postfix(schedule.status(), refresh=False)
            time.sleep(POLL_SECONDS)
    except BaseException:  # Ctrl-C included: stop the jobs, a rerun resumes them
        for r in schedule.running.values():
            r.job.cancel()
        raise
    finally:
        bar.close()
    return schedule


# ---- the command -----------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bnnrepro repro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-j", "--jobs", type=int, help="stages that run at a time (default: one per --gpus, else 2)")
    p.add_argument("--engine", choices=("local", "slurm"), default="local",
                   help="local: processes on this machine; slurm: one SLURM job per stage (sbatch)")
    p.add_argument("--gpus", help="local: CUDA devices to hand out, one per running stage in turn (0,1,2,3)")
    p.add_argument("--partition", help="slurm: the partition")
    p.add_argument("--gpus-per-job", type=int, default=1, help="slurm: GPUs of one job (default 1)")
    p.add_argument("--cpus-per-job", type=int, help="slurm: CPUs of one job")
    p.add_argument("--time-min", type=int, default=24 * 60, help="slurm: time limit of one job in minutes")
    p.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: a further sbatch option, e.g. account=myproject (repeatable)")
    p.add_argument("--dry", action="store_true", help="list the stages that would run in parallel and stop")
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else []
    jobs = args.jobs or len(gpus) or 2
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: at least 1")
    slurm = {}
    for item in args.slurm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--slurm-arg {item}: expected KEY=VALUE")
        slurm[key] = value
    return Options(jobs=jobs, engine=args.engine, gpus=gpus, gpus_per_job=args.gpus_per_job,
                   partition=args.partition, time_min=args.time_min, cpus_per_job=args.cpus_per_job, slurm=slurm)


def dvc_root(start: Path) -> Path:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(start)))
    except NotDvcRepoError:
        raise InputError(f"{start}: not inside a DVC project") from None


def restore(root: Path, stages: Sequence[str] = ()) -> int:
    """`dvc repro [stages]` in the main workspace: each stage a worker ran comes from the run-cache
    ("cached - skipping run"); only stages that cannot be restored (the reports) run here."""
    return subprocess.run([sys.executable, "-m", "dvc", "repro", *stages], cwd=root,
                          env=venv_first_on_path(os.environ)).returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    root = dvc_root(Path.cwd())
    with coordinator_lock(root):
        todo = plan(root)
        print(f"{len(todo)} stages to run, {options.jobs} at a time ({options.engine})", flush=True)
        if args.dry:
            for stage, upstream in todo.items():
                print(f"  {stage}" + (f"  (after {', '.join(sorted(upstream))})" if upstream else ""))
            return 0
        schedule = run_parallel(root, todo, options) if todo else Schedule({}, [])
        if schedule.failed:
            if schedule.done:  # kept here too: a rerun plans only the failed stages and those after them
                print("restoring the finished stages from the run-cache", flush=True)
                restore(root, schedule.done)
            for stage, log in schedule.failed.items():
                print(f"failed: {stage} (log: {log})", flush=True)
            print(f"{len(schedule.done)} stages done, {len(schedule.failed)} failed, {len(schedule.blocked)} not "
                  f"run because a stage before them failed; run the command again to resume", flush=True)
            return 1
        print("restoring every stage from the run-cache: dvc repro", flush=True)
        return restore(root)
