"""Mask2Former training: point sampling against a numpy bilinear reference and `F.grid_sample` (fixture), the
criterion against a float64 numpy transcription of the reference `SetCriterion` / `HungarianMatcher` with the
sampled points given as inputs, matching against scipy, and a few steps of the method on the tiny config."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from ovseg_jax.ops import mask2former_criterion as criterion
from ovseg_jax.ops import point_sampling

FIXTURES = Path(__file__).parent / "fixtures" / "mask2former"


def np_point_sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
  """float64 `F.grid_sample(align_corners=False, padding 'zeros')` of [H, W] at (x, y) in [0, 1]: [P, 2] -> [P]."""
  h, w = image.shape
  x, y = points[:, 0] * w - 0.5, points[:, 1] * h - 0.5
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  out = np.zeros(len(points))
  for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
    for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      out += np.where(inside, image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0.0) * wx * wy
  return out


def np_softplus(x):
  return np.logaddexp(0.0, x)


def np_cost(logits, masks, segments, classes, points, cfg):
  """HungarianMatcher.memory_efficient_forward for one image, float64."""
  valid = np.flatnonzero(classes >= 0)
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  pred = np.stack([np_point_sample(m, points) for m in masks])
  tgt = np.stack([np_point_sample((segments == m).astype(np.float64), points) for m in valid])
  bce = (np_softplus(-pred) @ tgt.T + np_softplus(pred) @ (1 - tgt).T) / pred.shape[1]
  p = 1 / (1 + np.exp(-pred))
  dice = 1 - (2 * p @ tgt.T + 1) / (p.sum(-1)[:, None] + tgt.sum(-1)[None] + 1)
  return cfg.class_weight * -prob[:, classes[valid]] + cfg.mask_weight * bce + cfg.dice_weight * dice, valid


def np_layer_loss(logits, masks, segments, classes, match_points, loss_points, cfg):
  """SetCriterion's loss_labels + loss_masks for one prediction layer over a batch, float64, given the points.
  loss_points[b, m] are the points of target m of image b."""
  b, q, k1 = logits.shape
  num_masks = max((classes >= 0).sum(), 1)
  target_classes = np.full((b, q), k1 - 1)
  bce_sum = dice_sum = 0.0
  for i in range(b):
    cost, valid = np_cost(logits[i], masks[i], segments[i], classes[i], match_points[i], cfg)
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols):
      m = valid[c]
      target_classes[i, r] = classes[i, m]
      x = np_point_sample(masks[i, r], loss_points[i, m])
      t = np_point_sample((segments[i] == m).astype(np.float64), loss_points[i, m])
      bce_sum += np.mean(np_softplus(x) - x * t)
      p = 1 / (1 + np.exp(-x))
      dice_sum += 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
  log_prob = logits - logits.max(-1, keepdims=True)
  log_prob = log_prob - np.log(np.exp(log_prob).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_prob, target_classes[..., None], -1)[..., 0]
  weight = np.where(target_classes == k1 - 1, cfg.no_object_weight, 1.0)
  return {"ce": (weight * nll).sum() / weight.sum(), "mask": bce_sum / num_masks, "dice": dice_sum / num_masks}


@pytest.fixture(scope="module")
def problem():
  """Two images, 7 queries, 4 classes + no object, up to 3 targets (image 1 has 2) on a 12 x 16 label map."""
  rng = np.random.default_rng(0)
  b, q, k, m = 2, 7, 4, 3
  logits = rng.normal(size=(b, q, k + 1)) * 2
  masks = rng.normal(size=(b, q, 6, 8)) * 3
  segments = rng.integers(-1, m, size=(b, 12, 16))
  segments[1][segments[1] == 2] = -1
  classes = np.array([[2, 0, 3], [1, 3, -1]])
  match_points = rng.uniform(size=(b, 50, 2))
  loss_points = rng.uniform(size=(b, m, 40, 2))
  return logits, masks, segments, classes, match_points, loss_points


def test_point_sample_equals_numpy_bilinear_and_grid_sample():
  rng = np.random.default_rng(1)
  maps = rng.normal(size=(3, 5, 9))
  points = rng.uniform(-0.2, 1.2, size=(3, 64, 2))  # Also off the map: zero padding.
  ours = point_sampling.point_sample(jnp.asarray(maps, jnp.float32), jnp.asarray(points, jnp.float32))
  expected = np.stack([np_point_sample(a, p) for a, p in zip(maps, points)])
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  reference = np.load(FIXTURES / "reference.npz")  # PyTorch's F.grid_sample on a 5 x 7 x 3 map.
  image, grid = reference["grid_image"], reference["grid_points"].reshape(-1, 2)
  channels = jnp.asarray(np.moveaxis(image, -1, 0))
  sampled = point_sampling.point_sample(channels, jnp.broadcast_to((grid + 1) / 2, (3, *grid.shape)))
  np.testing.assert_allclose(np.asarray(sampled).T, reference["grid_output"].reshape(-1, 3), atol=1e-5)


def test_segment_masks_sample_like_binary_masks():
  rng = np.random.default_rng(2)
  segments = rng.integers(-1, 4, size=(10, 13))
  shared = rng.uniform(size=(30, 2))
  per_mask = rng.uniform(size=(4, 30, 2))
  ours_shared = point_sampling.sample_segment_masks(jnp.asarray(segments), jnp.asarray(shared, jnp.float32), 4)
  ours_per_mask = point_sampling.sample_segment_masks(jnp.asarray(segments), jnp.asarray(per_mask, jnp.float32), 4)
  for m in range(4):
    binary = (segments == m).astype(np.float64)
    np.testing.assert_allclose(ours_shared[m], np_point_sample(binary, shared), atol=1e-6)
    np.testing.assert_allclose(ours_per_mask[m], np_point_sample(binary, per_mask[m]), atol=1e-6)


def test_uncertain_points_keep_the_most_uncertain_candidates():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 6, 6)) * 4
  key = jax.random.key(7)
  points = np.asarray(point_sampling.uncertain_point_coords(key, jnp.asarray(logits, jnp.float32), 20, 3.0, 0.75))
  assert points.shape == (2, 20, 2) and points.min() >= 0 and points.max() <= 1
  draw_key, fill_key = jax.random.split(key)
  candidates = np.asarray(jax.random.uniform(draw_key, (2, 60, 2)))
  for i in range(2):
    uncertainty = -np.abs(np_point_sample(logits[i], candidates[i]))
    expected = candidates[i][np.argsort(-uncertainty, kind="stable")[:15]]
    np.testing.assert_allclose(points[i, :15], expected, atol=1e-7)
  np.testing.assert_allclose(points[:, 15:], np.asarray(jax.random.uniform(fill_key, (2, 5, 2))))


def test_matching_total_cost_equals_scipy(problem):
  logits, masks, segments, classes, match_points, _ = problem
  cfg = criterion.CriterionConfig()
  args = [jnp.asarray(x, jnp.float32) for x in (logits, masks)] + [jnp.asarray(segments), jnp.asarray(classes),
                                                                    jnp.asarray(match_points, jnp.float32)]
  # One program for both (op by op, the matcher's loop alone takes longer).
  cost, (pred_for_target, matched) = jax.jit(lambda *a: (criterion.matching_cost(*a, cfg), criterion.match(*a, cfg)))(
      *args)
  cost = np.asarray(cost)
  for i in range(2):
    expected_cost, valid = np_cost(logits[i], masks[i], segments[i], classes[i], match_points[i], cfg)
    np.testing.assert_allclose(cost[i][:, valid], expected_cost, rtol=1e-5, atol=1e-5)
    rows, cols = linear_sum_assignment(expected_cost)
    ours = np.asarray(pred_for_target[i])[valid]
    assert np.asarray(matched[i]).tolist() == (classes[i] >= 0).tolist()
    np.testing.assert_allclose(expected_cost[ours, np.arange(len(valid))].sum(), expected_cost[rows, cols].sum(),
                               rtol=1e-9)


def test_criterion_equals_float64_reference(problem):
  logits, masks, segments, classes, match_points, loss_points = problem
  cfg = criterion.CriterionConfig()
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  num_masks = float((classes >= 0).sum())

  @jax.jit  # One program (op by op, the matcher's loop alone takes longer).
  def losses(logits, masks, segments, classes, match_points, loss_points):
    pred_for_target, matched = criterion.match(logits, masks, segments, classes, match_points, cfg)
    ce = criterion.class_loss(logits, classes, pred_for_target, matched, cfg.no_object_weight)
    return ce, *criterion.mask_losses(criterion.matched_mask_logits(masks, pred_for_target), segments, matched,
                                      loss_points, num_masks)
  ours_ce, ours_bce, ours_dice = losses(f32(logits), f32(masks), jnp.asarray(segments), jnp.asarray(classes),
                                        f32(match_points), f32(loss_points))
  expected = np_layer_loss(logits, masks, segments, classes, match_points, loss_points, cfg)
  np.testing.assert_allclose([ours_ce, ours_bce, ours_dice], [expected["ce"], expected["mask"], expected["dice"]],
                             rtol=2e-5)


def test_loss_covers_every_prediction_and_has_gradients(problem):
  logits, masks, segments, classes, _, _ = problem
  cfg = criterion.CriterionConfig(num_points=16)
  layer = lambda s: {"pred_logits": jnp.asarray(logits * s, jnp.float32), "pred_masks": jnp.asarray(masks * s,
                                                                                                    jnp.float32)}

  def loss(scale, aux):
    outputs = {**layer(scale), "aux_outputs": [layer(scale * 0.5)] * aux}
    return criterion.mask2former_loss(outputs, jnp.asarray(segments), jnp.asarray(classes), jax.random.key(0),
                                      cfg)[0]
  # Jitted, the value and gradient of the three-layer loss share one program (op by op: twice the time).
  one = jax.jit(loss, static_argnums=1)(1.0, 0)
  three, grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(1.0, 2)
  assert np.isfinite(three) and three > one > 0
  assert np.isfinite(grad) and grad != 0


def test_semantic_targets_one_per_class_largest_kept():
  from ovseg_jax.methods.mask2former import data
  label = np.full((4, 6), data.IGNORE)
  label[0, :5], label[1:, :2], label[3, 5] = 7, 2, 9
  segments, classes = data.semantic_targets(label, max_targets=2)
  assert classes.tolist() == [2, 7]  # Class 9 (one pixel) does not fit: its pixel is ignored.
  np.testing.assert_array_equal(segments == 0, label == 2)
  np.testing.assert_array_equal(segments == 1, label == 7)
  assert (segments[(label == data.IGNORE) | (label == 9)] == -1).all()


def test_unseen_classes_are_ignored_and_the_others_renumbered():
  from configs import mask2former_demo
  from ovseg_jax.methods.mask2former import data
  config = mask2former_demo.get_config("tiny")
  names = list(config.data.class_names)
  lookup = data.label_lookup(config)
  assert data.training_classes(config) == [n for n in names if n not in mask2former_demo.UNSEEN]
  assert lookup[names.index("star")] == data.IGNORE and lookup[names.index("moon")] == data.IGNORE
  assert lookup[names.index("circle")] == data.training_classes(config).index("circle")
  assert lookup[255] == data.IGNORE


def test_optimizer_decays_weights_not_norms_or_embeddings_and_slows_the_backbone():
  from configs import mask2former_demo
  from ovseg_jax.methods.mask2former import setup
  config = mask2former_demo.get_config("tiny")
  model = setup.build_model(config.model, 5)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  mask = setup.decay_mask(params)
  assert mask["decoder"]["class_embed"]["bias"] and mask["decoder"]["class_embed"]["kernel"]
  assert not mask["decoder"]["query_feat"] and not mask["decoder"]["level_embed"]
  assert mask["pixel_decoder"]["level_embed"]  # An nn.Parameter in the reference: decayed.
  assert not mask["decoder"]["decoder_norm"]["scale"] and not mask["backbone"]["stem_conv1"]["norm"]["mean"]
  multipliers = setup.backbone_multipliers(params, 0.1)
  assert multipliers["backbone"]["stem_conv1"]["conv"]["kernel"] == 0.1
  assert multipliers["decoder"]["class_embed"]["kernel"] == 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  from configs import mask2former_demo
  from ovseg_jax.methods.mask2former import setup
  from ovseg_jax.train import sharding
  config = mask2former_demo.get_config("tiny")
  config.data.demo_root = str(tmp_path_factory.mktemp("demo"))
  config.batch_size = 8  # One image per fake device (tests/conftest.py).
  config.model.decoder.num_layers = 1  # Each decoder layer adds a criterion to compile, and no coverage here.
  return config, setup.build(config, sharding.make_mesh(config.mesh.axes))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
  """(losses, state) of six steps on one batch (the step donates the initial state); the batch read as the demo
  config reads it: its labelled scenes prepared as TensorFlow Datasets in the workdir, through tf.data."""
  from etils import epath
  from ovseg_jax.methods.mask2former import data
  from ovseg_jax.train import sharding
  config, trainable = tiny
  assert config.data.tfds_name == "demo"
  host_data = data.host_data(config, epath.Path(tmp_path_factory.mktemp("workdir")), None, 0)
  batch = next(host_data.batches)
  assert sorted(batch) == ["image", "segments", "target_classes"]
  assert batch["target_classes"].shape == (8, config.data.max_targets)
  assert host_data.data_position() == {"supervised_positions": [[0, 8]]}
  assert host_data.extra_scalars() == {"data/examples": 8, "data/skipped": 0}
  batch = sharding.host_batch_to_global(batch, sharding.make_mesh(config.mesh.axes))
  state, losses = trainable.state, []
  for _ in range(6):
    state, metrics = trainable.step(state, batch, jax.random.key(0), None)
    losses.append(float(metrics["loss"]))
  return losses, state


def test_tiny_training_lowers_the_loss_on_a_batch(trained):
  losses, state = trained
  assert np.all(np.isfinite(losses)) and min(losses[3:]) < losses[0], losses
  assert int(state.step) == 6


def test_tiny_model_is_evaluated_on_seen_and_unseen_classes(tiny, trained, tmp_path):
  from ovseg_jax.methods.mask2former import trainer
  (config, trainable), (_, state) = tiny, trained
  rows = trainer.evaluate(config, tmp_path, trainable.model, state.params, int(state.step))
  row = next(r for r in rows if r["predictor"] == trainer.NAME)
  assert np.isfinite(row["seen_miou"]) and row["unseen_miou"] == 0.0  # The head has no unseen class.
  assert (tmp_path / "results.md").exists()


@pytest.mark.slow  # A long end-to-end check: `python -m pytest -q -m slow`.
def test_published_configs_lower_for_one_image():
  from configs import mask2former_ade150, mask2former_coco_stuff
  from ovseg_jax.methods import registry
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  for module in (mask2former_coco_stuff, mask2former_ade150):
    config = module.get_config()
    trainable = registry.get(config).build(config, mesh, abstract=True)
    lowered = trainable.step.lower(trainable.state, trainable.batch_spec(1), jax.random.key(0), None)
    assert "while" in lowered.as_text()  # The matcher's loops are in the step.
