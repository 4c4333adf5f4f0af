"""Caption text for training: cleaning web alt-text, and the nouns and verbs S-Seg trains on.

S-Seg (appendix A.1), following GroupViT, feeds the text tower the nouns and verbs of each caption, "because
these words are more likely to describe the image". They are found with TextBlob's PatternTagger, whose
lexicon ships inside the textblob package (NLTK corpora and spaCy models cannot be fetched at run time).
Auxiliary verbs (be, have, do and their forms) carry no visual content and are dropped.

`multi_label` adds GroupViT's multi-label texts (GroupViT sec. 3.2): beside the caption, `num_prompts` of its
nouns, each put into a prompt template drawn at random, are extra positives of the image
(`losses.multi_label_contrastive_loss`).
"""
from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable

import numpy as np

MODES = ("caption", "nouns_verbs", "multi_label")
# CLIP's seven best ImageNet prompt templates (CLIP's prompt-engineering notebook, MIT licence), the set
# GroupViT draws its multi-label prompts from.
NOUN_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}.")

_URL = re.compile(r"(https?://|www\.)\S+")
_MARKUP = re.compile(r"<[^>]*>")  # HTML tags and CC12M's <PERSON> placeholders.
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z][a-z'-]*$")
_AUXILIARIES = frozenset({"be", "is", "are", "was", "were", "been", "being", "am", "'s", "'re", "'m", "have", "has",
                          "had", "having", "'ve", "do", "does", "did", "doing"})


def clean_caption(text: str) -> str:
  """Unescaped HTML entities, no URLs or markup, single spaces, no surrounding quotes or spaces."""
  text = _MARKUP.sub(" ", _URL.sub(" ", html.unescape(text)))
  return _SPACE.sub(" ", text).strip().strip("\"'").strip()


@functools.lru_cache(maxsize=1)
def _tagger():
  from textblob.en.taggers import PatternTagger
  return PatternTagger()


def _tagged_words(text: str, prefixes: tuple[str, ...]) -> list[str]:
  words = []
  for word, tag in _tagger().tag(text):
    word = word.lower()
    if tag.startswith(prefixes) and _WORD.match(word) and word not in _AUXILIARIES:
      words.append(word)
  return words


def nouns_and_verbs(text: str) -> list[str]:
  """Lower-cased nouns (NN*) and verbs (VB*) of `text` in their order, auxiliaries and non-words dropped."""
  return _tagged_words(text, ("NN", "VB"))


def nouns(text: str) -> list[str]:
  """The distinct lower-cased nouns (NN*) of `text`, in order of first appearance."""
  return list(dict.fromkeys(_tagged_words(text, ("NN",))))


def multi_label_texts(caption: str, num_prompts: int, rng: np.random.Generator) -> tuple[str, ...]:
  """(cleaned caption, `num_prompts` prompts of distinct nouns drawn from it, each in a random template);
  "" fills the places of missing nouns. The caption is "" when cleaning leaves nothing."""
  cleaned = clean_caption(caption)
  found = nouns(cleaned) if cleaned else []
  chosen = [found[i] for i in rng.permutation(len(found))[:num_prompts]]
  prompts = [NOUN_TEMPLATES[rng.integers(len(NOUN_TEMPLATES))].format(noun) for noun in chosen]
  return (cleaned, *prompts, *[""] * (num_prompts - len(prompts)))


def training_text(caption: str, mode: str) -> str:
  """What the text tower reads for a caption (the first text in 'multi_label' mode): the cleaned caption, or
  its nouns and verbs joined by spaces. An empty result means the sample has no usable text."""
  if mode not in MODES:
    raise ValueError(f"data.text={mode!r}: use one of {MODES}.")
  cleaned = clean_caption(caption)
  return " ".join(nouns_and_verbs(cleaned)) if mode == "nouns_verbs" else cleaned


def make_caption_fn(mode: str, num_prompts: int = 3, seed: int = 0) -> Callable[[str], str | tuple[str, ...]]:
  """caption -> the text(s) a sample trains with: `training_text`, or in 'multi_label' mode the caption and
  its `num_prompts` noun prompts (`multi_label_texts`, drawn afresh each time a sample is read)."""
  if mode != "multi_label":
    training_text("", mode)  # Rejects an unknown mode now rather than at the first sample.
    return functools.partial(training_text, mode=mode)
  if num_prompts < 1:
    raise ValueError(f"data.num_prompts={num_prompts}: multi_label needs at least one noun prompt per sample.")
  rng = np.random.default_rng(seed)
  return lambda caption: multi_label_texts(caption, num_prompts, rng)
