"""Sharded training on 8 fake CPU devices equals the 1-device run; parameter sharding rules place what they say."""
import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import sseg_demo
from ovseg_jax.methods.sseg import setup as sseg_setup
from ovseg_jax.train import sharding
from ovseg_jax.train.state import TrainState
from ovseg_jax.ops.normalize import normalize_images

# One explicit spec (first match wins) and FSDP with a threshold the tiny model crosses; 'fsdp' replicates
# on meshes without an fsdp axis, an explicit spec naming it would not fit there.
FSDP_RULES = (("text_encoder/token_embedding/embedding", (None, "fsdp")), ("norm", "replicate"), (".*", "fsdp"))
FSDP_MIN_SIZE = 1024
MESHES = {"1": ((("data", 1),), FSDP_RULES[1:]), "8x1": ((("data", 8),), FSDP_RULES[1:]),
          "4x2": ((("data", 4), ("fsdp", 2)), FSDP_RULES)}


def _mesh(*axes):
  return sharding.make_mesh(axes, jax.devices()[:int(np.prod([s for _, s in axes]))])


@pytest.fixture(scope="module")
def setup():
  config = sseg_demo.get_config("tiny")
  assert config.model.dtype == "float32" and config.batch_size == 8
  # Smaller than 'tiny' where it costs compile time and not coverage: three train steps get compiled.
  config.loss.aux_layers = False
  config.model.decoder.update(num_layers=1, num_queries=4)
  config.pseudo_masks.update(num_clusters=3, num_iters=2)
  model, tx, schedule, state, _ = sseg_setup.build_state(config, _mesh(("data", 1)))
  rng = np.random.default_rng(0)
  size, length = config.data.image_size, config.data.context_length
  tokens = rng.integers(1, 1000, (config.batch_size, length)).astype(np.int32)
  tokens[:, 0], tokens[:, 5], tokens[:, 6:] = 49406, 49407, 0
  batch = {"image": rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8), "tokens": tokens}
  return config, model, tx, schedule, jax.device_get(state), batch


@pytest.fixture(scope="module")
def runs(setup):
  """Two train steps on the same batch and key for every mesh: (metrics per step, final state, shardings)."""
  config, model, tx, schedule, host_state, batch = setup
  key = jax.random.key(3)
  lowered = {}
  for name, (axes, rules) in MESHES.items():
    mesh = _mesh(*axes)
    shardings = sharding.state_shardings(host_state, mesh, rules, min_size=FSDP_MIN_SIZE)
    state = jax.device_put(host_state, shardings)
    global_batch = sharding.host_batch_to_global(batch, mesh)
    step = sseg_setup.make_train_step(config, model, tx, schedule, mesh, shardings)
    lowered[name] = (step.lower(state, global_batch, key, None), state, global_batch, shardings)
  # XLA compiles outside the GIL: the three meshes' steps compile side by side (compile time dominates this test).
  with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
    compiled = dict(zip(lowered, pool.map(lambda item: item[0].compile(), lowered.values())))
  out = {}
  for name, (_, state, global_batch, shardings) in lowered.items():
    metrics = []
    for _ in range(2):
      state, m = compiled[name](state, global_batch, key, None)
      metrics.append(jax.device_get(m))
    out[name] = (metrics, state, shardings)
  return out


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("mesh_name", ["8x1", "4x2"])
def test_sharded_steps_equal_the_one_device_run(setup, runs, mesh_name):
  ref_metrics, ref_state, _ = runs["1"]
  metrics, state, _ = runs[mesh_name]
  for ref_m, m in zip(ref_metrics, metrics):
    for name in ("loss", "mask_loss", "contrastive_loss", "grad_norm"):
      assert _relative_error(m[name], ref_m[name]) < 1e-5, (name, m[name], ref_m[name])
  # Adam's mu after two steps is a fixed linear mix of both steps' gradients and nu of their squares: they
  # check the gradients leaf by leaf. Parameters moved at step 2 (warmup starts at lr 0).
  ref_adam, adam = jax.device_get(ref_state.opt_state[1][0]), jax.device_get(state.opt_state[1][0])
  mu_scale = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(ref_adam.mu)))
  leaves = zip(jax.tree_util.tree_leaves_with_path(ref_adam.mu), *map(jax.tree.leaves, (
      adam.mu, ref_adam.nu, adam.nu)))
  checked = 0
  for (path, ref_mu), mu, ref_nu, nu in leaves:
    name = sharding.path_name(path)
    if np.linalg.norm(ref_mu) < 1e-6 * mu_scale:
      # A gradient that vanishes in exact arithmetic (attention key biases: softmax ignores a shift) is
      # rounding noise: it can only be checked to stay negligible.
      assert np.linalg.norm(mu) < 1e-6 * mu_scale, name
      continue
    assert _relative_error(mu, ref_mu) < 1e-5, ("mu", name, _relative_error(mu, ref_mu))
    assert _relative_error(nu, ref_nu) < 1e-5, ("nu", name, _relative_error(nu, ref_nu))
    checked += 1
  assert checked > 0.9 * len(jax.tree.leaves(ref_adam.mu))
  # Parameters over the whole tree: Adam divides by sqrt(nu), so single near-zero gradient entries (and
  # the noise above) give some zero-initialised biases leaf errors of a few 1e-5, a negligible part of it.
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])
  assert _relative_error(flat(state.params), flat(ref_state.params)) < 1e-5
  assert _relative_error(flat(state.params), flat(setup[4].params)) > 1e-4  # They did move.
  assert int(state.step) == 2


