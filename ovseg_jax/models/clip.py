"""CLIP (ViT image tower + causal text tower) in Flax, laid out like OpenAI's model so released weights map
one to one (`ovseg_jax.weights.load_clip` reads the files users have).

`encode_image` and `encode_text` give the projected (not normalised) embeddings of the PyTorch model;
`encode_dense` gives one embedding per patch for mask pooling: the last block's attention is replaced by its
value path (each token attends only to itself, so its output is out_proj(v_proj(x))), as MaskCLIP does,
because the last layer's query/key were trained only to pool into the class token.

With `mask_prompt_depth` > 0 the image tower holds OVSeg's mask prompts [depth, grid^2, width]: given a crop's mask,
the tokens of patches without a kept pixel are replaced by prompt 0 after the patch embedding and by prompt d after
block d, for d < depth (the released forward), so a blanked-out region no longer looks like a patch of mean colour.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType
from ovseg_jax.models.resize import bicubic_resize_matrix


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
  embed_dim: int
  image_size: int
  patch_size: int
  vision_width: int
  vision_layers: int
  vision_heads: int
  context_length: int
  vocab_size: int
  text_width: int
  text_layers: int
  text_heads: int
  activation: str = "quick_gelu"  # OpenAI's; some open_clip and Hugging Face models use exact "gelu".
  layer_norm_eps: float = 1e-5
  mask_prompt_depth: int = 0  # OVSeg's mask prompt tuning; 0: no prompts.


def _activation(name: str):
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return lambda x: nn.gelu(x, approximate=False)
  raise ValueError(f"CLIP activation {name!r}: use 'quick_gelu' or 'gelu'.")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int, mask: jax.Array | None = None,
              bias: jax.Array | None = None, dtype: DType = jnp.float32) -> jax.Array:
  """Multi-head attention of q [B, N, W] over k, v [B, M, W]; `mask` (True = attend) and `bias` (added to the
  logits) broadcast to [B, heads, N, M]."""
  b, n, width = q.shape
  head_dim = width // num_heads
  split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, head_dim)
  logits = jnp.einsum("bqhd,bkhd->bhqk", split(q) * head_dim ** -0.5, split(k)).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, split(v)).reshape(b, n, width)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x)); attention with a fused in_proj as in torch's MultiheadAttention.

  `bias` [B or 1, heads, N, N] is added to the attention logits. Given `surgery` (the tokens [B, N, width] of
  CLIP Surgery's second path), the block returns (x, surgery + out_proj(value-value attention)): the value-value
  attention softmax(v v^T / sqrt(d) + bias) v reads this block's normalised input, and that path skips the MLP.
  """
  num_heads: int
  activation: str
  eps: float
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, value_path: bool = False,
               bias: jax.Array | None = None, surgery: jax.Array | None = None):
    width = x.shape[-1]
    y = nn.LayerNorm(self.eps, dtype=self.dtype, name="ln_1")(x)
    q, k, v = jnp.split(nn.Dense(3 * width, dtype=self.dtype, name="in_proj")(y), 3, axis=-1)
    attended = v if value_path else attention(q, k, v, self.num_heads, mask, bias, self.dtype)
    out_proj = nn.Dense(width, dtype=self.dtype, name="out_proj")
    x = x + out_proj(attended)
    y = nn.Dense(4 * width, dtype=self.dtype, name="c_fc")(nn.LayerNorm(self.eps, dtype=self.dtype, name="ln_2")(x))
    x = x + nn.Dense(width, dtype=self.dtype, name="c_proj")(_activation(self.activation)(y))
    if surgery is None:
      return x
    return x, surgery + out_proj(attention(v, v, v, self.num_heads, bias=bias, dtype=self.dtype))


