"""ResNet backbone as detectron2 builds it for Mask2Former (He et al. 2016): bottleneck blocks, frozen BN.

Stem: 7x7/2 conv + norm + ReLU + 3x3/2 max pool; then stages res2..res5 of bottleneck blocks (1x1 reduce,
3x3, 1x1 expand, each conv bias-free and followed by a norm), the first block of a stage projecting its
shortcut with a 1x1 conv + norm and (from res3 on) striding by 2. The stride sits in the 3x3 conv as in
torchvision (detectron2's STRIDE_IN_1X1 False, which Mask2Former uses with torchvision-converted weights),
or in the first 1x1 conv with `stride_in_1x1=True` (MSRA's original ResNets). Returns the stage outputs at
strides 4, 8, 16, 32, the interface every backbone here shares.

Norms are detectron2's FrozenBatchNorm2d: a fixed per-channel affine computed from the stored weight, bias,
running mean and variance. All four live in `params` (so `{'params': params}` is all the model needs, as for
every backbone here) under `jax.lax.stop_gradient`: like detectron2's buffers they never train, and with zero
gradients and no weight decay on 1-d leaves the optimizer leaves them unchanged.

Parameter names follow detectron2's (`stem_conv1/norm/var`, `res3_0/shortcut/conv/kernel`, ...) so that
`ovseg_jax.weights.resnet` maps checkpoints one to one.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovseg_jax.models.layers import DType

# name -> blocks per stage (res2..res5), all with the standard widths below.
VARIANTS = {"R50": (3, 4, 6, 3), "R101": (3, 4, 23, 3), "R152": (3, 8, 36, 3)}
STEM_WIDTH = 64
BOTTLENECK_WIDTHS = (64, 128, 256, 512)
OUT_CHANNELS = (256, 512, 1024, 2048)

# detectron2's c2_msra_fill: He normal over fan-out.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
  """x * weight / sqrt(var + eps) + bias - mean * weight / sqrt(var + eps), from stored statistics."""
  epsilon: float = 1e-5
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = (x.shape[-1],)
    stored = lambda name, init: jax.lax.stop_gradient(self.param(name, init, channels, self.param_dtype))
    ones, zeros = nn.initializers.ones, nn.initializers.zeros
    scale = stored("scale", ones) * jax.lax.rsqrt(stored("var", ones) + self.epsilon)
    shift = stored("bias", zeros) - stored("mean", zeros) * scale
    return x * scale.astype(self.dtype) + shift.astype(self.dtype)


class ConvNorm(nn.Module):
  """detectron2's `Conv2d(bias=False, norm=FrozenBN)` with PyTorch's symmetric padding of kernel // 2."""
  features: int
  kernel_size: int
  stride: int = 1
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, pad = self.kernel_size, self.kernel_size // 2
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride), padding=((pad, pad), (pad, pad)),
                use_bias=False, kernel_init=_conv_init, name="conv", **kw)(x)
    return FrozenBatchNorm(name="norm", **kw)(x)


class Bottleneck(nn.Module):
  """relu(shortcut(x) + conv3(relu(conv2(relu(conv1(x)))))); the shortcut is projected when the shape changes."""
  width: int
  out_channels: int
  stride: int = 1
  stride_in_1x1: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    y = nn.relu(ConvNorm(self.width, 1, stride_1x1, name="conv1", **kw)(x))
    y = nn.relu(ConvNorm(self.width, 3, stride_3x3, name="conv2", **kw)(y))
    y = ConvNorm(self.out_channels, 1, name="conv3", **kw)(y)
    if x.shape[-1] != self.out_channels or self.stride != 1:
      x = ConvNorm(self.out_channels, 1, self.stride, name="shortcut", **kw)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """images [B, H, W, 3] -> {4: res2 [B, H/4, W/4, out_channels[0]], 8: res3, 16: res4, 32: res5}.

  Sizes follow PyTorch's floor rounding for any input size (a 45-pixel side gives 23, 12, 6, 3, 2).
  Defaults are R50 (`VARIANTS` holds the deeper ones); every width is configurable for small models.
  """
  depths: tuple[int, ...] = VARIANTS["R50"]
  stem_width: int = STEM_WIDTH
  bottleneck_widths: tuple[int, ...] = BOTTLENECK_WIDTHS
  out_channels: tuple[int, ...] = OUT_CHANNELS
  stride_in_1x1: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[int, jax.Array]:
    del train  # Frozen norms and no dropout: training computes the same function as inference.
    if not len(self.depths) == len(self.bottleneck_widths) == len(self.out_channels):
      raise ValueError(f"depths {self.depths}, bottleneck_widths {self.bottleneck_widths} and out_channels "
                       f"{self.out_channels} must have one entry per stage.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(ConvNorm(self.stem_width, 7, 2, name="stem_conv1", **kw)(images))
    # Padding with -inf, as PyTorch's max_pool2d(3, 2, padding=1) does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = {}
    for stage, (depth, width, out) in enumerate(zip(self.depths, self.bottleneck_widths, self.out_channels)):
      for block in range(depth):
        stride = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(width, out, stride, self.stride_in_1x1, name=f"res{stage + 2}_{block}", **kw)(x)
      outputs[4 * 2 ** stage] = x
    return outputs


def resnet(variant: str, **kwargs) -> ResNet:
  """A standard-width ResNet by name ('R50', 'R101', 'R152')."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown ResNet variant {variant!r}; use one of {sorted(VARIANTS)}.")
  return ResNet(VARIANTS[variant], **kwargs)
