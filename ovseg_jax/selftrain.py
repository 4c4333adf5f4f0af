r"""S-Seg+ self-training: pseudo-label the target images with a trained S-Seg, then train UperNet on them.

  python -m ovseg_jax.selftrain --config=configs/selftrain_demo.py --workdir=/tmp/sseg_plus

Stage 1 writes pseudo labels (`workdir/pseudo_labels/`, resumable) with the teacher's evaluation protocol
(vocabulary, synonyms, background threshold). Stage 2 trains a ViT UperNet with per-pixel cross-entropy,
layer-wise lr decay and a poly schedule, through the same loop, checkpoints and metrics as S-Seg training.
Then S-Seg+ is evaluated beside its S-Seg teacher on the same held-out images. Re-running resumes.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from data_pipelines import demo_data, shards
from ovseg_jax import checkpoint, evaluate, loop, optim, progress, pseudo_label, sharding, train, visualize
from ovseg_jax.models.upernet import UperNetViT
from ovseg_jax.preprocessing import normalize_images


def build_upernet(cfg: ml_collections.ConfigDict, num_classes: int) -> UperNetViT:
  b = cfg.backbone
  return UperNetViT(num_classes=num_classes, patch_size=b.patch_size, width=b.width, depth=b.depth,
                    num_heads=b.num_heads, mlp_dim=b.mlp_dim, channels=cfg.channels,
                    feature_blocks=tuple(cfg.get("feature_blocks", ())), dropout_rate=cfg.dropout_rate,
                    dtype=jnp.dtype(cfg.get("dtype", "float32")))


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, params: Any,
                   depth: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW on a warmup + poly schedule, each backbone layer's lr scaled by layer_decay^(distance to the top)."""
  schedule = optim.poly_schedule(cfg.lr, total_steps, cfg.warmup_steps, power=cfg.poly_power)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=optim.decay_mask),
      optim.scale_updates_by(optim.layer_decay_multipliers(params, depth, cfg.layer_decay)))
  return tx, schedule


def segmentation_loss(logits: jax.Array, labels: jax.Array, ignore_index: int) -> tuple[jax.Array, dict]:
  """Mean per-pixel cross-entropy over labelled pixels, logits bilinearly upsampled to the label size."""
  b, h, w = labels.shape
  logits = jax.image.resize(logits.astype(jnp.float32), (b, h, w, logits.shape[-1]), "bilinear")
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), safe[..., None], axis=-1)[..., 0]
  count = jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(jnp.where(valid, nll, 0.0)) / count
  accuracy = jnp.sum(valid & (jnp.argmax(logits, -1) == labels)) / count
  return loss, {"loss": loss, "pixel_accuracy": accuracy, "labelled_fraction": jnp.mean(valid)}


def demo_train_images(teacher_config: ml_collections.ConfigDict, limit: int) -> list[tuple[str, np.ndarray]]:
  """The first `limit` images of this host's demo training shards (their captions are not used)."""
  paths = shards.host_shards(evaluate.demo_paths(teacher_config).train_shards, jax.process_index(),
                             jax.process_count())
  images = []
  for key, jpeg, _ in shards.iterate_samples(paths, shards.SkipStats()):
    images.append((key, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))))
    if len(images) == limit:
      break
  return images


def make_teacher_predictor(teacher_config: ml_collections.ConfigDict, model: Any, params: Any,
                           class_names: list[str]):
  """`predict(images) -> (labels, confidence)` with the teacher's evaluation protocol."""
  threshold = evaluate.demo_background_threshold(teacher_config, model, params)
  predict_split, background_id = evaluate.class_name_predictor(model, params, class_names, teacher_config.eval,
                                                               teacher_config.data.context_length)

  def predict(images: np.ndarray):
    pred = predict_split(images)
    return pred.labels(background_id, threshold), pred.best_score
  return predict, threshold


