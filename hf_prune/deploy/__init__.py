"""Deployment: exports for serving runtimes (GGUF, ONNX), quantization and latency measurement."""

from .gguf_export import export_gguf
from .latency import LatencyStats, measure_latency
from .latency_table import measure_latency_table
from .onnx_export import export_onnx
from .quantize import quantize_dynamic_int8

__all__ = ["LatencyStats", "export_gguf", "export_onnx", "measure_latency", "measure_latency_table",
           "quantize_dynamic_int8"]
