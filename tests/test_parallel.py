"""`bnnrepro repro --jobs 2` (bnnrepro/parallel.py) on a throwaway project of the real stage scripts.

The project (tests/dvc_project.py's tiny LeNet5, one epoch of 1,000 MNIST images) has a data stage, three
training stages, a stage after one of them, and a summary whose `cache: false` output keeps it out of the
run-cache, as the real report stage:

    data -> train@a, train@b, train@long (4 epochs) -> keep_long (copies a file of models/long)
                                                     -> summary (concatenates the metrics)

Checked: two workers give byte for byte the outputs of a serial `dvc repro`, and the coordinator's final
`dvc repro` restores every training from the run-cache and runs only the summary; a training killed
mid-run fails its own stage and blocks only keep_long, and the rerun resumes it from its checkpoint; the
SLURM path through sbatch, srun and sacct stand-ins that run the jobs on this machine."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvc_project import TINY_CONFIG, dvc_executable, project_env, run

DVC = dvc_executable()
pytestmark = pytest.mark.skipif(DVC is None, reason="dvc is not installed (it is a dependency in pyproject.toml)")

RUNS = {"a": (0.01, 1), "b": (0.02, 1), "long": (0.01, 4)}  # train@<run>: lr, epochs

DVC_YAML = """\
stages:
  data:
    cmd: python {stages}/prepare_data.py mnist --out data/prepared/mnist --raw data/raw/mnist --profile ${{profile}}
    params:
      - profile
      - datasets.mnist
    outs:
      - data/prepared/mnist
  train:
    foreach: ${{runs}}
    do:
      cmd: python {stages}/train.py ${{key}} --config tiny.yml --data data/prepared/mnist --device ${{device}}
        --threads ${{threads}} -o optim.lr=${{item.lr}} -o train.epochs=${{item.epochs}}
      deps:
        - tiny.yml
        - data/prepared/mnist
      params:
        - device
        - threads
      outs:
        - models/${{key}}
        - reports/runs/${{key}}/metrics.json
      plots:
        - reports/runs/${{key}}/history.csv:
            cache: false
  keep_long:
    cmd: cp models/long/metadata.json reports/long_metadata.json
    deps:
      - models/long
    outs:
      - reports/long_metadata.json
  summary:
    cmd: cat {metrics} > reports/summary.json
    deps:
{metric_deps}
    outs:
      - reports/summary.json:
          cache: false
"""

PARAMS_YAML = """\
device: auto
threads: 1
profile: quick
datasets:
  mnist: {quick: true}
"""

PRODUCTS = ["data/prepared/mnist/data.safetensors", "reports/summary.json", "reports/long_metadata.json",
            *(f"models/{r}/{f}" for r in RUNS for f in ("model.safetensors", "metadata.json")),
            *(f"reports/runs/{r}/{f}" for r in RUNS for f in ("metrics.json", "history.csv"))]


def write_project(folder: Path, repo_root: Path, env: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    metrics = [f"reports/runs/{r}/metrics.json" for r in RUNS]
    (folder / "tiny.yml").write_text(TINY_CONFIG)
    runs = "".join(f"  {r}: {{lr: {lr}, epochs: {epochs}}}\n" for r, (lr, epochs) in RUNS.items())
    (folder / "params.yaml").write_text(f"{PARAMS_YAML}runs:\n{runs}")
    (folder / "dvc.yaml").write_text(DVC_YAML.format(stages=shlex.quote(str(repo_root / "stages")),
                                                     metrics=" ".join(metrics),
                                                     metric_deps="\n".join(f"      - {m}" for m in metrics)))
    (folder / ".gitignore").write_text("/data/raw/\n/checkpoints/\n/runs/\n")
    run(["git", "init", "--quiet"], folder, env)
    run([DVC, "init", "--quiet"], folder, env)
    (folder / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    run(["git", "add", "-A"], folder, env)
    run(["git", "commit", "--quiet", "-m", "parallel test pipeline"], folder, env)
    return folder


def products(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in PRODUCTS}


def bnnrepro_repro(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnnrepro.cli", "repro", *args], cwd=folder, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The reference: the project after a plain, serial `dvc repro`; (folder, its environment)."""
    from conftest import MIRROR, REPO_ROOT, offline_env

    if MIRROR is None:
        pytest.skip("no dataset mirror")
    env = offline_env(project_env(REPO_ROOT, MIRROR))
    folder = write_project(tmp_path_factory.mktemp("parallel") / "serial", REPO_ROOT, env)
    run([DVC, "repro"], folder, env)
    return folder, env


