"""tf.data settings shared by the training pipelines.

tf.data's autotuner is off. Its model thread sleeps between optimisation passes, and destroying an iterator waits
for that thread, at times for the rest of its sleep. The image-text pipeline builds one iterator per epoch, so the
demo stopped for 20-50 s after 8 of 18 epoch ends (stacks taken in a pause: the main thread in
`~IteratorResource` waiting for the model thread, that thread in `Model::OptimizeLoop`'s timed wait, no thread
on the CPU). Parallelism is set instead: one call per usable core.
"""
import os

import tensorflow as tf


def parallel_calls() -> int:
  """Parallel map / interleave calls: the CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pipeline_options(deterministic: bool = True) -> tf.data.Options:
  """Options for a training pipeline: autotuning off (see the module docstring), the given determinism."""
  options = tf.data.Options()
  options.autotune.enabled = False
  options.deterministic = deterministic
  return options
