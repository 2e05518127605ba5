"""Architecture knowledge: the per-family layout table, the row layout of fused projections, per-layer shapes read
from the weights, cost counting, per-unit gates, and the `hf_prune` entry that records pruned shapes in a config."""

from .config_entry import ENTRY_KEY, FORMAT_VERSION, read_config_entry, write_config_entry
from .counting import count_flops, count_parameters, layer_flops
from .fused import Fused
from .gates import Gates, attach_gates
from .layouts import LAYOUTS, Layout, get_layers, get_layout, get_submodule, supported_model_types
from .shapes import LayerShape, layer_shape, layer_shapes

__all__ = [
    "ENTRY_KEY", "FORMAT_VERSION", "Fused", "Gates", "LAYOUTS", "LayerShape", "Layout", "attach_gates", "count_flops",
    "count_parameters", "get_layers", "get_layout", "get_submodule", "layer_flops", "layer_shape",
    "layer_shapes", "read_config_entry", "supported_model_types", "write_config_entry",
]
