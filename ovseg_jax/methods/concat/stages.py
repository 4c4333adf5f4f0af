"""The loss of each CONCAT stage and its `Trainable` (see `setup` for what each stage trains)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ovseg_jax.methods.concat import losses, setup
from ovseg_jax.methods.concat.heads import text_class_logits
from ovseg_jax.methods.mask2former import data as m2f_data, setup as m2f_setup
from ovseg_jax.ops.mask2former_criterion import CriterionConfig, mask2former_loss, match
from ovseg_jax.ops.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from ovseg_jax.train.state import abstract_state, create_sharded_state
from ovseg_jax.train.step import Trainable, make_step


def class_columns(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """Positions in `data.class_names` (the text embeddings' rows) of the training classes, in training order, and of
  the unseen classes."""
  names = list(config.data.class_names)
  seen = [names.index(n) for n in m2f_data.training_classes(config)]
  return np.asarray(seen), np.asarray([names.index(n) for n in config.data.unseen_classes], np.int64)


def _matched(models: setup.Models, params: dict, batch: dict, text: jax.Array, config: ml_collections.ConfigDict,
             key: jax.Array, train: bool = False) -> tuple[dict, jax.Array, jax.Array]:
  """(outputs with text logits, pred_for_target [B, M], matched [B, M]) of the last layer."""
  dropout_key, points_key = jax.random.split(key)
  images = normalize_images(batch["image"], IMAGENET_MEAN, IMAGENET_STD)
  outputs = models.mask2former.apply({"params": params["mask2former"]}, images, train=train,
                                     rngs={"dropout": dropout_key})
  outputs = setup.with_text_logits(models, params, outputs, text, config.concat.tau)
  cfg = CriterionConfig.from_config(config.loss)
  points = jax.random.uniform(points_key, (batch["image"].shape[0], cfg.num_points, 2))
  pred_for_target, matched = match(outputs["pred_logits"], outputs["pred_masks"], batch["segments"],
                                   batch["target_classes"], points, cfg)
  return outputs, pred_for_target, matched


def base_loss(models, clip, config, params, batch, key, frozen):
  c = config.concat
  seen, _ = class_columns(config)
  match_key, loss_key = jax.random.split(key)
  outputs, pred_for_target, matched = _matched(models, params, batch, frozen["text"][seen], config, match_key, True)
  loss, metrics = mask2former_loss(outputs, batch["segments"], batch["target_classes"], loss_key,
                                   CriterionConfig.from_config(config.loss))
  if c.con_weight:
    b, m = batch["target_classes"].shape
    complete, masked = setup.clip_tokens(clip, frozen["clip"], batch["image"], batch["segments"], m, c.clip_image_size)
    targets = losses.enhanced_targets(jnp.broadcast_to(complete[:, None], masked.shape), masked, c.gamma)
    bank, bank_valid = setup.con_bank(complete, masked, batch["target_classes"] >= 0, c.bank_size)
    projected = setup.gather_targets(outputs["projected"], pred_for_target)
    con = losses.con_loss(projected.reshape(b * m, -1), targets.reshape(b * m, -1),
                          bank.reshape(b * m, *bank.shape[2:]), bank_valid.reshape(b * m, -1), matched.reshape(-1),
                          c.tau)
    loss = loss + c.con_weight * con
    metrics = {**metrics, "loss": loss, "loss_con": con}
  return loss, metrics


def _real_queries(outputs: dict, pred_for_target: jax.Array, matched: jax.Array, target_classes: jax.Array):
  """Matched queries first, padded by repeating them ([N, D], classes [N], valid [N]), and all queries with the
  unmatched ones marked ([B*Q, D], [B*Q]); the padding repeats real rows so BatchNorm sees only real queries."""
  queries = jax.lax.stop_gradient(outputs["query_embeddings"]).astype(jnp.float32)
  b, q, d = queries.shape
  real = setup.gather_targets(queries, pred_for_target).reshape(-1, d)
  valid, classes = matched.reshape(-1), target_classes.reshape(-1)
  order = jnp.argsort(~valid, stable=True)
  count = jnp.maximum(jnp.sum(valid), 1)
  rows = order[jnp.arange(valid.shape[0]) % count]
  used = jnp.zeros((b, q), bool).at[jnp.arange(b)[:, None], jnp.where(matched, pred_for_target, q)].set(
      True, mode="drop")
  return real[rows], classes[rows], jnp.arange(valid.shape[0]) < jnp.sum(valid), queries.reshape(-1, d), \
      ~used.reshape(-1)


def cat_loss(models, config, params, batch, key, frozen):
  c = config.concat
  seen, _ = class_columns(config)
  text = frozen["text"][seen]
  match_key, gen_key = jax.random.split(key)
  outputs, pred_for_target, matched = _matched(models, params, batch, text, config, match_key)
  real, classes, valid, queries, empty = _real_queries(outputs, pred_for_target, matched, batch["target_classes"])
  out = models.generator.apply({"params": params["generator"]}, real, text[jnp.maximum(classes, 0)], gen_key)
  contrast = losses.embedding_contrast(out["generated"], real, classes, queries, empty, valid, c.tau_r)
  projected, no_object = models.projector.apply({"params": params["projector"]}, out["generated"])
  semantic = losses.classification_loss(text_class_logits(projected, text, no_object, c.tau)[:, :-1], classes, valid)
  vae = losses.vae_terms(real, out["reconstruction"], out["mean"], out["log_var"], valid)
  loss = losses.cat_loss(contrast, semantic, vae, c.lambda_r, c.lambda_f)
  return loss, {"loss": loss, "loss_contrast": contrast, "loss_semantic": semantic, "loss_vae": vae}


def generate_in_context(models: setup.Models, params: dict, text: jax.Array, count: int, context: jax.Array,
                        key: jax.Array) -> jax.Array:
  """`count` pseudo queries for each of the classes whose text embeddings are `text` [U, C] -> [U * count, D].

  The generator's BatchNorm normalises by the statistics of the batch it decodes, and CAT trained it on batches of
  the step's matched targets' classes; so each class's pseudo queries are decoded inside a batch that also holds
  `context` [N, C] (the step's matched seen classes, as CAT saw them), and only that class's rows are kept. Decoded
  alone, a batch of one class's (or only the unseen classes') conditions has its class direction normalised away:
  such pseudo queries no longer carry their class."""
  def one_class(class_text, class_key):
    rows = jnp.concatenate([jnp.broadcast_to(class_text, (count, class_text.shape[-1])), context], 0)
    return models.generator.apply({"params": params["generator"]}, rows, class_key, method="generate")[:count]
  generated = jax.vmap(one_class)(text, jax.random.split(key, text.shape[0]))
  return generated.reshape(-1, generated.shape[-1])


def union_loss(models, config, params, batch, key, frozen):
  c = config.concat
  seen, unseen = class_columns(config)
  match_key, gen_key = jax.random.split(key)
  outputs, pred_for_target, matched = _matched(models, params, batch, frozen["text"][seen], config, match_key)
  _, _, _, queries, empty = _real_queries(outputs, pred_for_target, matched, batch["target_classes"])
  b, q = outputs["query_embeddings"].shape[:2]
  num_all = len(config.data.class_names)
  query_class = jnp.full((b, q), num_all, jnp.int32).at[
      jnp.arange(b)[:, None], jnp.where(matched, pred_for_target, q)].set(
          jnp.asarray(seen)[jnp.maximum(batch["target_classes"], 0)], mode="drop").reshape(-1)
  n = c.generated_per_class
  _, context_classes, _, _, _ = _real_queries(outputs, pred_for_target, matched, batch["target_classes"])
  generated = generate_in_context(models, params, frozen["text"][unseen], n, frozen["text"][seen][context_classes],
                                  gen_key)
  embeddings = jnp.concatenate([queries, jax.lax.stop_gradient(generated)], 0)
  labels = jnp.concatenate([query_class, jnp.asarray(np.repeat(unseen, n), jnp.int32)])
  projected, no_object = models.projector.apply({"params": params["projector"]}, embeddings)
  logits = text_class_logits(projected, frozen["text"], no_object, c.tau)
  weights = jnp.where(labels == num_all, config.loss.no_object_weight, 1.0)
  loss = losses.classification_loss(logits, labels, weights)
  return loss, {"loss": loss, "empty_queries": jnp.mean(empty.astype(jnp.float32))}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, stage: str, clip: Any, frozen: Any,
          abstract: bool = False) -> Trainable:
  """The `Trainable` of one stage; `frozen` = {'clip': CLIP params, 'text': text embeddings [K, C] of
  `data.class_names`}; the stage trains `config.total_steps` steps."""
  if stage not in setup.STAGES:
    raise ValueError(f"CONCAT stage {stage!r}: use one of {setup.STAGES}.")
  text_dim = frozen["text"].shape[-1]
  models = setup.build_models(config, text_dim)
  # Traced once: the optimizer's labels and the state's shapes share the trace.
  init = jax.jit(lambda key: setup.init_params(models, config, text_dim, key))
  tx, schedule = setup.make_optimizer(config, stage, config.total_steps, jax.eval_shape(init, jax.random.key(0)))
  if abstract:
    _, state, shardings = abstract_state(init, tx, config, mesh)
  else:
    state, shardings = create_sharded_state(init, tx, config, mesh)
  if stage == "base":
    loss_fn = lambda p, b, k, f: base_loss(models, clip, config, p, b, k, f)
  else:
    loss_fn = lambda p, b, k, f: (cat_loss if stage == "cat" else union_loss)(models, config, p, b, k, f)
  return Trainable(model=models, tx=tx, schedule=schedule, state=state, state_shardings=shardings,
                   step=make_step(loss_fn, tx, schedule, mesh, shardings), frozen=frozen,
                   batch_spec=lambda batch_size: m2f_setup.batch_spec(config, batch_size))
