"""The loop's throughput meter: steps/s, img/s, ETA and the share of time spent waiting for input."""
import numpy as np
import pytest

from ovseg_jax.train import progress


@pytest.fixture
def clock(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
  return now


def test_first_window_is_skipped_then_waits_are_a_share_of_each_window(clock):
  rng = np.random.default_rng()
  meter = progress.Progress(total_steps=1000, batch_size=8, start_step=0)
  meter.add_input_wait(50.0)  # Before the first report: compile time, excluded like the steps.
  clock[0] += 60.0
  assert meter.report(10) == {}
  window, steps = rng.uniform(5, 20), int(rng.integers(5, 50))
  waits = rng.uniform(0, window / steps, steps)
  for wait in waits:
    meter.add_input_wait(float(wait))
  clock[0] += window
  report = meter.report(10 + steps)
  np.testing.assert_allclose(report["input_wait_fraction"], waits.sum() / window, rtol=1e-9)
  np.testing.assert_allclose(report["steps_per_sec"], steps / window, rtol=1e-9)
  np.testing.assert_allclose(report["img_per_sec"], 8 * steps / window, rtol=1e-9)
  np.testing.assert_allclose(report["eta_min"], (1000 - 10 - steps) / (steps / window) / 60, rtol=1e-9)
  clock[0] += 4.0  # The next window starts from zero waiting.
  later = meter.report(20 + steps)
  assert later["input_wait_fraction"] == 0.0
  assert "input_wait_fraction=0 eta_min=" in progress.format_line(20 + steps, 1000, later)
