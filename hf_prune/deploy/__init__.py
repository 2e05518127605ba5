"""Deployment: quantization of pruned models and latency measurement."""

from .latency import LatencyStats, measure_latency
from .latency_table import measure_latency_table
from .quantize import quantize_dynamic_int8

__all__ = ["LatencyStats", "measure_latency", "measure_latency_table", "quantize_dynamic_int8"]
