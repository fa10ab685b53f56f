"""The shared inference core: tokenizing (`batching.TextEncoder`), token-budget batches
(`batching.plan_batches`) and the ONNX session (`predictor.Predictor`).

Train (evaluating a bundle), export (parity and accuracy checks) and the runtime
(scoring) all run a bundle through this code, so a text gets the same label wherever it
is scored. It needs onnxruntime, tokenizers and numpy only.
"""
