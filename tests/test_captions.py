"""Caption cleaning and the nouns and verbs S-Seg trains on."""
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
