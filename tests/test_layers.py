"""phi3lab's layers: no import cycles, a Phi-3-vision package that stands alone, one home per
fact, a light ``import phi3lab``, and training code kept out of the runtime."""

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import phi3lab
from phi3lab.models.phi3_v import hd
from phi3lab.paths import embedded_dir
from phi3lab.prompts import patches
from phi3lab.runtime import registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "phi3lab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The phi3lab modules a file imports, at any level (module, function or class body)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when it is acyclic."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_among_phi3lab_modules():
    """Function-level imports count too: a cycle hidden in a function is still a cycle of layers."""
    graph = {name: imports_of(path) - {name} for name, path in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


SHARED_WITH_PHI3V = {"phi3lab.errors"}  # the error bases: a module that imports nothing


def test_phi3v_imports_nothing_from_the_rest_of_phi3lab():
    """Nothing but the dependency-free error bases, so phi3lab's errors share one base everywhere."""
    assert imports_of(PACKAGE / "errors.py") == set()
    outside = {
        name: sorted(
            m for m in imports_of(path) if not m.startswith("phi3lab.models.phi3_v") and m not in SHARED_WITH_PHI3V
        )
        for name, path in MODULES.items()
        if name.startswith("phi3lab.models.phi3_v")
    }
    assert {k: v for k, v in outside.items() if v} == {}


# --- the package in layers ------------------------------------------------------------------------------

LAYERS = [
    "foundation",
    "models",
    "prompts",
    "runtime",
    "inspect",
    "attribution",
    "views",
    "safety",
    "serving",
    "cli",
    "tiny",
]
"""Lowest first: a module may import its own layer and the layers below it."""
FOUNDATION = {
    "phi3lab._lazy",
    "phi3lab.paths",
    "phi3lab.validation",
    "phi3lab.errors",
    "phi3lab.colours",
    "phi3lab.reprs",
}
FACADES = {  # modules that hand the user every layer's work through one object, importing it on use
    "phi3lab": "the package's lazy public names",
    "phi3lab.runtime.lab": "Lab.run_with_cache, .attribute, .verify: methods over inspect and attribution",
    "phi3lab.inspect.cache": "Cache.plot-style conveniences draw with views",
    "phi3lab.inspect.patching": "PatchingResult.plot draws with views",
    "phi3lab.inspect.causal": "CausalMap.plot and MapComparison.plot draw with views",
    "phi3lab.attribution.result": "Attribution.plot draws with views",
}


def layer_of(module: str) -> str:
    if module == "phi3lab" or module in FOUNDATION:
        return "foundation"
    return module.split(".")[1]


def imports_with_names(path: Path):
    """``(module, name or None)`` for every import of a phi3lab module, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names if a.name.startswith("phi3lab"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("phi3lab"):
            yield from ((node.module, a.name) for a in node.names)


def _target(module: str, name: str | None) -> str:
    return f"{module}.{name}" if name and f"{module}.{name}" in MODULES else module


def test_every_module_sits_in_a_known_layer():
    assert sorted({layer_of(m) for m in MODULES} - set(LAYERS)) == []


def test_layers_import_only_themselves_and_the_layers_below():
    upward = []
    for name, path in MODULES.items():
        if name in FACADES:
            continue
        for module, item in imports_with_names(path):
            target = _target(module, item)
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name)):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_a_planted_upward_import_is_found(tmp_path):
    planted = tmp_path / "budget.py"
    planted.write_text("from phi3lab.inspect.cache import Cache\n")
    found = [_target(m, n) for m, n in imports_with_names(planted)]
    assert found == ["phi3lab.inspect.cache"] and LAYERS.index(layer_of(found[0])) > LAYERS.index("prompts")


def test_nothing_outside_tiny_imports_the_training_code():
    users = sorted(
        f"{name} imports {module}"
        for name, path in MODULES.items()
        if layer_of(name) != "tiny"
        for module, item in imports_with_names(path)
        if layer_of(_target(module, item)) == "tiny"
    )
    assert users == []


def test_private_names_stay_in_their_layer():
    """``_name`` (or a ``_module``) may be used inside its own layer, never imported from another one."""
    crossing = []
    for name, path in MODULES.items():
        for module, item in imports_with_names(path):
            target = _target(module, item)
            private = any(part.startswith("_") for part in target.split(".")[1:] if part != "__init__") or (
                item is not None and item.startswith("_") and target == module
            )
            if private and target != "phi3lab._lazy" and layer_of(target) != layer_of(name):
                crossing.append(f"{name} imports {module}{'.' + item if item else ''}")
    assert crossing == []


STANDALONE = r"""
import importlib, json, pkgutil, sys, types
for name, folder in (("phi3lab", {package!r}), ("phi3lab.models", {package!r} + "/models")):
    stub = types.ModuleType(name)  # bare parents: phi3lab's own __init__ files do not run
    stub.__path__ = [folder]
    sys.modules[name] = stub
import phi3lab.models.phi3_v as pkg
for info in pkgutil.iter_modules(pkg.__path__):
    importlib.import_module(f"{{pkg.__name__}}.{{info.name}}")
pkg.register()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("phi3lab"))))
"""


@pytest.mark.slow
def test_phi3v_stands_alone_in_a_fresh_process():
    """Imported under bare parent packages, phi3_v pulls in no other phi3lab module, and registers."""
    code = STANDALONE.format(package=str(PACKAGE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "phi3lab.models.phi3_v.modeling" in loaded  # every submodule was imported
    outside = [
        m
        for m in loaded
        if m not in ("phi3lab", "phi3lab.models", *SHARED_WITH_PHI3V) and not m.startswith("phi3lab.models.phi3_v")
    ]
    assert outside == []


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


HEAVY = [
    "torch",
    "transformers.models",
    "transformers.modeling_utils",
    "transformers.models.phi3.modeling_phi3",
    "transformers.image_processing_utils",
    "transformers.processing_utils",
    "phi3lab.models.phi3_v.modeling",
    "matplotlib",
    "captum",
]


@pytest.mark.slow
def test_import_phi3lab_loads_no_training_plotting_or_model_code():
    loaded = _modules_after("import phi3lab")
    assert sorted(m for m in loaded if m in HEAVY or m.startswith("phi3lab.tiny")) == []
    assert sorted(m for m in loaded if m.startswith("phi3lab")) == [
        "phi3lab",
        "phi3lab._lazy",
        "phi3lab.models",
        "phi3lab.models.phi3_v",
    ]


@pytest.mark.slow
def test_loading_the_tiny_models_imports_no_training_code():
    loaded = _modules_after(
        'import phi3lab\nphi3lab.load("tiny", verbose=False)\nphi3lab.load("tiny-vision", verbose=False)'
    )
    assert "phi3lab.models.phi3_v.modeling" in loaded  # the vision model did load
    assert sorted(m for m in loaded if m.startswith("phi3lab.tiny") or m == "matplotlib") == []


def test_public_names_resolve_on_first_use():
    assert set(phi3lab.__all__) <= set(dir(phi3lab))
    for name in phi3lab.__all__:
        assert getattr(phi3lab, name) is not None
    assert phi3lab.hardware_report.__module__ == "phi3lab.runtime.attention_backend"
    assert phi3lab.prompts.patches is patches  # a submodule, as after an eager import
    with pytest.raises(AttributeError, match="no attribute 'lod'"):
        _ = phi3lab.lod


AUTO = r"""
{before}
import phi3lab
from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor
folder = {folder!r}
print(type(AutoConfig.from_pretrained(folder)).__name__, type(AutoImageProcessor.from_pretrained(folder)).__name__,
      type(AutoProcessor.from_pretrained(folder)).__name__, type(AutoModelForCausalLM.from_pretrained(folder)).__name__)
