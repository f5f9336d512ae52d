"""phi3lab.load on the embedded model, local folders and hub ids in a local stand-in HF cache."""

import os
import shutil
from pathlib import Path

import pytest
import torch

import phi3lab
from conftest import make_hub_cache
from phi3lab import AttentionRequestError, ModelNotAvailableError, ModelNotFoundError
from phi3lab.paths import embedded_dir


def test_embedded_default_loads_offline(tiny):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert tiny.kind == "embedded" and tiny.spec.embedded
    assert type(tiny.model).__name__ == "Phi3ForCausalLM"
    assert tiny.model.config._attn_implementation == tiny.attention.impl
    assert next(tiny.model.parameters()).dtype == tiny.attention.dtype
    assert not tiny.model.training


def test_info_tells_attention_and_reason(tiny):
    info = tiny.info()
    rows = dict(line.split(None, 1) for line in info.splitlines())
    assert rows["attention"] == f"{tiny.attention.impl} — {tiny.attention.reason}"
    assert rows["context"] == "4,096 tokens"
    assert rows["parameters"].endswith(f"({tiny.num_parameters:,})")
    assert "<|end|>" in rows["stop"]  # "stop ids ..." splits after "stop"
    assert rows["dtype"] == "float32" and rows["device"] == "cpu"


def test_tokenizer_keeps_phi3_pipeline(tiny):
    tok = tiny.tokenizer
    assert type(tok).__name__ == "TokenizersBackend"
    ids = tok("<|user|>\nHi<|end|>\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    # special, "▁", "\n" — the Phi-3 pattern that a LlamaTokenizer rebuild would lose
    assert ids[:3] == [tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("▁"), 13]


def test_explicit_dtype_and_eager(tiny_folder):
    lab = phi3lab.load(tiny_folder, dtype="bfloat16", attn="eager", verbose=False)
    assert lab.kind == "local"
    assert lab.model.config._attn_implementation == "eager"
    assert next(lab.model.parameters()).dtype is torch.bfloat16
    assert "requested explicitly" in lab.info()


def test_verbose_load_prints_choice(capsys):
    phi3lab.load("tiny")
    out = capsys.readouterr().out
    assert out.startswith("phi3lab: phi3lab-tiny · sdpa · float32 · cpu — ")


def test_impossible_attention_is_refused_before_loading():
    with pytest.raises(AttentionRequestError, match="flash-attention 2"):
        phi3lab.load("tiny", attn="flash_attention_2")


def test_unknown_name_suggests_alternatives():
    with pytest.raises(ModelNotFoundError) as info:
        phi3lab.load("tinny")
    msg = str(info.value)
    assert "unknown model 'tinny'" in msg and "Did you mean 'tiny'?" in msg
    assert "microsoft/Phi-3-mini-4k-instruct" in msg


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no folder at"):
        phi3lab.load(str(tmp_path / "nope" / "Phi-3"))


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="has no config.json .*weights.txt"):
        phi3lab.load(tmp_path)


def test_folder_without_weights(tmp_path, tiny_folder):
    shutil.copy(tiny_folder / "config.json", tmp_path)
    with pytest.raises(ModelNotFoundError, match="no weights"):
        phi3lab.load(tmp_path)


def test_hub_id_missing_offline_says_how_to_fix():
    with pytest.raises(ModelNotAvailableError) as info:
        phi3lab.load("microsoft/Phi-3-mini-4k-instruct", revision="ff07dc01615f8113924aed013115ab2abd32115b")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE is set" in msg
    assert "hf download microsoft/Phi-3-mini-4k-instruct --revision ff07dc01" in msg
    assert "phi3lab.load('tiny')" in msg


def test_hub_id_resolves_from_the_hf_cache(tiny_folder):
    cache = os.environ["HF_HUB_CACHE"]
    from pathlib import Path

    snap = make_hub_cache(Path(cache), "microsoft/Phi-3-mini-4k-instruct", tiny_folder)
    lab = phi3lab.load("microsoft/Phi-3-mini-4k-instruct", verbose=False)
    assert lab.kind == "hub" and lab.path == snap
    # the registry's facts for the known id, not the stand-in's own ...
    assert lab.spec.context_length == 4096 and lab.spec.template == "phi3-mini-2024-07"
    assert lab.spec.parameters == 3_821_079_552
    # ... except the stop ids: 32000/32001/32007 are not <|endoftext|>/<|assistant|>/<|end|> in this tokenizer
    assert lab.spec.stop_ids == (2000, 2001, 2007) and "stop ids are its own" in lab.spec.note
    assert [lab.tokenizer.convert_ids_to_tokens(i) for i in lab.spec.stop_ids] == [
        "<|endoftext|>",
        "<|assistant|>",
        "<|end|>",
    ]


def test_hub_revision_is_honoured(tiny_folder):
    from pathlib import Path

    cache = Path(os.environ["HF_HUB_CACHE"])
    snap = make_hub_cache(cache, "someone/phi3-finetune", tiny_folder, revision="v1", sha="1" * 40)
    lab = phi3lab.load("someone/phi3-finetune", revision="v1", verbose=False)
    assert lab.path == snap
    assert lab.spec.stop_ids == (2000, 2001, 2007)  # read from its generation_config.json
    with pytest.raises(ModelNotAvailableError):
        phi3lab.load("someone/phi3-finetune", revision="v2", verbose=False)


# --- the file checks accept every honest layout ----------------------------------------------------


def test_sharded_weights_with_an_index_load(tmp_path, tiny_folder):
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sharded"
    shutil.copytree(tiny_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, part in zip(names, (keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        save_file({k: tensors[k] for k in part}, folder / name)
    weight_map = {k: names[i >= len(keys) // 2] for i, k in enumerate(keys)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    lab = phi3lab.load(folder, verbose=False)
    assert lab.chat("What is 2 plus 3?", max_new_tokens=8, stream=False).text == "2 plus 3 is 5."


def test_pytorch_bin_weights_load(tmp_path, tiny_folder):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(tiny_folder, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    lab = phi3lab.load(folder, verbose=False)
    assert lab.chat("What is 2 plus 3?", max_new_tokens=8, stream=False).text == "2 plus 3 is 5."


def test_bad_sources_are_value_errors_too():
    for source in ("", "tinny"):
        with pytest.raises(ValueError):
            phi3lab.load(source)
    with pytest.raises(ModelNotFoundError, match="use '.' for the current folder"):
        phi3lab.load("")


def test_info_names_an_embedded_model_by_its_data_path_not_this_machines(tiny, tmp_path, monkeypatch):
    """Stored notebook outputs once showed a developer's absolute path (notebook 00's lab.info())."""
    from phi3lab.runtime.lab import shown_path

    assert "(embedded: data/models/phi3lab-tiny)" in tiny.info()
    assert str(embedded_dir()) not in tiny.info() and str(Path.home()) not in tiny.info()
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    assert shown_path(tmp_path / "models" / "mine") == "~/models/mine"
    assert shown_path(Path("/elsewhere/mine")) == "/elsewhere/mine"  # no shorter true name: as it is