def training_process(workspace_root: Path, run_name: str) -> int | None:
    """The pid of `stages/train.py <run_name>` running in a workspace under `workspace_root` (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except (OSError, ValueError):
            continue
        if (any(arg.endswith(b"stages/train.py") for arg in cmdline) and run_name.encode() in cmdline
                and cwd.startswith(str(workspace_root))):
            return int(proc.name)
    return None


def kill_when_checkpointed(coordinator: subprocess.Popen, folder: Path, run_name: str) -> None:
    """SIGKILL the training `run_name` once it has written a checkpoint (after its first epoch)."""
    deadline = time.time() + 300
    while time.time() < deadline and coordinator.poll() is None:
        if any((folder / "checkpoints" / run_name).glob("*.pt")):
            pid = training_process(folder / ".dvc" / "tmp" / "parallel", run_name)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.05)
    raise AssertionError(f"train@{run_name} never wrote a checkpoint")


@pytest.mark.pipeline
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the training process in /proc")
def test_two_workers_equal_a_serial_run_and_resume_a_killed_training(serial, tmp_path, repo_root):
    reference, env = serial
    folder = write_project(tmp_path / "parallel", repo_root, env)

    # first run: train@long is killed after its first epoch; its dependant keep_long is blocked, the rest runs
    coordinator = subprocess.Popen([sys.executable, "-m", "bnnrepro.cli", "repro", "--jobs", "2"], cwd=folder,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_when_checkpointed(coordinator, folder, "long")
    out = coordinator.communicate(timeout=600)[0]
    assert coordinator.returncode == 1, out
    log = folder / ".dvc/tmp/parallel/logs/train@long.log"
    assert f"failed: train@long (log: {log})" in out and log.is_file()
    assert "1 not run because a stage before them failed" in out
    assert any((folder / "checkpoints" / "long").glob("*.pt"))  # what the rerun resumes from
    for stage in ("data", "train@a", "train@b"):  # independent of the failure: finished in their workspaces
        assert "Updating lock file" in (folder / f".dvc/tmp/parallel/logs/{stage}.log").read_text()
    assert not (folder / ".dvc/tmp/parallel/logs/keep_long.log").exists()
    for stage in ("data", "train@a", "train@b"):  # and restored here from the run-cache, not run again
        assert f"Stage '{stage}' is cached - skipping run" in out

    # the rerun: only train@long (resumed) and keep_long run; the final dvc repro restores all but the summary
    proc = bnnrepro_repro(folder, env, "--jobs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 stages to run" in proc.stdout
    assert json.loads((folder / "runs/timing/long.json").read_text())["resumed_from_epoch"] >= 1
    final = proc.stdout.split("restoring every stage from the run-cache")[1]
    for stage in ("train@long", "keep_long"):
        assert f"Stage '{stage}' is cached - skipping run" in final
    assert [line for line in final.splitlines() if line.startswith("Running stage")] == ["Running stage 'summary':"]
    assert products(folder) == products(reference)
    assert "up to date" in run([DVC, "status"], folder, env)


# SLURM's commands as submitit calls them, running each job at once on this machine: sbatch starts the job
# script in the background (job ids 1, 2, ...; SLURM's variables set; its output away from sbatch's, which
# submitit reads to the end), srun runs its command into the log files it is given, and sacct reports
# RUNNING until a job's script has exited, then COMPLETED or FAILED. The exit code is written aside and
# renamed into place: sacct reading a half-written (empty) file would report a finished job as FAILED.
FAKE_SLURM = {
    "sbatch": """\
id=$(cat "$FAKE_SLURM_DIR/next" 2>/dev/null || echo 1); echo $((id + 1)) > "$FAKE_SLURM_DIR/next"
cp "$1" "$FAKE_SLURM_DIR/job$id.sh"
(export SLURM_JOB_ID=$id SLURM_NTASKS=1 SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0
 SLURM_JOB_NODELIST=localhost; bash "$1"; echo $? > "$FAKE_SLURM_DIR/job$id.part"
 mv "$FAKE_SLURM_DIR/job$id.part" "$FAKE_SLURM_DIR/job$id.exit") < /dev/null > /dev/null 2>&1 &
echo "Submitted batch job $id"
""",
    "srun": """\
out=/dev/null; err=/dev/null
while [[ $1 == --* ]]; do
  case $1 in
    --output) out=${2//%j/$SLURM_JOB_ID}; shift 2;;
    --error) err=${2//%j/$SLURM_JOB_ID}; shift 2;;
    *) shift;;
  esac
