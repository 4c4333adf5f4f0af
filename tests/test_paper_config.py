"""The published S-Seg configs: the paper model's size, derived schedule, and (slow) its full train step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sseg_26m, sseg_cc12m
from ovseg_jax.methods.sseg import setup as sseg_setup
from ovseg_jax.train import sharding
from ovseg_jax.models.sseg import build_sseg


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_paper_model_has_the_published_parts():
  config = sseg_cc12m.get_config()
  model = build_sseg(config.model)
  params = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, 224, 224, 3)),
                                               jnp.zeros((1, 77), jnp.int32), train=False)["params"],
                          jax.random.key(0))
  n_backbone, n_text = _count(params["backbone"]), _count(params["text_encoder"])
  # Swin-S backbone with stage norms: 48.84M (timm's count, tests/test_swin.py); a 12-layer width-256
  # text transformer: 12 * (4*256^2 + 2*4*256^2 + biases and norms) + 49408*256 + 77*256 + final norm.
  assert n_backbone == 48_838_602
  assert n_text == 12 * (12 * 256 ** 2 + 9 * 256 + 4 * 256) + 49408 * 256 + 77 * 256 + 2 * 256
  assert params["decoder"]["query_embedding"].shape == (64, 256)
  assert len([k for k in params["decoder"] if k.startswith("layer_")]) == 6


def test_schedule_follows_batch_and_dataset_size():
  c = sseg_cc12m.get_config()
  assert (c.total_steps, c.optimizer.warmup_steps, c.optimizer.lr) == (30 * 2929, 2 * 2929, 5e-4)
  c.batch_size = 1024  # A command-line override rescales the lr and the steps.
  assert (c.total_steps, c.optimizer.lr) == (30 * 11718, pytest.approx(1.25e-4))
  big = sseg_26m.get_config()
  assert big.data.num_examples == 26_000_000 and len(big.data.shards) == 3 and big.model.backbone.name == "Swin-S"


@pytest.mark.slow
def test_paper_train_step_runs_and_lowers_the_loss():
  """Swin-S, N=64, 224x224, DINO ViT-S/8 pseudo masks (random weights of the real size), batch 2 on CPU."""
  config = sseg_cc12m.get_config("runlocal")
  config.batch_size = 2
  config.model.decoder.dropout_rate = 0.0
  config.model.backbone.drop_path_rate = 0.0
  config.optimizer.grad_clip_norm = 1.0
  # One device: the batch of 2 cannot split over the 8 fake devices the test session has.
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  trainable = sseg_setup.build(config, mesh)
  state, step, dino_params = trainable.state, trainable.step, trainable.frozen
  rng = np.random.default_rng(0)
  tokens = np.zeros((2, 77), np.int32)
  tokens[:, :6] = [[49406, 320, 1929, 539, 320, 49407], [49406, 320, 2368, 525, 518, 49407]]
  batch = sharding.host_batch_to_global(
      {"image": rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8), "tokens": tokens}, mesh)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch, jax.random.key(0), dino_params)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_plan_reports_memory_and_flops_of_the_compiled_step():
  from configs import sseg_demo
  from ovseg_jax import plan_memory as plan
  config = sseg_demo.get_config("tiny")
  small, large = plan.step_report(config, 2), plan.step_report(config, 4)
  for report in (small, large):
    assert report["arguments GiB"] > 0 and report["temporaries GiB"] > 0 and report["peak estimate GiB"] > 0
  # Per-image work is the same at both batch sizes; the step's FLOPs grow with the batch.
  assert large["GFLOP/step"] > 1.8 * small["GFLOP/step"]
  assert large["GFLOP/image"] == pytest.approx(small["GFLOP/image"], rel=0.1)
