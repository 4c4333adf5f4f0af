"""Launch scripts and tools/cpu_quota.sh (syntax, shellcheck, dry runs, usage) and the multi-host start-up decision
from the environment."""
import shutil
import subprocess
from pathlib import Path

import pytest

from ovseg_jax.train import distributed

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "launch" / "tpu_pod.sh", REPO / "launch" / "gpu_slurm.sh", REPO / "tools" / "cpu_quota.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
  subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
  out = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("args", [[], ["2"], ["0", "true"], ["fast", "true"]])
def test_cpu_quota_refuses_a_missing_command_or_a_bad_factor_with_its_usage(args):
  out = subprocess.run(["bash", str(REPO / "tools" / "cpu_quota.sh"), *args], capture_output=True, text=True)
  assert out.returncode == 2 and "usage:" in out.stderr and "FACTOR > 0" in out.stderr


def _tpu_dry_run(*args, env=None):
  return subprocess.run(["bash", str(SCRIPTS[0]), "--dry-run", *args], capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=30)


@pytest.mark.parametrize("config", ["configs/sseg_cc12m.py", "configs/selftrain_voc.py", "configs/sseg_demo.py:tiny"])
def test_tpu_dry_run_runs_the_one_training_entry_point_for_any_config(config):
  out = _tpu_dry_run("--project=p", "--zone=z", "--accelerator-type=v4-32", "--name=n", f"--config={config}",
                     "--workdir=gs://b/w", "--", "--config.teacher_workdir=gs://b/t")
  assert out.returncode == 0, out.stderr
  assert f"python3 -m ovseg_jax.main --config={config} --workdir=gs://b/w --config.teacher_workdir=gs://b/t" \
      in out.stdout


def test_tpu_dry_run_prints_create_copy_install_run_delete_in_order():
  out = _tpu_dry_run("--project=proj", "--zone=us-central2-b", "--accelerator-type=v5p-64", "--name=run7",
                     "--runtime-version=v2-alpha-tpuv5", "--config=configs/sseg_cc12m.py",
                     "--workdir=gs://bucket/runs/a", "--", "--config.batch_size=1024")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  expected = [
      "gcloud compute tpus tpu-vm create run7 --zone=us-central2-b --project=proj --accelerator-type=v5p-64 "
      "--version=v2-alpha-tpuv5",
      "gcloud compute tpus tpu-vm scp ",
      "pip install -q -r requirements.txt",
      "OVSEG_DISTRIBUTED=tpu python3 -m ovseg_jax.main --config=configs/sseg_cc12m.py "
      "--workdir=gs://bucket/runs/a --config.batch_size=1024",
      "gcloud compute tpus tpu-vm delete run7 --zone=us-central2-b --project=proj --quiet",
  ]
  positions = [next(i for i, line in enumerate(lines) if part in line) for part in expected]
  assert positions == sorted(positions), out.stdout
  assert all(line.startswith("+ ") for line in lines), out.stdout
  assert all("--worker=all" in line for line in lines if "tpu-vm ssh" in line or "tpu-vm scp" in line)


def test_tpu_dry_run_variants_and_environment_defaults():
  env = {"OVSEG_TPU_PROJECT": "p", "OVSEG_TPU_ZONE": "z", "OVSEG_CONFIG": "c.py", "OVSEG_WORKDIR": "gs://b/w"}
  out = _tpu_dry_run("--queued", "--spot", "--keep", "--git=https://example.com/ovseg_jax.git", env=env)
  assert out.returncode == 0, out.stderr
  assert "queued-resources create ovseg-user --node-id=ovseg-user --zone=z --project=p" in out.stdout
  assert "--spot" in out.stdout and "git clone --depth=1 https://example.com/ovseg_jax.git" in out.stdout
  assert "tpu-vm scp" not in out.stdout and " delete " not in out.stdout  # --keep.
  assert "queued-resources describe ovseg-user" in out.stdout  # Waits for the slice before using it.
  missing = _tpu_dry_run(env={"OVSEG_WORKDIR": "/local"})
  assert missing.returncode == 2 and "--project (OVSEG_TPU_PROJECT)" in missing.stderr
  local = _tpu_dry_run(env={**env, "OVSEG_WORKDIR": "/local"})
  assert local.returncode == 2 and "gs://" in local.stderr


def test_slurm_dry_run_prints_one_task_per_node_srun():
  out = subprocess.run(["bash", str(SCRIPTS[1]), "--dry-run", "--config.batch_size=64"], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "OVSEG_CONFIG": "configs/c.py",
                                       "OVSEG_WORKDIR": "/shared/w", "SLURM_SUBMIT_DIR": str(REPO)})
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == ("+ srun --ntasks-per-node=1 --kill-on-bad-exit=1 python -m ovseg_jax.main "
                                "--config=configs/c.py --workdir=/shared/w --config.batch_size=64")
  header = SCRIPTS[1].read_text()
  assert "#SBATCH --ntasks-per-node=1" in header and "#SBATCH --gpus-per-node=" in header


# --- distributed_settings: a pure function of the environment.

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
         "SLURM_STEP_NODELIST": "gpu-a[017-019,030]", "SLURM_JOB_NODELIST": "other1"}


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None),  # A single-host TPU VM.
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3", "TPU_WORKER_ID": "1"}, distributed.DistributedSettings("tpu")),
    ({"OVSEG_DISTRIBUTED": "tpu"}, distributed.DistributedSettings("tpu")),
    (SLURM, distributed.DistributedSettings("slurm", "gpu-a017:8718", 4, 3)),
    ({**SLURM, "OVSEG_COORDINATOR_PORT": "1234"}, distributed.DistributedSettings("slurm", "gpu-a017:1234", 4, 3)),
    ({**SLURM, "OVSEG_DISTRIBUTED": "off"}, None),
    ({**SLURM, "OVSEG_COORDINATOR_ADDRESS": "10.1.1.1:5000", "OVSEG_NUM_PROCESSES": "2", "OVSEG_PROCESS_ID": "1"},
     distributed.DistributedSettings("explicit", "10.1.1.1:5000", 2, 1)),
])
def test_distributed_settings_from_environment(env, expected):
  assert distributed.distributed_settings(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"OVSEG_COORDINATOR_ADDRESS": "h:1", "OVSEG_NUM_PROCESSES": "2"}, "OVSEG_PROCESS_ID not"),
    ({"OVSEG_COORDINATOR_ADDRESS": "h:1", "OVSEG_NUM_PROCESSES": "2", "OVSEG_PROCESS_ID": "2"}, r"\[0, "),
    ({"OVSEG_COORDINATOR_ADDRESS": "h:1", "OVSEG_NUM_PROCESSES": "two", "OVSEG_PROCESS_ID": "0"}, "integer"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, "SLURM_STEP_NODELIST"),
    ({"OVSEG_DISTRIBUTED": "yes"}, "'auto'"),
])
def test_distributed_settings_reject_inconsistent_environments(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.distributed_settings(env)


@pytest.mark.parametrize("nodelist, host", [("node7", "node7"), ("gpu[003-005,9],cpu1", "gpu003"),
                                            ("r[1-2]-n[07,09]", "r1-n07"), ("a,b[1-3]", "a")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
  assert distributed.first_host(nodelist) == host


def test_single_process_initialisation_does_nothing(monkeypatch):
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: pytest.fail(f"initialize({kw})"))
  assert distributed.initialize_distributed({}) is None
