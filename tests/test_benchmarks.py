"""Benchmark helpers: generated shards are readable training data; the report writes its table and JSON."""
import json
import random

import numpy as np

from benchmarks import common, input_pipeline
from data_pipelines import shards


def test_generated_shards_are_valid_training_samples(tmp_path):
  paths = input_pipeline.write_shards(tmp_path, 7)
  stats = shards.SkipStats()
  samples = list(shards.iterate_samples(paths, stats))
  assert len(samples) == 7 and stats.counts == {}


def test_generated_segmentation_root_is_an_ade150_layout(tmp_path):
  from data_pipelines import eval_datasets
  input_pipeline.write_segmentation_root(tmp_path, 2)
  example = eval_datasets.load("ade150", tmp_path, "train").example(1)
  assert example.image.shape == (480, 640, 3) and example.label.shape == (480, 640)
  assert len(np.unique(example.label)) > 10


def test_pil_crop_matches_the_training_crop_contract():
  from PIL import Image
  image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
  crop = input_pipeline._pil_random_resized_crop(image, random.Random(0))
  assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8


def test_report_prints_the_table_and_writes_json(tmp_path, capsys):
  rows = [{"what": "a", "img/s": 1234.5}, {"what": "b", "img/s": 2.0}]
  common.report("title", rows, tmp_path / "r.json")
  printed = capsys.readouterr().out
  assert "| a | 1234.50 |" in printed and "load_1min" in printed
  assert json.loads((tmp_path / "r.json").read_text())["rows"] == rows
  assert common.median_seconds(lambda: None, repeats=3) >= 0.0


def test_flop_count_of_a_compiled_matmul_is_analytic():
  import jax
  import jax.numpy as jnp
  from benchmarks import methods
  a = jnp.ones((64, 96), jnp.float32)
  b = jnp.ones((96, 32), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert methods.compiled_flops(compiled) == 2 * 64 * 96 * 32
  assert methods.peak_gib(compiled) > 0


def test_matching_rows_report_the_share_of_a_step():
  from benchmarks import run
  rows = run.matching_rows(paper_step_seconds=10.0, batch=1, layers=2)
  assert rows[0]["ms"] > 0 and rows[1]["ms"] > 0
  assert rows[0]["share of paper step"] == rows[0]["ms"] / 1e3 / 10.0


def test_trace_summary_sums_operations_by_model_part_and_kind(tmp_path):
  import gzip
  from benchmarks import paper_profile
  hlo = ('  %ynn_fusion.1 = f32[2] fusion(%a), metadata={op_name="jit(step)/jvp(SSeg)/backbone/qkv/dot_general"}\n'
         '  %copy_fusion.2 = f32[2] fusion(%b), metadata={op_name="jit(step)/transpose(jvp(SSeg))/backbone/reshape"}\n'
         '  ROOT %add.3 = f32[2] add(%c, %d), metadata={op_name="jit(step)/jvp(DinoViT)/block_0/add"}\n')
  events = [{"ph": "X", "name": "ynn_fusion.1", "dur": 3000}, {"ph": "X", "name": "copy_fusion.2", "dur": 1000},
            {"ph": "X", "name": "add.3", "dur": 500}, {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9000}]
  with gzip.open(tmp_path / "x.perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = paper_profile.summarise_trace(tmp_path, hlo)
  assert summary["part"] == {"backbone (fwd)": 3.0, "backbone (bwd)": 1.0, "DinoViT (fwd)": 0.5}
  assert summary["kind"] == {"matmul (ynn / dot fusions)": 3.0, "other": 1.5}


def test_interleaved_rounds_call_every_function_in_turn():
  calls = []
  times = common.interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3,
                                     warmup=1)
  assert calls == ["a", "b"] * 4
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and min(times["a"] + times["b"]) >= 0.0


def test_paper_mode_rows_take_ratios_within_each_round():
  from benchmarks import methods, paper
  rng = np.random.default_rng(4)
  times = {name: list(rng.uniform(0.5, 2.0, 5)) for name in ("ceiling", "online", "stored")}
  steps = {"online": methods.CompiledStep(None, 9e9, 2.0, 30.0), "stored": methods.CompiledStep(None, 6e9, 1.5, 20.0)}
  online, stored = paper.summarise(times, steps, batch=2, ceiling_flops=3e9)
  ceiling = 3e9 / np.asarray(times["ceiling"], np.float64)
  for row, mode in ((online, "online"), (stored, "stored")):
    seconds = np.asarray(times[mode], np.float64)
    fraction = steps[mode].flops / seconds / ceiling
    assert np.isclose(row["of f32 ceiling"], np.median(fraction))
    assert np.isclose(row["img/s"], np.median(2 / seconds))
    assert f"of ceiling {fraction.min():.2f}-{fraction.max():.2f}" in row["range over rounds"]
  # The median of per-round ratios, which differs from the ratio of the medians on these times.
  speedup = np.asarray(times["online"]) / np.asarray(times["stored"])
  assert not np.isclose(np.median(speedup), np.median(times["online"]) / np.median(times["stored"]))
  assert np.isclose(stored["img/s vs online f32"], np.median(speedup)) and "img/s vs online f32" not in online
  assert "batch 2" in stored["what"] and "stored" in stored["what"]
