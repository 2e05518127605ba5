"""The package's shape: public names kept, a light `import hf_prune`, one-way imports, no private cross-imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_prune

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_prune"

# Every name `from hf_prune import ...` offered before the package was split into subpackages.
NAMES_BEFORE_RESTRUCTURE = [
    "apply_mask_tuning", "calibration_moments", "sparsity_report", "save_sparse", "prune_unstructured", "load_sparse",
    "SparsityReport", "quantize_dynamic_int8", "snapshot_weights", "rewind", "reinitialize", "LotteryTicketRewinder",
    "IMPORTANCE_METHODS", "DistillationTrainer", "HeadPruningCallback", "ImportanceScores", "LatencyStats", "LayerShape",
    "Layout", "PruningPlan", "attach_gates", "compute_importance", "count_flops", "count_parameters",
    "distillation_loss", "get_layout", "layer_shapes", "load_pruned", "measure_latency", "plan_from_flops",
    "plan_from_sparsity", "prune_model", "read_config_entry", "reconstruction_scores", "reselect_units",
    "resize_to_checkpoint", "save_pruned", "supported_model_types", "tune_masks", "write_config_entry",
]

# Library core: these subpackages may not import the layers above them.
CORE = ("architecture", "importance", "planning", "surgery", "recovery", "serialization", "unstructured", "deploy")
ABOVE_CORE = ("training", "cli")


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "glue_offline" not in p.parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in a file of the hf_prune package."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
    return found


def test_every_earlier_public_name_still_imports():
    for name in NAMES_BEFORE_RESTRUCTURE:
        assert name in hf_prune.__all__, name
        assert getattr(hf_prune, name) is not None
    assert set(hf_prune.__all__) <= set(dir(hf_prune))


def test_import_is_light():
    code = "import hf_prune, sys; print(sorted({'matplotlib', 'evaluate'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("path", _modules(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_imported_across_modules(path):
    for module, names, line in _imports(path):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        private_module = [part for part in module.split(".") if part.startswith("_") and part != "__future__"]
        assert not private and not private_module, f"{path.name}:{line} imports private {private or module}"


@pytest.mark.parametrize("path", [p for sub in CORE for p in _modules(PACKAGE / sub)] + [PACKAGE / "utils.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_training_cli_or_benchmarks(path):
    for module, _, line in _imports(path):
        parts = module.split(".")
        assert not (parts[0] == "hf_prune" and len(parts) > 1 and parts[1] in ABOVE_CORE), f"{path}:{line} imports {module}"
        assert parts[0] not in ("benchmarks", "tests", "hf_prune_assets", "matplotlib", "evaluate"), \
            f"{path}:{line} imports {module}"


def test_utils_is_the_bottom_of_the_graph():
    for module, _, line in _imports(PACKAGE / "utils.py"):
        assert not module.startswith("hf_prune"), f"utils.py:{line} imports {module}"


def test_assets_are_not_in_the_library():
    assert not (PACKAGE / "assets.py").exists()
    for path in _modules(PACKAGE):
        if path.parts[-2] == "cli":
            continue  # the command line's demo preset resolves asset locations at run time
        for module, _, line in _imports(path):
            assert not module.startswith("hf_prune_assets"), f"{path}:{line} imports the offline assets"


# Bottom to top: a subpackage may import only those before it (the README's design section draws this graph).
LAYERS = ["utils", "architecture", "surgery", "unstructured", "serialization", "importance", "planning", "recovery",
          "deploy", "training", "pipeline", "cli"]


@pytest.mark.parametrize("path", [p for p in _modules(PACKAGE) if p.parent != PACKAGE or p.name == "utils.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    rel = path.relative_to(PACKAGE).parts
    own = rel[0] if len(rel) > 1 else rel[0][:-3]
    allowed = set(LAYERS[: LAYERS.index(own)])
    for module, _, line in _imports(path):
        parts = module.split(".")
        if parts[0] == "hf_prune" and len(parts) > 1 and parts[1] != own:
            assert parts[1] in allowed, f"{path.relative_to(ROOT)}:{line}: {own} may not import {parts[1]}"
