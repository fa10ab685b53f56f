"""marketpulse export stage: checkpoint -> checked ONNX bundle (`run(ExportConfig) -> Bundle`).

Importing this package is cheap; torch, transformers and optimum load inside `run`.
"""

from marketpulse.export.stage import ExportConfig, run

__all__ = ["ExportConfig", "run"]
