r"""A local web page to segment any image with any words, every trained model side by side.

  python -m ovseg_jax.demo_server --checkpoint=/tmp/sseg_demo [--checkpoint=/tmp/other_run ...] [--port=8080]

Open the printed address, pick one of the demo's held-out scenes or upload an image, type classes
(comma-separated; `sofa|couch` gives a class several names) and choose the classifier (with `--clip`, also CLIP
crops, dense CLIP and the published ensembles). Each checkpoint's overlay is shown with the class legend and the
share of the image each class covers. Inference is `ovseg_jax.predict`'s: the image resized to `--scale` training
sizes, sliding windows of the training size.
"""
from __future__ import annotations

from absl import flags

from ovseg_jax import cli


def main(argv: list[str]) -> None:
  del argv
  import ml_collections
  from ovseg_jax import predict
  from ovseg_jax.methods import registry
  from ovseg_jax.serve import http, session
  f = flags.FLAGS
  try:
    clip = registry.eval_clip(ml_collections.ConfigDict({"checkpoint": f.clip}))
    models = [predict.RestoredModel(checkpoint, clip) for checkpoint in f.checkpoint]
    server = http.DemoServer(session.Session(models, f.scale, f.num_examples), f.host, f.port)
  except (ValueError, FileNotFoundError, OSError) as e:  # Bad input: one clear line, no traceback.
    raise SystemExit(f"error: {e}") from None
  print(f"serving {', '.join(server.session.names)} at {server.url} (Ctrl-C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  flags.DEFINE_multi_string("checkpoint", None, "Training workdir; repeat to compare models side by side.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0 serves other machines too).")
  flags.DEFINE_integer("port", 8080, "Port to listen on (0: any free port).")
  flags.DEFINE_float("scale", 2.0, "Short side of the resized image, in training image sizes.")
  flags.DEFINE_integer("num_examples", 8, "Held-out demo scenes offered as examples.")
  flags.DEFINE_string("clip", "", "CLIP checkpoint for the CLIP classifiers and ensembles (OpenAI .pt, open_clip "
                      "file or Hugging Face directory).")
  cli.run(main, required=("checkpoint",))
