"""The demo's web server (standard library only): `GET /` the page, `GET /example/N.png` an example scene,
`POST /segment?classes=...&classifier=...&threshold=...[&example=N]` with an uploaded image as the body (or none,
with an example) -> JSON with every model's overlay and legend, or `{"error": message}`.

Bad input is answered with its message (status 400 or 413), an unexpected failure with its one-line summary
(500, the traceback goes to the server's log only); either way the server goes on serving.
"""
from __future__ import annotations

import html
import json
import string
import traceback
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from absl import logging

from ovseg_jax.serve.session import Session

_PAGE = string.Template((Path(__file__).parent / "page.html").read_text())
_CHUNK = 1 << 20


class BadRequest(ValueError):
  def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
    super().__init__(message)
    self.status = status


def render_page(session: Session) -> str:
  """The page with this session's models, classifiers, examples and suggested vocabulary filled in."""
  examples = "".join(
      f'<label class="example"><input type="radio" name="example" value="{i}"{" checked" if i == 0 else ""}>'
      f'<img src="/example/{i}.png" alt="{html.escape(e.key)}" title="{html.escape(e.key)}"></label>'
      for i, e in enumerate(session.examples)) or "<p>(no example scenes: these checkpoints were not trained on " \
                                                  "the embedded demo)</p>"
  classifiers = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in session.classifiers)
  return _PAGE.substitute(
      models=html.escape(", ".join(session.names)), examples=examples, classifiers=classifiers,
      classes=html.escape(session.suggested_classes, quote=True), max_classes=session.limits.classes,
      max_megabytes=f"{session.limits.upload_bytes / (1 << 20):g}")


class Handler(BaseHTTPRequestHandler):
  """One request; `server.session` is the demo's `Session`."""
  server_version = "ovseg_jax-demo"

  @property
  def session(self) -> Session:
    return self.server.session

  def log_message(self, format: str, *args: Any) -> None:
    logging.info("%s %s", self.address_string(), format % args)

  def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(body)

  def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
    self._send(status, json.dumps(payload).encode(), "application/json")

  def do_GET(self) -> None:
    path = urllib.parse.urlparse(self.path).path
    if path == "/":
      self._send(HTTPStatus.OK, render_page(self.session).encode(), "text/html; charset=utf-8")
      return
    name = path.removeprefix("/example/").removesuffix(".png")
    if path.startswith("/example/") and name.isdigit() and int(name) < len(self.session.example_pngs):
      self._send(HTTPStatus.OK, self.session.example_pngs[int(name)], "image/png")
      return
    self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

  def _body(self) -> bytes:
    """The request body; one over the upload limit is read and dropped (so the client sees the answer) and
    refused."""
    length = int(self.headers.get("Content-Length") or 0)
    limit = self.session.limits.upload_bytes
    if length <= limit:
      return self.rfile.read(length)
    for start in range(0, length, _CHUNK):
      self.rfile.read(min(_CHUNK, length - start))
    raise BadRequest(f"the upload has {length:,} bytes; upload at most {limit:,} ({limit / (1 << 20):g} MB).",
                     HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

  def do_POST(self) -> None:
    url = urllib.parse.urlparse(self.path)
    try:
      if url.path != "/segment":
        raise BadRequest(f"no such endpoint {url.path!r}: POST /segment.", HTTPStatus.NOT_FOUND)
      body = self._body()
      query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
      try:
        threshold = float(query.get("threshold", "0.5"))
      except ValueError:
        raise BadRequest(f"background threshold {query['threshold']!r} is not a number.") from None
      image, note = self.session.image(body, query.get("example"), query.get("filename") or "the upload")
      answer = self.session.segment(image, query.get("classes", ""), query.get("classifier", "learned"), threshold,
                                    note)
      self._send_json(HTTPStatus.OK, answer)
    except BadRequest as e:
      self._send_json(e.status, {"error": str(e)})
    except (ValueError, FileNotFoundError) as e:
      self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
    except Exception as e:  # noqa: BLE001 (the server outlives any one request)
      logging.error("request %s failed:\n%s", self.path, traceback.format_exc())
      self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                      {"error": f"the server failed on this request ({type(e).__name__}: {e}); see its log."})


class DemoServer(ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, session: Session, host: str = "127.0.0.1", port: int = 0):
    super().__init__((host, port), Handler)
    self.session = session

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"