"""


@pytest.mark.parametrize(
    "before",
    ["", "from transformers import AutoProcessor, AutoModelForCausalLM, Phi3Config"],
    ids=["phi3lab first", "transformers first"],
)
@pytest.mark.slow
def test_auto_classes_find_phi3_v_whatever_the_import_order(before):
    code = AUTO.format(before=before, folder=str(embedded_dir() / "phi3lab-tiny-vision"))
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning:phi3lab.models", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["Phi3VConfig", "Phi3VImageProcessor", "Phi3VProcessor", "Phi3VForCausalLM"]


# --- one home per fact ----------------------------------------------------------------------------------


def test_hd_facts_live_in_phi3_v_and_are_imported_everywhere_else():
    from phi3lab.models.phi3_v import image_processing, modeling

    assert (patches.CROP, patches.CELLS) == (hd.CROP, hd.CELLS) == (336, 12)
    assert patches.hd_layout is hd.hd_layout and patches.num_image_tokens is hd.num_image_tokens
    assert image_processing.CLIP_MEAN is hd.CLIP_MEAN and image_processing.CLIP_STD is hd.CLIP_STD
    assert modeling.CELLS is hd.CELLS
    assert registry.lookup("microsoft/Phi-3-vision-128k-instruct").num_crops == hd.DEFAULT_NUM_CROPS
    for fn in (patches.hd_layout, patches.num_image_tokens, patches.image_tokens, patches.crop_boxes):
        assert inspect.signature(fn).parameters["num_crops"].default == hd.DEFAULT_NUM_CROPS, fn.__name__


def test_the_processor_counts_tokens_with_the_one_formula():
    from PIL import Image

    from phi3lab.models.phi3_v import Phi3VImageProcessor

    processor = Phi3VImageProcessor()
    for size, crops in [((336, 336), 1), ((800, 600), 4), ((50, 800), 8), ((1000, 200), 16)]:
        _, (h, w), tokens = processor.transform(Image.new("RGB", size), crops)
        assert tokens == hd.tokens_for_grid(h // hd.CROP, w // hd.CROP) == hd.num_image_tokens(*size, crops)


def test_the_embedded_vision_model_ships_the_clip_statistics():
    config = json.loads((embedded_dir() / "phi3lab-tiny-vision" / "preprocessor_config.json").read_text())
    assert tuple(config["image_mean"]) == hd.CLIP_MEAN and tuple(config["image_std"]) == hd.CLIP_STD


def test_clip_statistics_are_written_down_once():
    """The CLIP numbers are distinctive enough to search for: only hd.py may spell them out."""
    spelled = {
        name
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in (*hd.CLIP_MEAN, *hd.CLIP_STD)
    }
    assert spelled == {"phi3lab.models.phi3_v.hd"}


def test_the_longrope_switch_has_one_home():
    from phi3lab.prompts import budget

    assert registry.LONGROPE_SWITCH == registry.ORIGINAL_CONTEXT == 4096
    mini = registry.lookup("microsoft/Phi-3-mini-128k-instruct")
    assert mini.longrope_switch == registry.LONGROPE_SWITCH
    assert budget.token_budget(phi3lab.load("tiny", verbose=False).tokenizer, "Hi", mini).longrope_switch == 4096
    assert mini.long_context and not registry.lookup("microsoft/Phi-3-mini-4k-instruct").long_context
    config = json.loads((embedded_dir() / "phi3lab-tiny-vision" / "config.json").read_text())
    assert config["original_max_position_embeddings"] == registry.ORIGINAL_CONTEXT


# --- one hook owner, one error base ------------------------------------------------------------------------

HOOK_CALLS = {
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "register_full_backward_pre_hook",
    "register_module_forward_hook",
    "register_module_forward_pre_hook",
}
HOOK_OWNER = "phi3lab.inspect.hooks"


def hook_registrations(path: Path) -> list[int]:
    """Lines of ``path`` that register a torch module hook."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in HOOK_CALLS
    ]


