"""Caption cleaning, the nouns and verbs S-Seg trains on, and GroupViT's multi-label noun prompts."""
import re

import numpy as np
import pytest

from data_pipelines import captions


@pytest.mark.parametrize("raw,clean", [
    ("  &quot;A dog &amp; a cat&quot;  on the   sofa ", "A dog & a cat\" on the sofa"),
    ("<PERSON> walks her dog at the beach", "walks her dog at the beach"),
    ("sunset over the lake http://example.com/x.jpg", "sunset over the lake"),
    ("<b>Red</b> car\n\tparked outside", "Red car parked outside"),
])
def test_clean_caption(raw, clean):
  assert captions.clean_caption(raw) == clean


@pytest.mark.parametrize("caption,words", [
    ("A brown dog is running across the green grass near two children playing football.",
     ["dog", "running", "grass", "children", "playing", "football"]),
    ("Two men have been sitting on a bench in the park", ["men", "sitting", "bench", "park"]),
    ("<PERSON> cuts the birthday cake", ["cuts", "birthday", "cake"]),
])
def test_nouns_and_verbs_keep_content_words_in_order(caption, words):
  assert captions.nouns_and_verbs(captions.clean_caption(caption)) == words


def test_training_text_modes():
  assert captions.training_text("a cat sleeps on a mat", "nouns_verbs") == "cat sleeps mat"
  assert captions.training_text(" a cat ", "caption") == "a cat"
  assert captions.training_text("very, very nice!", "nouns_verbs") == ""  # No usable word: the sample is skipped.
  with pytest.raises(ValueError, match="data.text='lemmas'"):
    captions.training_text("x", "lemmas")


def test_multi_label_texts_prompt_distinct_nouns_of_the_caption():
  rng = np.random.default_rng(0)
  caption = "A brown dog with a red ball on the beach near a small boat"
  seen_templates = set()
  for _ in range(20):
    texts = captions.multi_label_texts(caption, 3, rng)
    assert texts[0] == caption and len(texts) == 4
    nouns = []
    for prompt in texts[1:]:
      template = next(t for t in captions.NOUN_TEMPLATES if re.fullmatch(re.escape(t).replace(r"\{\}", "(.+)"), prompt))
      nouns.append(re.fullmatch(re.escape(template).replace(r"\{\}", "(.+)"), prompt).group(1))
      seen_templates.add(template)
    assert len(set(nouns)) == 3 and set(nouns) <= {"dog", "ball", "beach", "boat"}
  assert len(seen_templates) > 3  # Templates are drawn at random.
  assert captions.multi_label_texts("a dog", 3, rng)[2:] == ("", "")  # Missing nouns leave empty places.


def test_caption_fn_modes():
  assert captions.make_caption_fn("nouns_verbs")("a cat sleeps on a mat") == "cat sleeps mat"
  texts = captions.make_caption_fn("multi_label", num_prompts=2, seed=1)("a cat sleeps on a mat")
  assert texts[0] == "a cat sleeps on a mat" and len(texts) == 3 and all(texts[1:])
  with pytest.raises(ValueError, match="data.text='lemmas'"):
    captions.make_caption_fn("lemmas")
  with pytest.raises(ValueError, match="num_prompts"):
    captions.make_caption_fn("multi_label", num_prompts=0)
