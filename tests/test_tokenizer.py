"""Tests for data_pipelines.tokenizer: ids equal to CLIP's reference tokenizer."""
import os
import string

import numpy as np
import pytest

from data_pipelines import tokenizer

SOT, EOT = 49406, 49407

# Ids (without SOT/EOT) produced by the reference CLIP tokenizer (open_clip's `SimpleTokenizer.encode`,
# identical here to OpenAI CLIP's) with ftfy 6.3.1.
KNOWN_IDS = {
    'a photo of a cat sitting on the grass': [320, 1125, 539, 320, 2368, 4919, 525, 518, 5922],
    "It's a dog's life, isn't it? We'll see!":
        [585, 568, 320, 1929, 568, 970, 267, 2923, 713, 585, 286, 649, 1342, 862, 256],
    'Café crème brûlée à Zürich': [15304, 1075, 12138, 614, 711, 127, 119, 75, 13489, 21259, 89, 6522, 4021],
    '東京タワーの夜景': [48338, 21078, 105, 34941, 2429, 107, 13457, 21575, 23170, 250, 48132, 363],
    'pizza 🍕 party 🎉👍🏽': [4474, 23904, 1580, 4310, 43722],
    'fish &amp; chips': [2759, 261, 8855],
    # With a '<' in the text ftfy leaves entities alone, so the second unescape matters.
    '<i>salt &amp;amp; pepper</i>': [283, 328, 285, 6611, 261, 8253, 34308, 328, 285],
    '&lt;b&gt;bold&lt;/b&gt; &amp;amp;': [283, 321, 285, 8911, 34308, 321, 285, 261],
    # Mojibake that ftfy repairs to "the café doesn't sell crème brûlée".
    'The cafÃ© doesnâ€™t sell crÃ¨me brÃ»lÃ©e':
        [518, 15304, 2503, 713, 5119, 1075, 12138, 614, 711, 127, 119, 75, 13489],
    # Case-insensitive pre-split: "'ſ" (long s) is one word, like "'s".
    "the cat'ſ toy": [518, 2368, 6, 129, 379, 5988],
    'In 2023, 3.14 times 1,000 is 3140':
        [530, 273, 271, 273, 274, 267, 274, 269, 272, 275, 1661, 272, 267, 271, 271, 271, 533, 274, 272, 275, 271],
    '  a   red\n\ncar\t\tparked \u3000 outside  ': [320, 736, 1615, 16487, 2782],
    # Separator controls (str.isspace but not regex `\s`), raw or as an entity, are dropped.
    '\x1c a cat\x1f\x85': [320, 2368, 959],
    '<i>&#28;dog</i>': [283, 328, 285, 1929, 34308, 328, 285],
    '': [],
    # OpenAI CLIP's marker text maps to EOT (open_clip's own markers differ; OpenAI's reference).
    'end <|endoftext|> here': [806, EOT, 763],
}

LONG_TEXT = ('the quick brown fox jumps over the lazy dog while seven wizards quietly '
             'hex a jovial badger near an old stone bridge ') * 4  # 92 ids.
# Produced by the reference CLIP tokenizer (open_clip, truncating): cut to 77 with EOT last.
LONG_TEXT_TOKENS = [
    49406, 518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929, 1519, 5757, 19140,
    22208, 31241, 320, 683, 39951, 22363, 2252, 550, 896, 2441, 2465, 518, 3712,
    2866, 3240, 18911, 962, 518, 10753, 1929, 1519, 5757, 19140, 22208, 31241, 320,
    683, 39951, 22363, 2252, 550, 896, 2441, 2465, 518, 3712, 2866, 3240, 18911,
    962, 518, 10753, 1929, 1519, 5757, 19140, 22208, 31241, 320, 683, 39951, 22363,
    2252, 550, 896, 2441, 2465, 518, 3712, 2866, 3240, 18911, 962, 49407,
]


@pytest.mark.parametrize('text', list(KNOWN_IDS))
def test_known_ids(text):
  expected = np.zeros(77, np.int32)
  ids = [SOT, *KNOWN_IDS[text], EOT]
  expected[:len(ids)] = ids
  np.testing.assert_array_equal(tokenizer.tokenize(text)[0], expected)
  assert tokenizer.default_tokenizer().encode(text) == KNOWN_IDS[text]


def test_long_text_is_cut_with_eot_last():
  np.testing.assert_array_equal(tokenizer.tokenize(LONG_TEXT)[0], LONG_TEXT_TOKENS)
  short = tokenizer.tokenize(LONG_TEXT, context_length=16)[0]
  np.testing.assert_array_equal(short, LONG_TEXT_TOKENS[:15] + [EOT])
  np.testing.assert_array_equal(tokenizer.tokenize(LONG_TEXT, context_length=2)[0], [SOT, EOT])


def test_batch_shape_dtype_and_rows():
  texts = list(KNOWN_IDS)[:4]
  for context_length in (77, 32):
    tokens = tokenizer.tokenize(texts, context_length=context_length)
    assert tokens.shape == (4, context_length) and tokens.dtype == np.int32
    for row, text in zip(tokens, texts):
      np.testing.assert_array_equal(row, tokenizer.tokenize(text, context_length)[0])
  assert tokenizer.tokenize('a cat').shape == (1, 77)
  assert tokenizer.tokenize([]).shape == (0, 77)


def test_round_trip_of_lower_case_ascii():
  rng = np.random.default_rng(0)
  tok = tokenizer.default_tokenizer()
  for _ in range(20):
    words = [''.join(rng.choice(list(string.ascii_lowercase), rng.integers(1, 12)))
             for _ in range(rng.integers(1, 10))]
    text = ' '.join(words)
    assert tok.decode(tok.encode(text)) == text + ' '  # CLIP decodes each word end as a space.


def test_vocab():
  assert tokenizer.vocab_size == tokenizer.default_tokenizer().vocab_size == 49408
  assert tokenizer.default_tokenizer() is tokenizer.default_tokenizer()
  assert os.path.getsize(tokenizer.default_vocab_path()) == 1_356_917


def test_bad_input_errors(tmp_path):
  with pytest.raises(ValueError, match='context_length=1'):
    tokenizer.tokenize('a cat', context_length=1)
  with pytest.raises(TypeError, match=r'texts\[1\] is a bytes'):
    tokenizer.tokenize(['a cat', b'a dog'])
  with pytest.raises(ValueError, match='Token id 49408'):
    tokenizer.default_tokenizer().decode([320, 49408])
  with pytest.raises(FileNotFoundError, match='bpe_simple_vocab_16e6'):
    tokenizer.Tokenizer(tmp_path / 'missing.txt.gz')
