"""The training pipelines' tf.data settings: no autotuning model, one parallel call per usable core."""
import os

import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import tf_options


@pytest.mark.parametrize("deterministic", [True, False])
def test_options_turn_autotuning_off_and_keep_the_determinism_asked_for(deterministic):
  options = tf.data.Dataset.range(4).with_options(tf_options.pipeline_options(deterministic)).options()
  assert options.autotune.enabled is False and options.deterministic is deterministic


def test_parallel_calls_are_the_usable_cores():
  assert tf_options.parallel_calls() == len(os.sched_getaffinity(0))


def test_a_pipeline_with_them_gives_every_element_in_order():
  dataset = tf.data.Dataset.range(100).map(lambda x: x * x, num_parallel_calls=tf_options.parallel_calls())
  values = list(dataset.batch(7).prefetch(2).with_options(tf_options.pipeline_options()).as_numpy_iterator())
  np.testing.assert_array_equal(np.concatenate(values), np.arange(100) ** 2)
