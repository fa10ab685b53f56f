"""The shared inference core: tokenizing (`batching.TextEncoder`), token-budget batches
(`batching.plan_batches`), the ONNX session (`predictor.Predictor`) and word
attributions (`explain.py`: leave-one-word-out, faithfulness).

Train (evaluating a bundle), export (parity and accuracy checks), the runtime (scoring)
and `marketpulse explain` all run a bundle through this code, so a text gets the same
label wherever it is scored. It needs onnxruntime, tokenizers, numpy and pyarrow only.
"""