def pseudo_label_stage(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  teacher_cfg = config.teacher
  model, params, step = train.restore_model(teacher_cfg, Path(config.teacher_workdir).expanduser())
  names = demo_data.class_names()
  predict, threshold = make_teacher_predictor(teacher_cfg, model, params, names)
  images = demo_train_images(teacher_cfg, config.pseudo_labels.num_images)
  counts = pseudo_label.label_images(iter(images), predict, workdir / "pseudo_labels", len(names),
                                     teacher_cfg.eval.batch_size, total=len(images))
  return {"teacher_step": step, "background_threshold": threshold, **counts}


def sample_indices(n: int, seed: int, start: int, count: int) -> np.ndarray:
  """Positions start..start+count of the endless sequence of seeded per-epoch permutations of range(n)."""
  out: list[int] = []
  while len(out) < count:
    epoch, offset = divmod(start + len(out), n)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(order[offset:offset + count - len(out)].tolist())
  return np.asarray(out)


def _batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
             start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches of the permutation sequence with random horizontal flips; a resumed run continues at the
  exact position `start_step * batch_size` of the same sequence."""
  step = start_step
  while True:
    take = sample_indices(len(images), seed, step * batch_size, batch_size)
    flip = (np.random.default_rng([seed, step]).random(batch_size) < 0.5)[:, None, None]
    yield {"image": np.where(flip[..., None], images[take][:, :, ::-1], images[take]),
           "label": np.where(flip, labels[take][:, :, ::-1], labels[take]).astype(np.int32)}
    step += 1


def _init_from_teacher(params: Any, teacher_params: Any) -> Any:
  """Copies the teacher's ViT (S-Seg's image backbone) into the UperNet backbone, leaf by leaf."""
  source = teacher_params["backbone"]["vit"]
  def take(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    value = source
    for name in names:
      value = value[name]
    if value.shape != leaf.shape:
      raise checkpoint.CheckpointMismatchError(
          f"teacher ViT parameter {'/'.join(names)} has shape {value.shape}, the UperNet backbone expects "
          f"{leaf.shape}: make model.backbone match the teacher's model.backbone, or set init.from_teacher=False.")
    return jnp.asarray(value, leaf.dtype)
  return {**params, "backbone": jax.tree_util.tree_map_with_path(take, params["backbone"])}


class _Stage2:
  """The second-stage model, its state and its training data, built from the config."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.mesh = sharding.make_mesh(config.mesh.axes)
    size = config.data.image_size
    self.model = build_upernet(config.model, num_classes)

    def init_params(key):
      return self.model.init({"params": key, "dropout": key}, jnp.zeros((1, size, size, 3)))["params"]

    abstract = jax.eval_shape(init_params, jax.random.key(0))
    self.tx, self.schedule = make_optimizer(config.optimizer, config.total_steps, abstract,
                                            config.model.backbone.depth)
    self.state, self.shardings = train.create_sharded_state(init_params, self.tx, config, self.mesh)