class VisionTransformer(nn.Module):
  a: ClipArchitecture
  dtype: DType = jnp.float32

  def setup(self):
    a = self.a
    self.conv1 = nn.Conv(a.vision_width, (a.patch_size,) * 2, strides=(a.patch_size,) * 2, padding="VALID",
                         use_bias=False, dtype=self.dtype)
    grid = a.image_size // a.patch_size
    self.class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (a.vision_width,))
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                           (1 + grid * grid, a.vision_width))
    self.ln_pre = nn.LayerNorm(a.layer_norm_eps, dtype=self.dtype)
    self.blocks = [ResidualAttentionBlock(a.vision_heads, a.activation, a.layer_norm_eps, self.dtype,
                                          name=f"resblocks_{i}") for i in range(a.vision_layers)]
    self.ln_post = nn.LayerNorm(a.layer_norm_eps, dtype=self.dtype)
    self.proj = self.param("proj", nn.initializers.normal(a.vision_width ** -0.5), (a.vision_width, a.embed_dim))
    if a.mask_prompt_depth:
      self.mask_prompts = self.param("mask_prompts", nn.initializers.normal(0.02),
                                     (a.mask_prompt_depth, grid * grid, a.vision_width))

  def positions(self, h: int, w: int, align_corners: bool = False) -> jax.Array:
    """Class + patch positions, the patch grid resized bicubically for other image sizes."""
    grid = self.a.image_size // self.a.patch_size
    pos = self.positional_embedding
    if (h, w) == (grid, grid):
      return pos
    patch = pos[1:].reshape(grid, grid, -1)
    rows, cols = (jnp.asarray(bicubic_resize_matrix(grid, n, align_corners=align_corners)) for n in (h, w))
    patch = jnp.einsum("ia,abc,jb->ijc", rows, patch, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:1], patch.reshape(h * w, -1)], axis=0)

  def _kept_patches(self, masks: jax.Array, h: int, w: int) -> jax.Array:
    """bool [B, h*w, 1]: patches with at least one kept pixel of `masks` [B, H, W]."""
    if not self.a.mask_prompt_depth:
      raise ValueError("CLIP image tower: masks were given but the model has no mask prompts; set "
                       "mask_prompt_depth in its ClipArchitecture.")
    if self.mask_prompts.shape[1] != h * w:
      raise ValueError(f"CLIP mask prompts are for a {self.a.image_size}px image ({self.mask_prompts.shape[1]} "
                       f"patches), got a {h}x{w} patch grid: give crops of {self.a.image_size}px.")
    p = self.a.patch_size
    return jnp.any(masks.reshape(masks.shape[0], h, p, w, p), axis=(2, 4)).reshape(-1, h * w, 1)

  def tokens(self, images: jax.Array, masks: jax.Array | None = None,
             align_corners: bool = False) -> tuple[jax.Array, tuple[int, int]]:
    """The first block's input [B, 1 + h*w, width] (class token first, positions added, ln_pre) and the patch
    grid (h, w). `align_corners`: how the position grid is resized for other image sizes (PyTorch's flag)."""
    x = self.conv1(images.astype(self.dtype))
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    if masks is not None:
      x = jnp.where(self._kept_patches(masks, h, w), x, self.mask_prompts[0].astype(x.dtype))
    cls = jnp.broadcast_to(self.class_embedding.astype(x.dtype), (b, 1, c))
    x = jnp.concatenate([cls, x], axis=1) + self.positions(h, w, align_corners).astype(x.dtype)
    return self.ln_pre(x), (h, w)

  def __call__(self, images: jax.Array, dense: bool = False, masks: jax.Array | None = None) -> jax.Array:
    """images [B, H, W, 3] CLIP-normalised -> [B, embed_dim], or with `dense` [B, h, w, embed_dim]. `masks`
    bool [B, H, W] (the kept pixels of each crop) switch on the mask prompts."""
    x, (h, w) = self.tokens(images, masks)
    b = x.shape[0]
    kept = None if masks is None else self._kept_patches(masks, h, w)
    for i, block in enumerate(self.blocks):
      x = block(x, value_path=dense and i == len(self.blocks) - 1)
      if kept is not None and i + 1 < self.a.mask_prompt_depth:
        patches = jnp.where(kept, x[:, 1:], self.mask_prompts[i + 1].astype(x.dtype))
        x = jnp.concatenate([x[:, :1], patches], axis=1)
    if dense:
      return (self.ln_post(x[:, 1:]) @ self.proj.astype(x.dtype)).reshape(b, h, w, -1)
    return self.ln_post(x[:, 0]) @ self.proj.astype(x.dtype)


class TextTransformer(nn.Module):
  a: ClipArchitecture
  dtype: DType = jnp.float32

  def setup(self):
    a = self.a
    self.token_embedding = nn.Embed(a.vocab_size, a.text_width, dtype=self.dtype)
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                           (a.context_length, a.text_width))
    self.blocks = [ResidualAttentionBlock(a.text_heads, a.activation, a.layer_norm_eps, self.dtype,
                                          name=f"resblocks_{i}") for i in range(a.text_layers)]
    self.ln_final = nn.LayerNorm(a.layer_norm_eps, dtype=self.dtype)
    self.text_projection = self.param("text_projection", nn.initializers.normal(a.text_width ** -0.5),
                                      (a.text_width, a.embed_dim))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens int [B, L] (L <= context_length; end of text = the largest id) -> [B, embed_dim]."""
    n = tokens.shape[1]
    x = self.token_embedding(tokens) + self.positional_embedding[:n].astype(self.dtype)
    causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
    for block in self.blocks:
      x = block(x, mask=causal)
    x = self.ln_final(x)
    eot = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
    return eot @ self.text_projection.astype(x.dtype)


class CLIP(nn.Module):
  """`apply(..., images, method='encode_image')`, `method='encode_text'`, `method='encode_dense'`."""
  architecture: ClipArchitecture
  dtype: DType = jnp.float32

  def setup(self):
    self.visual = VisionTransformer(self.architecture, self.dtype)
    self.text = TextTransformer(self.architecture, self.dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(1 / 0.07)), ())

  def encode_image(self, images: jax.Array, masks: jax.Array | None = None) -> jax.Array:
    return self.visual(images, masks=masks)

  def encode_dense(self, images: jax.Array) -> jax.Array:
    return self.visual(images, dense=True)

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    return self.text(tokens)

  def __call__(self, images: jax.Array, tokens: jax.Array,
               masks: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return self.encode_image(images, masks), self.encode_text(tokens)
