"""Which classifier names Mask2Former's queries (`model.classifier.kind`), in training and at evaluation.

- 'head': the K+1 linear head over the training classes; a class outside them is never predicted.
- 'text': `models.query_classifiers.TextClassifier` against text embeddings of class names from a frozen CLIP
  text tower (`text_encoder`: a CLIP file, a Hugging Face CLIPModel directory or a CLIP training workdir), each
  name filled into `templates` and averaged (`eval.mask_scores.class_text_embeddings`). Trained on the seen
  classes' names, it scores any vocabulary; the names are embedded the same way in training and evaluation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ovseg_jax.eval import prompts
from ovseg_jax.eval.mask_scores import class_text_embeddings
from ovseg_jax.methods.clip import setup as clip_setup
from ovseg_jax.models.backbones import checked_section
from ovseg_jax.models.clip import CLIP
from ovseg_jax.models.query_classifiers import TextClassifier

KINDS = ("head", "text")
_OPTIONS = {"text_encoder": "", "embed_dim": 0, "templates": "single", "temperature": 0.07, "learn_temperature": True}


def classifier_section(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
  """`model.classifier` with defaults filled in (absent: the K+1 head); bad keys or values refused by name. The
  text options are read only with kind 'text'."""
  c = checked_section(cfg or {"kind": "head"}, "model.classifier", ("kind",), _OPTIONS)
  if c["kind"] not in KINDS:
    raise ValueError(f"model.classifier.kind={c['kind']!r}: use one of {list(KINDS)}.")
  if c["kind"] == "text":
    if not c["text_encoder"] or int(c["embed_dim"]) <= 0:
      raise ValueError("model.classifier (text): set text_encoder (a CLIP file, Hugging Face CLIPModel directory "
                       f"or CLIP training workdir) and embed_dim (its text embedding width); got {c}.")
    prompts.templates(c["templates"])
    if not c["temperature"] > 0:
      raise ValueError(f"model.classifier.temperature={c['temperature']}: must be positive.")
  return c


def build_classifier(cfg: Mapping[str, Any] | None, dtype: Any) -> TextClassifier | None:
  """The query classifier of a 'text' section; None for the K+1 head (which lives in the decoder)."""
  c = classifier_section(cfg)
  if c["kind"] == "head":
    return None
  return TextClassifier(int(c["embed_dim"]), float(c["temperature"]), bool(c["learn_temperature"]), dtype=dtype)


class TextEmbedder:
  """Embeds class names with the frozen text tower of a 'text' section, loaded once."""

  def __init__(self, cfg: Mapping[str, Any], mesh: jax.sharding.Mesh):
    c = classifier_section(cfg)
    architecture, self.params = clip_setup.read_source(c["text_encoder"], mesh)
    if architecture.embed_dim != int(c["embed_dim"]):
      raise ValueError(f"model.classifier.embed_dim={c['embed_dim']} but {c['text_encoder']} embeds text in "
                       f"{architecture.embed_dim} dimensions: set embed_dim to {architecture.embed_dim}.")
    self.model, self.templates = CLIP(architecture), prompts.templates(c["templates"])

  def __call__(self, class_names: Sequence[str]) -> jax.Array:
    """float32 [K, embed_dim], unit length."""
    return class_text_embeddings(self.model, self.params, list(class_names), self.templates,
                                 self.model.architecture.context_length)


def abstract_embeddings(cfg: Mapping[str, Any], num_classes: int) -> jax.ShapeDtypeStruct:
  """The shape of the training classes' text embeddings, for compiling without reading the text tower."""
  return jax.ShapeDtypeStruct((num_classes, int(classifier_section(cfg)["embed_dim"])), jnp.float32)