def test_parameters_and_adam_moments_are_really_sharded_on_4x2(runs):
  _, state, shardings = runs["4x2"]
  params, adam = state.params, state.opt_state[1][0]
  kernel = params["backbone"]["vit"]["block_0"]["mlp"]["dense_0"]["kernel"]  # (32, 64): largest dim 1.
  embedding = params["text_encoder"]["token_embedding"]["embedding"]  # explicit rule beats '.*'.
  assert kernel.sharding.spec == P(None, "fsdp") and kernel.addressable_shards[0].data.shape == (32, 32)
  assert embedding.sharding.spec == P(None, "fsdp")
  assert adam.mu["backbone"]["vit"]["block_0"]["mlp"]["dense_0"]["kernel"].sharding.spec == P(None, "fsdp")
  assert adam.nu["text_encoder"]["token_embedding"]["embedding"].sharding.spec == P(None, "fsdp")
  # Below min_size, matched by 'replicate' before '.*', and scalars: replicated.
  assert params["backbone"]["vit"]["block_0"]["mlp"]["dense_0"]["bias"].sharding.spec == P()
  assert params["backbone"]["vit"]["norm"]["scale"].sharding.spec == P()
  assert state.step.sharding.spec == P() and adam.count.sharding.spec == P()
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  assert sum(spec != P() for spec in specs) > 60  # params, mu and nu of ~25 kernels each.


