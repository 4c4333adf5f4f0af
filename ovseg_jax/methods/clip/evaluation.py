"""How well a CLIP names objects from their masked crops: on the demo's labelled split, every class region of
every image becomes a masked crop (outside filled with the mean colour, box resized to the model's input, as
OVSeg classifies proposals) and is classified among the object classes with "a photo of a {}."."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import demo_data, tokenizer
from ovseg_jax.eval.classify import class_probs, crop_with_mask
from ovseg_jax.ops.normalize import normalize_images

TEMPLATE = "a photo of a {}."


def region_crops(images: np.ndarray, labels: np.ndarray, background: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(image index, class id, bool mask [H, W]) of every class region (one per class present in an image)."""
  index, classes, masks = [], [], []
  for i, label in enumerate(labels):
    for c in np.unique(label):
      if c != background:
        index.append(i)
        classes.append(int(c))
        masks.append(label == c)
  return np.asarray(index), np.asarray(classes), np.stack(masks)


def crop_accuracy(model: Any, params: Any, split: demo_data.LabelledSplit, context_length: int,
                  with_masks: bool = False, batch: int = 64) -> dict[str, Any]:
  """Per-class and mean masked-crop accuracy over the object classes of a labelled demo split; with
  `with_masks` the crops' masks go to the image tower too (mask prompts)."""
  names = split.class_names[1:]
  size = model.architecture.image_size
  text = model.apply({"params": params}, jnp.asarray(tokenizer.tokenize([TEMPLATE.format(n) for n in names],
                                                                        context_length)), method="encode_text")
  index, classes, masks = region_crops(split.images, split.labels)

  @jax.jit
  def predict(images, masks):
    crops, crop_masks = jax.vmap(crop_with_mask, in_axes=(0, 0, None))(normalize_images(images), masks, size)
    emb = model.apply({"params": params}, crops, crop_masks if with_masks else None, method="encode_image")
    return jnp.argmax(class_probs(emb, text), axis=-1) + 1

  predicted = np.concatenate([np.asarray(predict(split.images[index[s:s + batch]], masks[s:s + batch]))
                              for s in range(0, len(index), batch)])
  per_class = {names[c - 1]: float(np.mean(predicted[classes == c] == c)) for c in np.unique(classes)}
  return {"crop_accuracy": float(np.mean(predicted == classes)), "per_class_accuracy": per_class,
          "num_crops": int(len(classes))}
