"""Any model: target_modules=all-linear (every linear layer but the output head), default targets
for the current decoder families, and errors in the --set form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hupeft import methods
from hupeft.config import RunConfig, apply_overrides
from hupeft.experiment import run
from hupeft.methods import MethodError
from hupeft.methods.base import DEFAULT_TARGETS, find_target_linears

ADAPTERS = ["lora", "loraga", "boft", "urnn", "hybrid"]


def linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_all_linear_takes_every_linear_but_the_output_head(tiny_llama):
    every = linear_names(tiny_llama)
    assert "lm_head" in every
    assert set(find_target_linears(tiny_llama, ("all-linear",))) == every - {"lm_head"}
    adapted = methods.apply(tiny_llama, "lora", target_modules="all-linear")
    from peft.tuners.lora import LoraLayer

    wrapped = {n.removeprefix("base_model.model.") for n, m in adapted.model.named_modules()
               if isinstance(m, LoraLayer)}
    assert wrapped == every - {"lm_head"}


def test_all_linear_leaves_a_classification_head_to_train_whole(tiny_bert):
    names = set(find_target_linears(tiny_bert, ("all-linear",)))
    assert names and not any("classifier" in n for n in names) and any("pooler" in n for n in names)


def test_all_linear_reads_from_a_preset_and_from_the_command_line():
    cfg = apply_overrides(RunConfig(method="boft"), ["method.target_modules=all-linear"])
    assert cfg.method_options["target_modules"] == ("all-linear",)
    assert RunConfig.from_dict({"method_options": {"target_modules": "all-linear"}}).method_options
    opts = methods.make_options("lora", {"target_modules": "all-linear"})
    assert opts.target_modules == ("all-linear",)
    with pytest.raises(MethodError, match=r"use --set method.target_modules=all-linear alone"):
        find_target_linears(nn.Linear(2, 2), ("all-linear", "q_proj"))


FAMILIES = ["gemma", "gemma2", "gemma3_text", "phi3", "qwen2", "qwen3", "mistral", "mixtral", "olmo2", "granite",
            "starcoder2", "phi"]


@pytest.mark.parametrize("family", FAMILIES)
def test_current_decoder_families_have_default_targets_that_exist(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                                  num_attention_heads=4, num_key_value_heads=4, head_dim=16, vocab_size=128,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert family in DEFAULT_TARGETS
    found = find_target_linears(model, None)
    assert found and {n.rsplit(".", 1)[-1] for n in found} == set(DEFAULT_TARGETS[family])


def test_a_family_without_defaults_is_told_the_set_form():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"model_type": "odd"})()
            self.mix = nn.Linear(4, 4)
            self.out = nn.Linear(4, 4)

    with pytest.raises(MethodError) as e:
        find_target_linears(Odd(), None)
    text = str(e.value)
    assert "--set method.target_modules=mix,out" in text and "--set method.target_modules=all-linear" in text
    assert "(...)" not in text and "\n" not in text
    with pytest.raises(MethodError, match=r"no nn.Linear matches target_modules=q_proj .*its linear layers: mix, "
                                          r"out\); set e.g. --set method.target_modules=all-linear"):
        find_target_linears(Odd(), ("q_proj",))


def save_tiny_phi3(folder) -> None:
    """A Phi-3 (fused qkv_proj and gate_up_proj) built from a config, with a byte-level BPE tokenizer
    trained here: a local model folder as save_pretrained writes it, nothing downloaded."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import AutoModelForCausalLM, Phi3Config, PreTrainedTokenizerFast

    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Review: the battery works.\nSentiment: positive negative"], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(0)
    config = Phi3Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def phi3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phi3")
    save_tiny_phi3(folder)
    return folder


@pytest.mark.parametrize("method", ADAPTERS)
def test_a_local_phi3_folder_trains_with_every_adapter_under_all_linear(phi3_folder, method, tmp_path):
    cfg = RunConfig(model=str(phi3_folder), method=method, benchmark="glue/sst2", data="synthetic", n_train=4,
                    n_val=2, n_eval=2, max_len=48, batch_size=4, init_batches=1, checkpoint=False,
                    save_adapter=False, method_options={"target_modules": "all-linear"})
    rec = run(cfg, tmp_path, progress=False)
    assert rec["status"] == "ok", rec["error"]
    assert rec["config"]["model_source"] == "local" and rec["scores"]
    moved = {n.split("layers.", 1)[1] for n in rec["epochs"][-1]["weight_change"]}
    # Every linear layer of both blocks, fused ones included, and never the output head.
    assert moved == {f"{i}.{part}" for i in (0, 1) for part in ("self_attn.qkv_proj", "self_attn.o_proj",
                                                                "mlp.gate_up_proj", "mlp.down_proj")}