done
out=${out//%t/0}; err=${err//%t/0}; mkdir -p "$(dirname "$out")" "$(dirname "$err")"
exec "$@" > "$out" 2> "$err"
""",
    "sacct": """\
echo "JobID|State|NodeList"
while [[ $# -gt 0 ]]; do
  if [[ $1 == -j ]]; then
    f="$FAKE_SLURM_DIR/job$2.exit"
    if [[ ! -f $f ]]; then s=RUNNING; elif [[ $(cat "$f") == 0 ]]; then s=COMPLETED; else s=FAILED; fi
    echo "$2|$s|localhost"; shift
  fi
  shift
done
""",
    "scancel": "exit 0\n",
}


@pytest.mark.pipeline
def test_slurm_path_through_sbatch_stand_ins(serial, tmp_path, repo_root):
    """`--engine slurm`: one sbatch job per stage with the partition, GPUs and time asked for; this project
    shares the serial project's DVC cache (as a team's clones would), so every job restores its stage
    from the run-cache and the result equals the serial one."""
    reference, env = serial
    bin_dir = tmp_path / "slurm"
    bin_dir.mkdir()
    for name, script in FAKE_SLURM.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + script)
        (bin_dir / name).chmod(0o755)
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "FAKE_SLURM_DIR": str(bin_dir)}
    folder = write_project(tmp_path / "clone", repo_root, env)
    (folder / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {reference / '.dvc' / 'cache'}\n")

    proc = bnnrepro_repro(folder, env, "--engine", "slurm", "--jobs", "3", "--partition", "gpu-test",
                          "--time-min", "90", "--slurm-arg", "account=bnn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scripts = sorted(bin_dir.glob("job*.sh"))
    assert len(scripts) == 5  # data, three trainings, keep_long
    assert {line for script in scripts for line in script.read_text().splitlines() if "--job-name" in line} == {
        f"#SBATCH --job-name={stage}" for stage in ("data", "train@a", "train@b", "train@long", "keep_long")}
    for script in scripts:
        text = script.read_text()
        for flag in ("--partition=gpu-test", "--gpus-per-node=1", "--time=90", "--account=bnn"):
            assert f"#SBATCH {flag}\n" in text
    for stage in ("data", "train@a", "train@b", "train@long", "keep_long"):
        assert "is cached - skipping run" in (folder / f".dvc/tmp/parallel/logs/{stage}.log").read_text()
    assert products(folder) == products(reference)


def test_a_failure_blocks_its_dependants_only():
    from bnnrepro.parallel import blocked_by

    plan = {"data": set(), "train@a": {"data"}, "train@long": {"data"}, "keep_long": {"train@long", "data"},
            "eval_long": {"keep_long", "data"}}
    assert blocked_by("train@long", plan) == {"keep_long", "eval_long"}
    assert blocked_by("data", plan) == {"train@a", "train@long", "keep_long", "eval_long"}
    assert blocked_by("train@a", plan) == set()


def test_workers_check_out_the_working_tree_as_it_is(tmp_path):
    """Uncommitted edits and new files are in the snapshot; HEAD and the index stay as they were."""
    from bnnrepro.parallel import WORK, git, snapshot

    env = project_env(Path.cwd(), None)
    run(["git", "init", "--quiet"], tmp_path, env)
    (tmp_path / ".gitignore").write_text("/.dvc/tmp/\n")
    (tmp_path / "params.yaml").write_text("profile: quick\n")
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "commit", "--quiet", "-m", "project"], tmp_path, env)
    (tmp_path / WORK).mkdir(parents=True)
    head = git(["rev-parse", "HEAD"], tmp_path)
    assert snapshot(tmp_path) == head  # a clean tree is HEAD itself

    (tmp_path / "params.yaml").write_text("profile: paper\n")
    (tmp_path / "new.yml").write_text("lr: 0.1\n")
    commit = snapshot(tmp_path)
    assert git(["show", f"{commit}:params.yaml"], tmp_path) == "profile: paper"
    assert git(["show", f"{commit}:new.yml"], tmp_path) == "lr: 0.1"
    assert git(["rev-parse", "HEAD"], tmp_path) == head
    assert git(["diff", "--cached", "--name-only"], tmp_path) == ""  # nothing staged
    assert git(["ls-files", "--others", "--exclude-standard"], tmp_path) == "new.yml"  # still untracked


def test_a_second_coordinator_in_the_same_workspace_stops_at_once(tmp_path):
    from bnnrepro.errors import UsageError
    from bnnrepro.parallel import coordinator_lock

    with coordinator_lock(tmp_path):
        with pytest.raises(UsageError, match="another `bnnrepro repro` runs"):
            with coordinator_lock(tmp_path):
                pass
    with coordinator_lock(tmp_path):  # free again once the first has ended
        pass
