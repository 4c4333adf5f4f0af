"""Caption text for training: cleaning web alt-text, and the nouns and verbs S-Seg trains on.

S-Seg (appendix A.1), following GroupViT, feeds the text tower the nouns and verbs of each caption, "because
these words are more likely to describe the image". They are found with TextBlob's PatternTagger, whose
lexicon ships inside the textblob package (NLTK corpora and spaCy models cannot be fetched at run time).
Auxiliary verbs (be, have, do and their forms) carry no visual content and are dropped.
"""
from __future__ import annotations

import functools
import html
import re

MODES = ("caption", "nouns_verbs")

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


def nouns_and_verbs(text: str) -> list[str]:
  """Lower-cased nouns (NN*) and verbs (VB*) of `text` in their order, auxiliaries and non-words dropped."""
  words = []
  for word, tag in _tagger().tag(text):
    word = word.lower()
    if (tag.startswith("NN") or tag.startswith("VB")) and _WORD.match(word) and word not in _AUXILIARIES:
      words.append(word)
  return words


def training_text(caption: str, mode: str) -> str:
  """What the text tower reads for a caption: the cleaned caption, or its nouns and verbs joined by spaces.
  An empty result means the sample has no usable text."""
  if mode not in MODES:
    raise ValueError(f"data.text={mode!r}: use one of {MODES}.")
  cleaned = clean_caption(caption)
  return cleaned if mode == "caption" else " ".join(nouns_and_verbs(cleaned))
