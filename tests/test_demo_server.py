"""The browser demo: its requests over HTTP (urllib) and its page in headless Chromium (selenium), one server on a
loopback port for the module, serving the tiny trained demo checkpoint."""
import base64
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from ovseg_jax import predict
from ovseg_jax.eval import mask_scores
from ovseg_jax.serve import http, session as sessions

LIMITS = sessions.Limits(upload_bytes=200_000, pixels=96 * 96, classes=5)
APT = "apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="module")
def model(demo_workdir):
  return predict.RestoredModel(str(demo_workdir))


@pytest.fixture(scope="module")
def server(model):
  # Scale 1: one window per demo scene, so each request is one small batch.
  server = http.DemoServer(sessions.Session([model], scale=1.0, num_examples=3, limits=LIMITS))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


def _request(server, path, body=None, **query):
  """(status, decoded answer: JSON, text or PNG bytes)."""
  url = server.url.rstrip("/") + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
  request = urllib.request.Request(url, data=body, method="POST" if path == "/segment" else "GET")
  try:
    with urllib.request.urlopen(request, timeout=300) as response:
      status, kind, payload = response.status, response.headers["Content-Type"], response.read()
  except urllib.error.HTTPError as e:
    status, kind, payload = e.code, e.headers["Content-Type"], e.read()
  if kind == "application/json":
    return status, json.loads(payload)
  return status, payload if kind == "image/png" else payload.decode()


def _png(array):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def _decode_data_url(url):
  assert url.startswith("data:image/png;base64,")
  return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_page_offers_the_models_examples_classifiers_and_demo_vocabulary(server):
  status, page = _request(server, "/")
  assert status == 200
  assert "run (step 6)" in page and page.count('name="example"') == 3
  assert '<option value="learned">learned</option>' in page
  assert 'value="background|grass|sand|water|brick|wood|snow, circle, square' in page
  status, png = _request(server, "/example/2.png")
  assert status == 200 and Image.open(io.BytesIO(png)).size == (64, 64)
  assert _request(server, "/example/3.png")[0] == 404


def test_an_example_segmented_with_three_classes(server):
  status, answer = _request(server, "/segment", classes="circle, square, background", classifier="learned",
                            threshold="0.3", example="1")
  assert status == 200, answer
  assert (answer["width"], answer["height"]) == (64, 64) and answer["note"] == ""
  [result] = answer["results"]
  assert result["model"] == "run (step 6)"
  overlay = _decode_data_url(result["overlay"])
  assert overlay.size == (64, 64) and overlay.mode == "RGB"
  shares = {e["name"]: e["share"] for e in result["legend"]}
  assert set(shares) == {"circle", "square", "background"}
  assert sum(shares.values()) == pytest.approx(1.0)
  # Every pixel is the scene blended with one legend colour, and each colour covers its class's share.
  scene = np.asarray(Image.open(io.BytesIO(server.session.example_pngs[1]))).astype(np.float64)
  colors = np.array([[int(e["color"][i:i + 2], 16) for i in (1, 3, 5)] for e in result["legend"]], np.float64)
  blended = np.rint((1 - sessions.OVERLAY_ALPHA) * scene + sessions.OVERLAY_ALPHA * colors[:, None, None])
  matches = np.all(np.asarray(overlay)[None] == blended, axis=-1)  # [classes, H, W]
  assert matches.any(axis=0).all()
  np.testing.assert_allclose(matches.mean(axis=(1, 2)), [e["share"] for e in result["legend"]])


def test_a_new_vocabulary_of_the_same_size_reuses_the_compiled_scorer(server, model):
  _request(server, "/segment", classes="circle, square, background", example="0")  # 2 names: compiled.
  segmenter = mask_scores.make_segmenter(model.model, model.train_config.eval.protocol.decode)
  compiled = segmenter._cache_size()
  start = time.perf_counter()
  status, answer = _request(server, "/segment", classes="heart, moon, background", example="2")
  assert status == 200 and [e["name"] for e in answer["results"][0]["legend"]] != []
  assert segmenter._cache_size() == compiled, "a new vocabulary compiled the scorer again"
  assert time.perf_counter() - start < 60


def test_an_upload_is_segmented_at_its_size_and_a_large_one_downscaled(server):
  rng = np.random.default_rng(0)
  status, answer = _request(server, "/segment", _png(rng.integers(0, 255, (50, 70, 3), np.uint8)), classes="a, b",
                            filename="photo.png")
  assert status == 200, answer
  assert _decode_data_url(answer["results"][0]["overlay"]).size == (70, 50)
  status, answer = _request(server, "/segment", _png(np.zeros((120, 160, 3), np.uint8)), classes="a, b")
  assert status == 200 and "downscaled from 160x120" in answer["note"]
  assert _decode_data_url(answer["image"]).size == _decode_data_url(answer["results"][0]["overlay"]).size


