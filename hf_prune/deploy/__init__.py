"""Deployment: quantization of pruned models and latency measurement."""

from .latency import LatencyStats, measure_latency
from .quantize import quantize_dynamic_int8

__all__ = ["LatencyStats", "measure_latency", "quantize_dynamic_int8"]