def test_contrastive_loss_uses_the_whole_global_batch_on_every_mesh(setup, runs):
  config, model, _, _, host_state, batch = setup
  key = jax.random.fold_in(jax.random.key(3), 0)  # What the step does with its key at step 0.
  _, dropout_key = jax.random.split(key)
  apply = jax.jit(lambda p, images, tokens: model.apply(
      {"params": p}, normalize_images(images), tokens, train=True, rngs={"dropout": dropout_key}))
  out = jax.device_get(apply(host_state.params, batch["image"], batch["tokens"]))
  x = np.asarray(out["image_embedding"], np.float64)
  y = np.asarray(out["text_embedding"], np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  logits = float(out["logit_scale"]) * x @ y.T
  lse = lambda a, axis: np.log(np.sum(np.exp(a - a.max(axis, keepdims=True)), axis)) + a.max(axis)
  reference = np.mean(lse(logits, 1) - np.diag(logits)) + np.mean(lse(logits, 0) - np.diag(logits))
  for name, (metrics, _, _) in runs.items():
    assert _relative_error(metrics[0]["contrastive_loss"], reference) < 1e-5, name


# --- The rules themselves, on abstract shapes (no compilation).

def _specs(tree, mesh, rules, **kw):
  return jax.tree.map(lambda s: s.spec, sharding.param_shardings(tree, mesh, rules, **kw))


def test_fsdp_shards_the_largest_divisible_dimension_above_the_threshold():
  shapes = {"a": {"kernel": jax.ShapeDtypeStruct((6, 4096), np.float32)},  # 4096 % 4 == 0.
            "b": jax.ShapeDtypeStruct((4098, 8), np.float32),  # 4098 % 4 != 0: the next largest, 8.
            "c": jax.ShapeDtypeStruct((5, 4099), np.float32),  # nothing divides: replicate.
            "small": jax.ShapeDtypeStruct((64, 64), np.float32)}  # 4096 < 2**14: replicate.
  specs = _specs(shapes, _mesh(("data", 2), ("fsdp", 4)), [(".*", "fsdp")])
  assert specs == {"a": {"kernel": P(None, "fsdp")}, "b": P(None, "fsdp"), "c": P(), "small": P()}
  assert _specs(shapes, _mesh(("data", 8)), [(".*", "fsdp")])["a"]["kernel"] == P()  # No fsdp axis.
  assert _specs(shapes, _mesh(("fsdp", 8)), [(".*", "fsdp")], min_size=1)["small"] == P("fsdp", None)


def test_first_matching_rule_wins_and_unmatched_parameters_replicate():
  shapes = {"enc": {"kernel": jax.ShapeDtypeStruct((16, 8), np.float32)},
            "dec": {"kernel": jax.ShapeDtypeStruct((16, 8), np.float32)}}
  mesh = _mesh(("data", 4), ("model", 2))
  rules = [("enc/kernel$", ("data", "model")), ("kernel", (None, "model")), ("kernel", "replicate")]
  assert _specs(shapes, mesh, rules) == {"enc": {"kernel": P("data", "model")}, "dec": {"kernel": P(None, "model")}}
  assert _specs(shapes, mesh, [("enc", (("data", "model"), None))])["enc"]["kernel"] == P(("data", "model"), None)
  assert _specs(shapes, mesh, [("nothing", "fsdp")]) == {"enc": {"kernel": P()}, "dec": {"kernel": P()}}


@pytest.mark.parametrize("rule, message", [
    (("kernel", "fdsp"), "unknown tactic"),
    (("kernel", ("model",)), "rank 2"),
    (("kernel", (None, "tensor")), "does not have"),
    (("kernel", ("data", None)), "does not divide"),
    (("kernel", 3), "not int"),
    (("kernel",), r"\(regex, tactic\) pair"),
])
def test_bad_rules_fail_naming_the_parameter_and_the_fix(rule, message):
  shapes = {"enc": {"kernel": jax.ShapeDtypeStruct((6, 8), np.float32)}}
  with pytest.raises(ValueError, match=message):
    sharding.param_shardings(shapes, _mesh(("data", 4), ("model", 2)), [rule])


def test_state_shardings_mirror_parameters_into_the_optimizer_state():
  import optax
  params = {"w": jax.ShapeDtypeStruct((8, 4), np.float32), "b": jax.ShapeDtypeStruct((4,), np.float32)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, mask={"w": True, "b": False}))
  state = TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                           opt_state=jax.eval_shape(tx.init, params))
  shardings = sharding.state_shardings(state, _mesh(("fsdp", 8)), [("w", "fsdp")], min_size=1)
  for path, s in jax.tree_util.tree_leaves_with_path(shardings):
    name = sharding.path_name(path)
    expected = P("fsdp", None) if name.endswith("/w") else P()
    assert s.spec == expected, name
  with pytest.raises(TypeError, match="params"):
    sharding.state_shardings(params, _mesh(("fsdp", 8)), [])


def test_batch_constraint_splits_the_batch_dimension_only():
  mesh = sharding.make_mesh((("data", 4), ("fsdp", 2)))
  constrain = sharding.batch_constraint(mesh)
  x = jnp.zeros((3, 8, 6))
  out = jax.jit(lambda a: constrain(a, batch_dim=1) * 2)(x)
  assert out.sharding.spec == P(None, ("data", "fsdp"))
  assert jax.jit(lambda a: constrain(a))(jnp.zeros((8, 5))).sharding.spec == P(("data", "fsdp"))