def test_only_the_hook_core_registers_hooks():
    """Everything that looks inside or edits (capture, Cache, interventions, the refusal direction, the
    training aids) goes through phi3lab.inspect.hooks; nothing else puts a hook on a module."""
    found = {
        name: lines for name, path in MODULES.items() if name != HOOK_OWNER and (lines := hook_registrations(path))
    }
    assert found == {}
    assert hook_registrations(MODULES[HOOK_OWNER])  # the owner does


def test_a_planted_hook_registration_is_found(tmp_path):
    planted = tmp_path / "sneaky.py"
    planted.write_text("def f(m):\n    return m.register_forward_hook(lambda *a: None)\n")
    assert hook_registrations(planted) == [2]


def _defined_classes():
    for name in MODULES:
        if name.startswith("phi3lab.tiny"):
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == name:
                yield value


def test_every_error_and_warning_has_the_common_base():
    from phi3lab.errors import Phi3LabError, Phi3LabWarning

    errors = [c for c in _defined_classes() if issubclass(c, BaseException) and not issubclass(c, Warning)]
    warns = [c for c in _defined_classes() if issubclass(c, Warning)]
    assert len(errors) > 15 and warns
    assert [c.__qualname__ for c in errors if not issubclass(c, Phi3LabError)] == []
    assert [c.__qualname__ for c in warns if not issubclass(c, Phi3LabWarning)] == []
    stdlib = [
        c
        for c in errors
        if c is not Phi3LabError
        and not any(
            issubclass(c, base)
            for base in (ValueError, TypeError, KeyError, MemoryError, RuntimeError, OSError, IndexError, LookupError)
        )
    ]
    assert [c.__qualname__ for c in stdlib] == []  # each keeps the standard parent that says what went wrong
