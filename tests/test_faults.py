"""Faults a pod run meets: hosts preempted at different moments, poisoned and damaged checkpoints, torn records."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ovseg_jax.train import checkpoint, loop, progress, sharding

REPO = Path(__file__).resolve().parents[1]

# One host of a two-process job: a tiny replicated state, 0.3 s steps, the shared loop and checkpointer.
HOST = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from ovseg_jax.train import checkpoint, loop, sharding
    config = ml_collections.ConfigDict(dict(total_steps=1000, batch_size=2, seed=0, log_every_steps=1000,
                                            max_train_minutes=0.0, checkpoint=dict(every_steps=1000)))
    mesh = sharding.make_mesh((("data", -1),))
    rep = sharding.replicated(mesh)
    state = {"w": jax.device_put(jnp.zeros(4), rep)}
    jitted = jax.jit(lambda s, b: ({"w": s["w"] + jnp.mean(b["x"])}, {"loss": jnp.mean(b["x"])}),
                     out_shardings=(rep, rep))
    steps = [0]
    def train_step(s, b, key):
      steps[0] += 1
      print(f"step {steps[0]}", flush=True)
      time.sleep(0.3)
      return jitted(s, b)
    batches = iter(lambda: {"x": np.ones((1, 4), np.float32)}, None)
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", keep=2)
    loop.run(config, workdir, mesh, train_step, state, batches, ckpt, 0)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_hosts_preempted_at_different_moments_checkpoint_the_same_step_and_exit_75(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(REPO)}
  port = _free_port()
  hosts = [subprocess.Popen([sys.executable, "-c", HOST, str(port), str(i), str(tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    for line in hosts[0].stdout:  # Host 0 is signalled in its third step, host 1 about three steps later.
      if line.strip() == "step 3":
        break
    hosts[0].send_signal(signal.SIGTERM)
    time.sleep(1.0)
    hosts[1].send_signal(signal.SIGTERM)
    outputs = [h.communicate(timeout=60) for h in hosts]
  finally:
    for h in hosts:
      h.kill()
  for h, (_, err) in zip(hosts, outputs):
    assert h.returncode == loop.PREEMPTED_EXIT_STATUS, err[-2000:]
  last_steps = [max([3 if i == 0 else 0] + [int(n) for n in re.findall(r"^step (\d+)$", out, re.M)])
                for i, (out, _) in enumerate(outputs)]
  saved = [int(line.split("at step ")[1].split(";")[0]) for line in outputs[0][0].splitlines() if "SIGTERM" in line]
  assert len(saved) == 1 and last_steps == [saved[0], saved[0]], outputs[0][0]
  assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == [str(saved[0])]


def _toy_run(workdir, poison_at=None, total_steps=6):
  """The shared loop on a replicated toy state; from step `poison_at` on, the state holds a NaN."""
  config = ml_collections.ConfigDict(dict(total_steps=total_steps, batch_size=8, seed=0, log_every_steps=100,
                                          max_train_minutes=0.0, checkpoint=dict(every_steps=2)))
  mesh = sharding.make_mesh((("data", -1),))
  rep = sharding.replicated(mesh)

  def step_fn(s, b):
    w = s["w"] + jnp.mean(b["x"])
    return {"w": jnp.where(w[0] == poison_at, jnp.nan, w), "count": s["count"] + 1}, {"loss": jnp.mean(b["x"])}
  train_step = jax.jit(lambda s, b, k: step_fn(s, b), out_shardings=(rep, rep))
  state = jax.device_put({"w": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}, rep)
  batches = iter(lambda: {"x": np.ones((8, 2), np.float32)}, None)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=3)
  try:
    return loop.run(config, workdir, mesh, train_step, state, batches, ckpt, 0)
  finally:
    ckpt.close()


def test_a_nan_state_is_never_saved_and_the_previous_checkpoint_is_kept(tmp_path):
  with pytest.raises(progress.NonFiniteError, match="NaN/Inf after step 4; it was not saved.*checkpoint: 2"):
    _toy_run(tmp_path, poison_at=3)  # Step 3 makes w NaN; its loss stays finite, so only the state shows it.
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
  assert ckpt._manager.all_steps() == [2]
  template = {"w": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}
  state, data = ckpt.restore_latest(template)
  ckpt.close()
  np.testing.assert_array_equal(state["w"], [2, 2, 2])
  assert data == {"step": 2}


def _empty_array_files(step_dir: Path):
  for f in step_dir.rglob("*"):
    if f.is_file() and f.parent.name == "d":  # tensorstore's data files
      f.write_bytes(b"")


# Reading a damaged checkpoint, orbax's event loop closes with tensorstore reads still pending; when they finish
# their callbacks find it closed and Python prints "Event loop is closed" (harmless; nothing is read after it).
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_with_a_message(tmp_path, capsys):
  _toy_run(tmp_path, total_steps=4)
  _empty_array_files(tmp_path / "checkpoints" / "4")
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
  template = {"w": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}
  with pytest.raises(checkpoint.CheckpointCorruptError, match="checkpoints/4: .*unreadable"):
    ckpt.restore(4, template)
  state, data = ckpt.restore_latest(template)
  printed = capsys.readouterr().out
  assert data == {"step": 2} and int(state["count"]) == 2
  assert "checkpoints/4" in printed and "resuming from checkpoint 2 instead of the damaged [4]" in printed
  assert (tmp_path / "checkpoints" / "4.corrupt").is_dir() and ckpt._manager.all_steps() == [2]
  ckpt.save(4, state, {"step": 4})  # The resumed run can write step 4 again.
  ckpt.close()
  _empty_array_files(tmp_path / "checkpoints" / "2")
  _empty_array_files(tmp_path / "checkpoints" / "4")
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  with pytest.raises(checkpoint.CheckpointCorruptError, match=r"no readable checkpoint .*damaged: \[4, 2\]"):
    ckpt.restore_latest(template)
  ckpt.close()


def test_a_config_mismatch_is_not_taken_for_damage(tmp_path):
  _toy_run(tmp_path, total_steps=2)
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", async_save=False)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="different shapes"):
    ckpt.restore_latest({"w": jnp.zeros(5), "count": jnp.zeros((), jnp.int32)})
  ckpt.close()
  assert (tmp_path / "checkpoints" / "2").is_dir()


def test_a_torn_last_metrics_line_is_dropped_and_the_file_rewritten_whole(tmp_path, capsys):
  lines = [json.dumps({"step": s, "loss": float(s)}) for s in (2, 4)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')
  logger = progress.MetricLogger(tmp_path, start_step=4)
  logger.write(6, {"loss": 0.5})
  logger.close()
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in logged] == [(2, 2.0), (4, 4.0), (6, 0.5)]
  assert "dropped unreadable line(s) [3]" in capsys.readouterr().out
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # No temporary file left.


@pytest.mark.parametrize("key, value, message", [
    ("log_every_steps", 0, "log_every_steps=0 must be a whole number >= 1"),
    ("checkpoint.every_steps", -3, "checkpoint.every_steps=-3 must be a whole number >= 1"),
    ("data.crop_scale", (0.5,), r"data.crop_scale=\(0.5,\) must be a \(min, max\) pair with 0.0 < min <= max <= 1.0"),
    ("optimizer.lr", float("nan"), "optimizer.lr=nan must be a finite number > 0"),
])
def test_bad_values_stop_the_start_before_anything_is_built_or_written(key, value, message, tmp_path, monkeypatch):
  from configs import sseg_demo
  from ovseg_jax.methods.sseg import setup, trainer
  from ovseg_jax.train import config_checks
  config = sseg_demo.get_config("tiny")
  parent, name = (config, key) if "." not in key else (config_checks.value(config, key.rsplit(".", 1)[0]),
                                                       key.rsplit(".", 1)[1])
  parent[name] = value
  monkeypatch.setattr(setup, "build", lambda *a, **k: pytest.fail("built before the config was checked"))
  with pytest.raises(config_checks.ConfigError, match=message):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_self_training_checks_its_crop_values_by_name(tmp_path):
  from configs import selftrain_demo
  from ovseg_jax.methods.selftrain import trainer
  from ovseg_jax.train import config_checks
  config = selftrain_demo.get_config("tiny")
  config.data.ratio_range = (2.0, 0.5)
  with pytest.raises(config_checks.ConfigError, match="data.ratio_range"):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def _main(*args):
  return subprocess.run([sys.executable, "-m", "ovseg_jax.main", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_command_line_faults_give_one_line_and_a_status(tmp_path):
  start = time.monotonic()
  missing = _main("--config=configs/no_such_config.py", f"--workdir={tmp_path / 'a'}")
  assert missing.returncode == 2 and "configs/no_such_config.py" in missing.stderr
  assert "No such file" in missing.stderr and "Traceback" not in missing.stderr
  assert time.monotonic() - start < 60 and not (tmp_path / "a").exists()
  zero = _main("--config=configs/sseg_demo.py:tiny", f"--workdir={tmp_path / 'b'}", "--config.log_every_steps=0")
  assert zero.returncode == 2 and "Traceback" not in zero.stderr
  assert zero.stderr.strip().splitlines()[-1] == ("error: log_every_steps=0 must be a whole number >= 1 (e.g. "
                                                  "--config.log_every_steps=100).")
  assert not (tmp_path / "b").exists()
  huge = _main("--config=configs/sseg_demo.py:tiny", f"--workdir={tmp_path / 'c'}", "--config.optimizer.lr=1e30",
               f"--config.data.demo_root={tmp_path / 'demo'}")
  assert huge.returncode == 1 and "Traceback" not in huge.stderr and "cannot schedule" not in huge.stderr
  assert re.search(r"error: non-finite \w+=nan at step \d; training stopped", huge.stderr.strip().splitlines()[-1])


class _FakeGcs:
  """gs://BUCKET/PATH served from ROOT/BUCKET/PATH: an etils.epath backend, plus the two writers that bypass epath
  (TensorBoard's own gfile and orbax's tensorstore GCS driver) pointed at the same directory."""

  def __init__(self, root: Path):
    from etils.epath import backend
    self.root, self._os = root, backend.os_backend

  def local(self, path) -> str:
    path = os.fspath(path)
    return str(self.root / path[len("gs://"):]) if path.startswith("gs://") else path

  def _remote(self, path: str) -> str:
    return "gs://" + os.path.relpath(path, self.root) if path.startswith(str(self.root)) else path

  def __getattr__(self, name):  # open, exists, isdir, listdir, makedirs, mkdir, remove, rmtree, stat, ...
    method = getattr(self._os, name)
    return lambda path, *args, **kwargs: method(self.local(path), *args, **kwargs)

  def rename(self, path, dst):
    self._os.rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    self._os.replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite=False):
    self._os.copy(self.local(path), self.local(dst), overwrite=overwrite)

  def glob(self, pattern):
    return [self._remote(p) for p in self._os.glob(self.local(pattern))]

  def walk(self, top, **kwargs):
    for root, dirs, files in self._os.walk(self.local(top), **kwargs):
      yield self._remote(os.fspath(root)), dirs, files


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  from etils.epath import gpath
  from ovseg_jax.train import checkpoint as checkpoints
  fake = _FakeGcs(tmp_path / "gcs")
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.setattr(gpath, "_PREFIX_TO_BACKEND", {**gpath._PREFIX_TO_BACKEND, "gs": fake})
  summary_writer, manager = progress.metric_writers.SummaryWriter, checkpoints.ocp.CheckpointManager
  monkeypatch.setattr(progress.metric_writers, "SummaryWriter", lambda logdir, **kw: summary_writer(fake.local(logdir)))
  monkeypatch.setattr(checkpoints.ocp, "CheckpointManager",
                      lambda directory, **kw: manager(checkpoints.epath.Path(fake.local(directory)), **kw))
  cwd = tmp_path / "cwd"  # pathlib would turn gs://b/x into a local gs:/b/x directory here.
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return fake


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_a_gs_workdir_holds_every_file_a_run_and_predict_write(fake_gcs, tmp_path, capsys):
  from configs import sseg_demo
  from ovseg_jax import predict
  from ovseg_jax.methods.selftrain import pseudo_labels
  from ovseg_jax.methods.sseg import trainer
  from PIL import Image
  config = sseg_demo.get_config("tiny")
  config.data.demo_root = str(tmp_path / "demo")
  trainer.train_and_evaluate(config, "gs://bucket/run")
  run = tmp_path / "gcs" / "bucket" / "run"
  names = {p.name for p in run.iterdir()}
  assert {"config.json", "metrics.jsonl", "parameter_overview.txt", "results.json", "results.md", "overlays",
          "checkpoints"} <= names and any(n.startswith("events.out.tfevents") for n in names), names
  assert (run / "checkpoints" / "6").is_dir() and list((run / "overlays").glob("*.png"))

  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "photo.png")
  predict.run(SimpleNamespace(classes="star,background", image=str(tmp_path / "photo.png"),
                              checkpoint="gs://bucket/run", output="gs://bucket/predicted/photo.png",
                              background="threshold", background_threshold=0.3, scale=1.0, classifier="learned",
                              clip=""))
  assert Image.open(tmp_path / "gcs" / "bucket" / "predicted" / "photo.png").size[0] > 50

  counts = pseudo_labels.label_images(iter([("k1", np.zeros((8, 8, 3), np.uint8))]),
                                      lambda b: (np.ones(b.shape[:3], int), np.full(b.shape[:3], 0.5)),
                                      "gs://bucket/run/pseudo_labels", num_classes=3, batch_size=1)
  assert counts["labelled"] == 1
  _, labels, _ = pseudo_labels.load_pseudo_labelled("gs://bucket/run/pseudo_labels",
                                                    [("k1", np.zeros((8, 8, 3), np.uint8))])
  assert (labels == 1).all() and (run / "pseudo_labels" / "k1.png").is_file()
  assert list((tmp_path / "cwd").iterdir()) == []  # Nothing landed on the local disk instead.
