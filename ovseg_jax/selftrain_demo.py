"""S-Seg+ on the embedded demo: the demo S-Seg labels its own training images (captions unused), and S-Seg+ is
evaluated beside its teacher on the demo's held-out split. A source for `ovseg_jax.selftrain`."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_pipelines import demo_data, shards
from ovseg_jax import evaluate, pseudo_label, train, visualize
from ovseg_jax.preprocessing import normalize_images


def demo_train_images(teacher_config: ml_collections.ConfigDict, limit: int) -> list[tuple[str, np.ndarray]]:
  """The first `limit` images of this host's demo training shards."""
  paths = shards.host_shards(evaluate.demo_paths(teacher_config).train_shards, jax.process_index(),
                             jax.process_count())
  images = []
  for key, jpeg, _ in shards.iterate_samples(paths, shards.SkipStats()):
    images.append((key, np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))))
    if len(images) == limit:
      break
  return images


class DemoSource:
  """The demo's training images, kept in memory (a few thousand 64-px images), and its held-out split."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config, self.teacher_config = config, config.teacher
    self.num_classes = len(demo_data.class_names())

  def teacher(self) -> tuple[Any, Any, int]:
    return train.restore_model(self.teacher_config, Path(self.config.teacher_workdir).expanduser())

  def pseudo_label(self, output: Path) -> dict[str, Any]:
    """Labels the images with the teacher's evaluation protocol (threshold tuned on the demo's tune split)."""
    model, params, step = self.teacher()
    names = demo_data.class_names()
    threshold = evaluate.demo_background_threshold(self.teacher_config, model, params)
    predict_split, background_id = evaluate.class_name_predictor(model, params, names, self.teacher_config.eval,
                                                                 self.teacher_config.data.context_length)

    def predict(images: np.ndarray):
      pred = predict_split(images)
      return pred.labels(background_id, threshold), pred.best_score

    images = demo_train_images(self.teacher_config, self.config.pseudo_labels.num_images)
    counts = pseudo_label.label_images(iter(images), predict, output, len(names),
                                       self.teacher_config.eval.batch_size, total=len(images))
    return {"teacher_step": step, "background_threshold": threshold, **counts}

  def training_samples(self, output: Path) -> tuple[int, Any]:
    """(count, read_sample(i) -> (image, pseudo label with low-confidence pixels ignored))."""
    images, labels, confidence = pseudo_label.load_pseudo_labelled(
        output, demo_train_images(self.teacher_config, self.config.pseudo_labels.num_images))
    labels = np.where(confidence >= self.config.pseudo_labels.min_confidence, labels, pseudo_label.IGNORE_INDEX)
    return len(images), lambda i: (images[i], labels[i])

  def evaluate(self, workdir: Path, model: Any, params: Any, step: int) -> dict[str, Any]:
    """S-Seg+ and its S-Seg teacher on the same held-out images: one table, results.json, overlays."""
    config = self.config
    split = demo_data.load_labelled_split(evaluate.demo_paths(self.teacher_config).eval_dir)
    names, background_id = list(split.class_names), split.class_names.index(evaluate.BACKGROUND)
    teacher_model, teacher_params, teacher_step = self.teacher()
    threshold = evaluate.demo_background_threshold(self.teacher_config, teacher_model, teacher_params)
    teacher = evaluate.evaluate_labelled_split(teacher_model, teacher_params, split, self.teacher_config.eval,
                                               self.teacher_config.data.context_length, threshold, seed=config.seed)
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
               "sseg": teacher["trained"],
               "sseg_plus": evaluate.summary(pred_labels, split.labels, names, background_id),
               "uniform_random": teacher["uniform_random"], "all_background": teacher["all_background"]}
    visualize.save_overlays(workdir / "overlays", split.images, pred_labels, split.labels, names,
                            prefix="sseg_plus", max_images=config.eval.num_overlays)
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
