"""Inference: predictors built from a model and a config (``predictor``: test-time augmentation,
autocast, the inference-only copy), the backends (``backends``: eager or the exported graph in
onnxruntime) and images side by side on the CPU (``parallel``). api, engine, io_video and the
benchmark use them from here."""
