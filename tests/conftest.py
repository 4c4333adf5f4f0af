"""Shared test setup: 8 fake CPU devices so sharding code is exercised on one machine; one tiny trained S-Seg demo
workdir for the tests that restore a checkpoint."""
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory):
  """A 6-step S-Seg run of `configs/sseg_demo.py:tiny` with its demo data (checkpoint, config.json, results)."""
  from configs import sseg_demo
  from ovseg_jax.methods.sseg import trainer
  root = tmp_path_factory.mktemp("sseg_demo")
  config = sseg_demo.get_config("tiny")
  config.data.demo_root = str(root / "demo")
  trainer.train_and_evaluate(config, root / "run")
  return root / "run"
