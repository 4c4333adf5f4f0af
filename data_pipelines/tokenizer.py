"""CLIP's byte-level BPE tokenizer: captions -> int32 token ids [B, context_length].

The ids are those of OpenAI CLIP, so pretrained CLIP text towers read them unchanged:
  1. clean: `ftfy.fix_text`, HTML-unescape twice, lower-case. (CLIP also collapses whitespace and
     strips the ends. Neither changes the ids: the pre-split skips whitespace, and the only
     characters `str.strip` removes beyond it, U+001C..U+001F, are dropped by ftfy and unescape.)
  2. pre-split into words: the marker texts (so a caption's literal '<|endoftext|>' is EOT, as in
     CLIP), English contractions, letter runs, single digits and runs of other non-space characters;
  3. map each word's UTF-8 bytes to printable characters and merge them by BPE, marking the last
     symbol with `</w>`;
  4. frame with SOT (49406) and EOT (49407) and zero-pad; a text too long for the context is cut
     and its last kept position overwritten with EOT, so every row ends its text with EOT.

The vocabulary (`assets/bpe_simple_vocab_16e6.txt.gz`, MIT, OpenAI) is read once per process.
"""
from collections.abc import Iterable, Sequence
import functools
import gzip
import html
import importlib.resources
import math
import os

import ftfy
import numpy as np
import regex

vocab_size = 49408
SOT_ID = 49406
EOT_ID = 49407
_SOT_TEXT = '<|startoftext|>'
_EOT_TEXT = '<|endoftext|>'
_END_OF_WORD = '</w>'
_NUM_MERGES = vocab_size - 2 * 256 - 2  # 256 bytes, the same with `</w>`, merges, SOT and EOT.
_WORD_CACHE_SIZE = 1 << 18  # Bounded: web captions hold an endless tail of one-off words.

# IGNORECASE is kept from CLIP: after lower-casing it still matters, e.g. "'ſ" matches `'s`.
_WORD = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


def default_vocab_path() -> str:
  """Path of the vocabulary file shipped with this package."""
  return os.fspath(importlib.resources.files('data_pipelines') / 'assets' / 'bpe_simple_vocab_16e6.txt.gz')


def _byte_chars() -> list[str]:
  """The printable character that stands for each byte value 0..255.

  Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, NBSP, soft hyphen)
  borrow code points 256.. in byte order, so BPE symbols never hold whitespace or controls.
  """
  printable = {*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)}
  chars, borrowed = [], 0
  for byte in range(256):
    if byte in printable:
      chars.append(chr(byte))
    else:
      chars.append(chr(256 + borrowed))
      borrowed += 1
  return chars


def _clean(text: str) -> str:
  return html.unescape(html.unescape(ftfy.fix_text(text))).lower()


class Tokenizer:
  """CLIP's BPE tokenizer over one vocabulary file; BPE results are cached per word."""

  def __init__(self, vocab_path: str | os.PathLike | None = None):
    vocab_path = os.fspath(vocab_path or default_vocab_path())
    try:
      with gzip.open(vocab_path, 'rt', encoding='utf-8') as f:
        lines = f.read().split('\n')
    except (OSError, EOFError) as e:
      raise FileNotFoundError(
          f'Cannot read the CLIP BPE vocabulary {vocab_path!r} ({e}). It ships with the package as '
          'data_pipelines/assets/bpe_simple_vocab_16e6.txt.gz (1,356,917 bytes, also in the '
          'open-clip-torch wheel as open_clip/bpe_simple_vocab_16e6.txt.gz).') from e
    # Line 0 is a version header; CLIP uses only the first _NUM_MERGES merges after it.
    merges = [tuple(line.split()) for line in lines[1:1 + _NUM_MERGES]]
    if len(merges) != _NUM_MERGES or any(len(merge) != 2 for merge in merges):
      raise ValueError(f'{vocab_path!r} is not the CLIP BPE vocabulary: expected a header line and at least '
                       f'{_NUM_MERGES} lines "A B"; use data_pipelines/assets/bpe_simple_vocab_16e6.txt.gz.')
    self._byte_chars = _byte_chars()
    # CLIP's id order: single symbols in code-point order, then the same with `</w>`, then one per
    # merge, then SOT and EOT.
    symbols = sorted(self._byte_chars)
    vocab = [*symbols, *(s + _END_OF_WORD for s in symbols), *(a + b for a, b in merges), _SOT_TEXT, _EOT_TEXT]
    self._ids = {piece: i for i, piece in enumerate(vocab)}
    self._pieces = vocab
    self._merge_ranks = {merge: rank for rank, merge in enumerate(merges)}
    self._byte_of_char = {c: byte for byte, c in enumerate(self._byte_chars)}
    self._word_ids = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._word_ids_uncached)

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
    """Ids of one pre-split word."""
    if word in (_SOT_TEXT, _EOT_TEXT):
      return (self._ids[word],)
    chars = [self._byte_chars[byte] for byte in word.encode('utf-8')]
    symbols = chars[:-1] + [chars[-1] + _END_OF_WORD]
    # Merge the lowest-ranked adjacent pair everywhere (left to right, without overlap) until no
    # adjacent pair is a known merge.
    while len(symbols) > 1:
      best = min(zip(symbols, symbols[1:]), key=lambda pair: self._merge_ranks.get(pair, math.inf))
      if best not in self._merge_ranks:
        break
      merged, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return tuple(self._ids[s] for s in symbols)

  def encode(self, text: str) -> list[int]:
    """Ids of `text` without SOT, EOT or padding."""
    ids = []
    for word in _WORD.findall(_clean(text)):
      ids.extend(self._word_ids(word))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` as CLIP decodes it: each word end becomes a space (so text ends with one).

    SOT, EOT and padding (id 0 is '!') are decoded too; pass `encode`'s output or strip them first.
    """
    pieces = []
    for i in ids:
      if not 0 <= i < len(self._pieces):
        raise ValueError(f'Token id {i} is outside the vocabulary [0, {len(self._pieces)}).')
      pieces.append(self._pieces[i])
    text_bytes = bytes(self._byte_of_char[c] for c in ''.join(pieces))
    return text_bytes.decode('utf-8', errors='replace').replace(_END_OF_WORD, ' ')

  def tokenize(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
    """int32 [B, context_length]: SOT, ids, EOT, zero padding; cut texts keep EOT as last id."""
    if context_length < 2:
      raise ValueError(f'context_length={context_length} must be at least 2 to hold SOT and EOT.')
    if isinstance(texts, str):
      texts = [texts]
    tokens = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f'texts[{row}] is a {type(text).__name__}, not a str; pass captions as str '
                        "(decode bytes with .decode('utf-8')).")
      ids = [SOT_ID, *self.encode(text)[:context_length - 2], EOT_ID]
      tokens[row, :len(ids)] = ids
    return tokens


@functools.cache
def default_tokenizer() -> Tokenizer:
  """The process-wide tokenizer over the shipped vocabulary, loaded on first use."""
  return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
  """CLIP token ids of `texts` (one str or a sequence), int32 [B, context_length]; see module docstring."""
  return default_tokenizer().tokenize(texts, context_length)
