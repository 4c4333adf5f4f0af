"""The dataset inspection command: counts, text statistics, the training pipeline and the contact sheet."""
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines import demo_data, inspect, shards

REPO = Path(__file__).resolve().parents[1]
TINY = demo_data.DemoDataConfig(num_train=60, num_eval=4, num_tune=4, samples_per_shard=20)


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
  return demo_data.ensure_demo_data(tmp_path_factory.mktemp("demo"), TINY).train_shards


def test_summary_counts_this_hosts_samples_and_writes_a_contact_sheet(train_shards, tmp_path, capsys):
  summary = inspect.inspect(train_shards, num_hosts=3, host=1, epochs=2, text_mode="nouns_verbs", image_size=32,
                            out=tmp_path)
  assert summary["shards"] == 1 and summary["samples"] == 2 * 20 and summary["skipped"] == {}
  assert summary["words_per_text"]["mean"] > 0 and summary["pipeline_img_per_sec"] > 0
  sheet = Image.open(tmp_path / "contact_sheet.png")
  assert sheet.size[0] == 4 * 32
  assert "samples: 40" in capsys.readouterr().out


def test_keys_are_this_hosts_samples_one_per_line(train_shards, capsys):
  inspect.inspect(train_shards, num_hosts=3, host=2, keys=True)
  printed = capsys.readouterr().out.split()
  expected = [key for key, _, _ in shards.iterate_samples(shards.host_shards(train_shards, 2, 3), shards.SkipStats())]
  assert printed == expected and len(printed) == 20


def test_command_line_reports_missing_shards_as_skipped(tmp_path):
  out = subprocess.run([sys.executable, "-m", "data_pipelines.inspect", f"--shards={tmp_path}/{{00000..00001}}.tar"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "missing_shard" in out.stdout and "samples: 0" in out.stdout
