"""Trainer: exact resume from a checkpoint, and the main entry point resuming and evaluating a tiny demo run."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import sseg_demo
from ovseg_jax.methods.sseg import data, setup as sseg_setup, trainer as train
from ovseg_jax.train import checkpoint, loop, sharding

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
  config = sseg_demo.get_config("tiny")
  mesh = sharding.make_mesh(config.mesh.axes)
  trainable = sseg_setup.build(config, mesh)
  return config, mesh, trainable.model, trainable.tx, trainable.schedule, trainable.state, trainable.step


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  size, length = config.data.image_size, config.data.context_length
  for _ in range(n):
    tokens = rng.integers(1, 1000, (config.batch_size, length)).astype(np.int32)
    tokens[:, 0], tokens[:, 5], tokens[:, 6:] = 49406, 49407, 0
    yield {"image": rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8), "tokens": tokens}


def _run(step_fn, state, batches, mesh, key):
  for batch in batches:
    state, metrics = step_fn(state, sharding.host_batch_to_global(batch, mesh), key, None)
  return state, metrics


def test_resume_continues_exact_step_and_parameters(setup, tmp_path):
  config, mesh, model, tx, schedule, state, step_fn = setup
  key = jax.random.key(1)
  batches = list(_batches(config, 4))
  state = jax.tree.map(lambda x: x.copy(), state)  # The fixture's state is donated below.
  state, _ = _run(step_fn, state, batches[:2], mesh, key)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=2, async_save=True)
  ckpt.save(2, state, {"step": 2})
  ckpt.wait()
  straight, metrics = _run(step_fn, state, batches[2:], mesh, key)
  assert np.isfinite(float(metrics["loss"]))

  resumed, data_position = ckpt.restore_latest(sseg_setup.build_state(config, mesh, abstract=True)[3])
  ckpt.close()
  assert int(resumed.step) == 2 and data_position == {"step": 2}
  resumed, _ = _run(step_fn, resumed, batches[2:], mesh, key)
  assert int(resumed.step) == int(straight.step) == 4
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Parameters really moved, so the equality above is not trivially true.
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(setup[5].params), jax.tree.leaves(straight.params))]
  assert any(moved)


def test_checkpoint_from_another_config_is_rejected_with_a_clear_message(setup, tmp_path):
  config, mesh, *_ , state, _ = setup
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=1, async_save=False)
  ckpt.save(1, state, {"step": 1})
  other = config.copy_and_resolve_references()
  other.model.embed_dim = 48
  other_state = sseg_setup.build_state(other, mesh, abstract=True)[3]  # Shapes are what is compared.
  with pytest.raises(checkpoint.CheckpointMismatchError, match="does not match.*different shapes"):
    ckpt.restore_latest(other_state)
  ckpt.close()


def _main(workdir, *overrides, demo_root=None):
  cmd = [sys.executable, "-m", "ovseg_jax.main", "--config=configs/sseg_demo.py:tiny", f"--workdir={workdir}",
         f"--config.data.demo_root={demo_root or workdir.parent / 'demo'}", *overrides]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_main_resumes_evaluates_and_refuses_another_model(demo_workdir, tmp_path):
  # The first run is the session's 6-step run of the same config (tests/conftest.py), trained by the code `main`
  # runs; `main` itself refuses another model on it, then resumes it to step 8 and evaluates.
  workdir = tmp_path / "run"
  shutil.copytree(demo_workdir, workdir)
  demo_root = demo_workdir.parent / "demo"
  rows = {r["predictor"]: r for r in json.loads((workdir / "results.json").read_text())}
  assert set(rows) == {"S-Seg", "uniform random", "all background"} and rows["S-Seg"]["step"] == 6
  assert rows["S-Seg"]["threshold_chosen_on"] == "tune"
  for row in rows.values():
    assert 0.0 <= row["miou"] <= 1.0 and 0.0 <= row["object_miou"] <= 1.0
  assert (workdir / "results.md").exists() and list((workdir / "overlays").glob("*.png"))
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in logged)

  config_json = (workdir / "config.json").read_text()
  refused = _main(workdir, "--config.model.embed_dim=48", demo_root=demo_root)  # Refused, the config is kept.
  assert refused.returncode == 2 and "does not match" in refused.stderr and "Traceback" not in refused.stderr
  assert (workdir / "config.json").read_text() == config_json

  metrics = (workdir / "metrics.jsonl").read_text()
  (workdir / "metrics.jsonl").write_text(metrics[:-20])  # A line cut by a kill in an older version.
  second = _main(workdir, "--config.total_steps=8", demo_root=demo_root)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stdout and "at step 6" in second.stdout
  assert "dropped unreadable line(s) [3]" in second.stdout
  assert [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [2, 4, 8]
  rows = {r["predictor"]: r for r in json.loads((workdir / "results.json").read_text())}
  assert {r["step"] for r in rows.values()} == {8} and rows["S-Seg"]["threshold_chosen_on"] == "tune"


def test_misspelt_config_key_fails_at_start_naming_the_key(tmp_path):
  out = _main(tmp_path / "run", "--config.optimizer.lrr=0.1")
  assert out.returncode != 0
  assert "lrr" in out.stderr and "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()


def test_sigterm_requests_a_checkpoint_and_exit_instead_of_killing_the_run():
  import os
  import signal
  preemption = loop.Preemption()
  try:
    assert not preemption.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested
  finally:
    preemption.restore()
  assert signal.getsignal(signal.SIGTERM) != preemption._handle  # the previous handler is back


def test_metric_log_of_a_resumed_run_drops_the_steps_it_redoes(tmp_path):
  from ovseg_jax.train import progress
  first = progress.MetricLogger(tmp_path)
  for step in (2, 4, 6):
    first.write(step, {"loss": float(step)})
  first.close()
  resumed = progress.MetricLogger(tmp_path, start_step=4)  # The checkpoint was at step 4; step 6 is redone.
  resumed.write(6, {"loss": 0.5})
  resumed.close()
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in logged] == [(2, 2.0), (4, 4.0), (6, 0.5)]


def test_read_positions_round_trip_through_the_checkpoint_data():
  from data_pipelines import image_text
  positions = [image_text.ReadPosition(epoch=2, shards_done=5), image_text.ReadPosition(epoch=7, shards_done=0)]
  saved = data.all_read_positions(positions)
  assert saved == {"read_positions": [[[2, 5], [7, 0]]]}
  assert data.host_read_positions(saved, 2) == positions
  assert data.host_read_positions(None, 1) == [image_text.ReadPosition()]
  # Written by two hosts, resumed by one: the shard split changes, so each source's earliest epoch restarts.
  two_hosts = {"read_positions": [[[3, 1], [4, 4]], [[2, 7], [5, 0]]]}
  assert data.host_read_positions(two_hosts, 2) == [image_text.ReadPosition(2), image_text.ReadPosition(4)]


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_multi_label_texts_train_with_the_extra_loss(tmp_path):
  config = sseg_demo.get_config("tiny")
  config.data.demo_root = str(tmp_path / "demo")
  config.data.text, config.data.num_prompts = "multi_label", 2
  config.total_steps, config.log_every_steps = 4, 2
  train.train_and_evaluate(config, tmp_path / "run")
  logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert logged and all(np.isfinite(r["multi_label_loss"]) and r["multi_label_loss"] > 0 for r in logged)
  assert all(0 < r["prompts_per_image"] <= 2 for r in logged)