@pytest.mark.parametrize("body, query, status, message", [
    (b"%PDF-1.4 not an image", {"classes": "a, b", "filename": "notes.pdf"}, 400, "notes.pdf is not a readable image"),
    (None, {"classes": " , ", "example": "0"}, 400, "names no class"),
    (None, {"classes": "a, b, c, d, e, f", "example": "0"}, 400, "names 6 classes; give at most 5"),
    (None, {"classes": "a", "example": "0", "classifier": "clip_crop"}, 400, "unknown classifier 'clip_crop'"),
    (None, {"classes": "a", "example": "0", "threshold": "high"}, 400, "threshold 'high' is not a number"),
    (None, {"classes": "a", "example": "0", "threshold": "2"}, 400, "outside [0, 1]"),
    (None, {"classes": "a", "example": "7"}, 400, "no example '7'"),
    (None, {"classes": "a"}, 400, "no image: upload one or pick an example"),
    (b"x" * 300_000, {"classes": "a"}, 413, "upload at most 200,000"),
])
def test_bad_input_gets_its_message_and_the_server_keeps_serving(server, body, query, status, message):
  got, answer = _request(server, "/segment", body, **query)
  assert got == status and message in answer["error"]
  assert _request(server, "/")[0] == 200


def test_an_image_past_the_decompression_limit_is_refused(server, monkeypatch):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2,400 pixels: past the limit (an error from 2,000 on).
  status, answer = _request(server, "/segment", _png(np.zeros((40, 60, 3), np.uint8)), classes="a")
  assert status == 400 and "past Pillow's decompression limit" in answer["error"]


def test_a_failure_inside_a_request_is_a_message_not_a_traceback(server, monkeypatch):
  def fail(*args, **kwargs):
    raise RuntimeError("out of memory")
  monkeypatch.setattr(server.session, "segment", fail)
  status, answer = _request(server, "/segment", classes="a, b", example="0")
  assert status == 500 and "RuntimeError: out of memory" in answer["error"] and "Traceback" not in answer["error"]
  monkeypatch.undo()
  assert _request(server, "/segment", classes="a, b", example="0")[0] == 200


def test_synonyms_of_background_give_it_a_text_embedding(model):
  names, synonyms = predict.parse_classes("circle, background|grass|sand")
  predictor = model.predictor(names, synonyms, "learned", threshold=0.4, scale=1.0)
  # Without synonyms background has no embedding (`protocol.text_classes`); with them it competes as a class too.
  assert predictor.protocol.synonyms == {"background": ("background", "grass", "sand")}
  assert predictor.class_ids == [0, 1] and predictor.background_id == 1


# The page in a real browser.

def _chromium():
  chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
  if not chromium or not driver:
    pytest.skip(f"needs Debian's Chromium and its driver: {APT}")
  webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements.txt)")
  options = webdriver.ChromeOptions()
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
    options.add_argument(arg)
  options.binary_location = chromium
  return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@pytest.fixture(scope="module")
def browser():
  driver = _chromium()
  yield driver
  driver.quit()


def _wait_for_answer(browser):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  WebDriverWait(browser, 300).until(lambda b: b.find_element(By.ID, "status").text == "")


def _type_classes(browser, text):
  from selenium.webdriver.common.by import By
  classes = browser.find_element(By.ID, "classes")
  classes.clear()
  classes.send_keys(text)


def test_page_segments_an_example_scene_with_three_classes(server, browser):
  from selenium.webdriver.common.by import By
  browser.get(server.url)
  browser.find_element(By.CSS_SELECTOR, "input[name=example][value='2'] + img").click()
  _type_classes(browser, "circle, square, background")
  browser.find_element(By.ID, "submit").click()
  _wait_for_answer(browser)
  assert browser.find_element(By.ID, "message").text == ""
  [panel] = browser.find_elements(By.CSS_SELECTOR, "#results .panel")[1:]
  assert panel.find_element(By.TAG_NAME, "h3").text == "run (step 6)"
  overlay = _decode_data_url(panel.find_element(By.TAG_NAME, "img").get_attribute("src"))
  assert overlay.size == (64, 64)
  names = [cell.text for cell in panel.find_elements(By.CSS_SELECTOR, "td.name")]
  shares = [float(cell.get_attribute("data-share")) for cell in panel.find_elements(By.CSS_SELECTOR, "td.share")]
  assert sorted(names) == ["background", "circle", "square"] and sum(shares) == pytest.approx(1.0)
  shown = [float(cell.text.rstrip("%")) for cell in panel.find_elements(By.CSS_SELECTOR, "td.share")]
  assert sum(shown) == pytest.approx(100.0, abs=0.2)


def test_page_shows_the_message_for_a_non_image_and_the_server_still_answers(server, browser, tmp_path):
  from selenium.webdriver.common.by import By
  (tmp_path / "notes.txt").write_text("not an image")
  browser.get(server.url)
  browser.find_element(By.ID, "upload").send_keys(str(tmp_path / "notes.txt"))
  browser.find_element(By.ID, "submit").click()
  _wait_for_answer(browser)
  assert "notes.txt is not a readable image" in browser.find_element(By.ID, "message").text
  assert browser.find_elements(By.CSS_SELECTOR, "#results .panel") == []
  assert "Traceback" not in browser.page_source
  browser.find_element(By.CSS_SELECTOR, "input[name=example][value='0'] + img").click()
  _type_classes(browser, "circle, square, background")
  browser.find_element(By.ID, "submit").click()
  _wait_for_answer(browser)
  assert browser.find_element(By.ID, "message").text == ""
  assert len(browser.find_elements(By.CSS_SELECTOR, "#results .panel")) == 2
