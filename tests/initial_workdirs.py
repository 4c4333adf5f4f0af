"""Workdirs holding a method's initial state as their step-0 checkpoint, with config.json, as `ovseg_jax.main` writes
them: for tests that restore a model and need no trained one (nothing to compile but the initialisation)."""
from pathlib import Path

import ml_collections
from etils import epath

from ovseg_jax.methods import registry
from ovseg_jax.train import checkpoint, sharding, workdir as workdirs


def initial_workdir(config: ml_collections.ConfigDict, workdir: Path) -> Path:
  """The initial state of the method `config.trainer` names, saved at step 0 in `workdir`."""
  trainable = registry.get(config).build(config, sharding.make_mesh(config.mesh.axes))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
  ckpt.save(0, trainable.state, {}, force=True)
  ckpt.close()
  workdirs.write_config(epath.Path(workdir), config)
  return workdir
