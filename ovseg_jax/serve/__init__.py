"""The browser demo (`python -m ovseg_jax.demo_server`): one page, any image and vocabulary, every model side by
side. `session` segments requests through `ovseg_jax.predict`'s path; `http` serves the page and its requests."""