def train_stage(config: ml_collections.ConfigDict, workdir: Path, num_classes: int) -> tuple[Any, Any, int]:
  stage = _Stage2(config, num_classes)
  loop.describe_parameters(stage.state.params, workdir)
  ckpt, state, data_position = loop.resume(config, workdir, stage.state)
  if data_position is None and config.init.from_teacher:
    _, teacher_params, _ = train.restore_model(config.teacher, Path(config.teacher_workdir).expanduser())
    state = jax.device_put(state.replace(params=_init_from_teacher(state.params, teacher_params)), stage.shardings)
  start_step = int(state.step)
  if start_step < config.total_steps:
    images, labels, confidence = pseudo_label.load_pseudo_labelled(
        workdir / "pseudo_labels", demo_train_images(config.teacher, config.pseudo_labels.num_images))
    labels = np.where(confidence >= config.pseudo_labels.min_confidence, labels, pseudo_label.IGNORE_INDEX)
    progress.log(f"second stage: {len(images)} pseudo-labelled images, "
                 f"{np.mean(labels != pseudo_label.IGNORE_INDEX):.1%} of pixels labelled")
    model = stage.model

    def loss_fn(params, batch, key, frozen):
      del frozen
      logits = model.apply({"params": params}, normalize_images(batch["image"]), train=True, rngs={"dropout": key})
      return segmentation_loss(logits, batch["label"], pseudo_label.IGNORE_INDEX)

    step = train.make_step(loss_fn, stage.tx, stage.schedule, stage.mesh, stage.shardings)
    train_step = lambda state, batch, key: step(state, batch, key, None)
    batches = _batches(images, labels, config.batch_size // jax.process_count(), config.seed, start_step)
    state = loop.run(config, workdir, stage.mesh, train_step, state, batches, ckpt, start_step)
  ckpt.close()
  return stage.model, state.params, int(state.step)


def evaluate_beside_teacher(config: ml_collections.ConfigDict, workdir: Path, model: Any, params: Any,
                            step: int) -> dict[str, Any]:
  """S-Seg+ and its S-Seg teacher on the same held-out demo images: one table, results.json, overlays."""
  split = demo_data.load_labelled_split(evaluate.demo_paths(config.teacher).eval_dir)
  names, background_id = list(split.class_names), split.class_names.index(evaluate.BACKGROUND)
  teacher_model, teacher_params, teacher_step = train.restore_model(config.teacher,
                                                                    Path(config.teacher_workdir).expanduser())
  threshold = evaluate.demo_background_threshold(config.teacher, teacher_model, teacher_params)
  teacher = evaluate.evaluate_labelled_split(teacher_model, teacher_params, split, config.teacher.eval,
                                             config.teacher.data.context_length, threshold, seed=config.seed)
  t0 = time.perf_counter()
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, normalize_images(x)), axis=-1))
  preds = []
  for start in range(0, len(split.images), config.eval.batch_size):
    chunk = split.images[start:start + config.eval.batch_size]
    padded = np.zeros((config.eval.batch_size, *chunk.shape[1:]), chunk.dtype)
    padded[:len(chunk)] = chunk
    low = np.asarray(predict(params, padded))[:len(chunk)]
    preds.append(np.asarray(jax.image.resize(low, (len(chunk), *split.labels.shape[1:]), "nearest")))
  pred_labels = np.concatenate(preds).astype(np.int32)
  results = {"num_images": len(split.images), "classes": names, "step": step, "teacher_step": teacher_step,
             "teacher_background_threshold": threshold, "eval_seconds": time.perf_counter() - t0,
             "sseg": teacher["trained"], "sseg_plus": evaluate.summary(pred_labels, split.labels, names, background_id),
             "uniform_random": teacher["uniform_random"], "all_background": teacher["all_background"]}
  visualize.save_overlays(workdir / "overlays", split.images, pred_labels, split.labels, names, prefix="sseg_plus",
                          max_images=config.eval.num_overlays)
  rows = [{"predictor": label, "mIoU": results[k]["miou"], "object-class mIoU": results[k]["object_miou"],
           "pixel acc": results[k]["pixel_accuracy"]}
          for k, label in (("sseg", "S-Seg (teacher)"), ("sseg_plus", "S-Seg+ (self-trained UperNet)"),
                           ("uniform_random", "uniform random"), ("all_background", "all background"))]
  table = visualize.markdown_table(rows, ["predictor", "mIoU", "object-class mIoU", "pixel acc"])
  (workdir / "results.json").write_text(json.dumps(results, indent=2, default=float))
  (workdir / "results.md").write_text(f"# S-Seg+ at step {step} beside its S-Seg teacher (step {teacher_step})\n\n"
                                      f"{results['num_images']} held-out demo images\n\n{table}\n")
  print(f"S-Seg+ (step {step}) beside S-Seg (step {teacher_step}) on {len(split.images)} held-out demo images:\n"
        f"{table}", flush=True)
  return results


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  workdir = Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  num_classes = len(demo_data.class_names())
  if config.total_steps > 0 and not (workdir / "checkpoints").exists():
    progress.log(f"pseudo labels: {pseudo_label_stage(config, workdir)}")
  model, params, step = train_stage(config, workdir, num_classes)
  return evaluate_beside_teacher(config, workdir, model, params, step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  """The `ovseg_jax.evaluate` command for a self-training workdir."""
  stage = _Stage2(config, len(demo_data.class_names()))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep, async_save=False)
  restored = ckpt.restore_latest(stage.state)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: run `python -m ovseg_jax.selftrain "
                            f"--config=... --workdir={workdir}` first.")
  state, _ = restored
  return evaluate_beside_teacher(config, workdir, stage.model, state.params, int(state.step))


def main(argv: list[str]) -> None:
  del argv
  from ovseg_jax import cli, distributed
  distributed.initialize_distributed()
  run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == "__main__":
  from ovseg_jax import cli
  cli.run(main)
