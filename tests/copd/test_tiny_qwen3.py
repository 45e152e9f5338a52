"""The toy character tokenizer and tiny Qwen3: ids, chat template, offline save/load, determinism."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from copd.tiny.char_tokenizer import CHARS, ROLES, SPECIALS, build_char_tokenizer
from copd.tiny.qwen3 import build_tiny_qwen3, save_tiny


def test_every_char_is_one_token_and_round_trips():
    tok = build_char_tokenizer()
    text = "".join(CHARS)
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == list(range(len(CHARS)))  # ids 0..96 in CHARS order: "\t", "\n", " ", "!", ...
    assert tok.decode(ids) == text
    assert tok.encode("\n", add_special_tokens=False) == [1]  # verl's Qwen builder requires one id for "\n"
    assert tok.encode(" ", add_special_tokens=False) == [2]


def test_specials_and_padding():
    tok = build_char_tokenizer()
    assert len(tok) == len(CHARS) + len(SPECIALS) == 101
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 97
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 99
    assert tok.convert_tokens_to_ids("<|im_start|>") == 98
    assert tok.encode("é", add_special_tokens=False) == [100]  # outside CHARS: <unk>, never dropped
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0] == [97, 97, 67] and batch["attention_mask"][0] == [0, 0, 1]  # left padding


def test_chat_template_is_qwen_chatml():
    tok = build_char_tokenizer()
    messages = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids[0] == 98 and ids[-1] == 1 and ids.count(99) == 1


def test_role_tokens_shorten_the_chat_template_and_keep_every_char(tmp_path):
    tok = build_char_tokenizer(role_tokens=True)
    assert len(tok) == len(CHARS) + len(SPECIALS) + len(ROLES) == 104
    assert [tok.convert_tokens_to_ids(r) for r in ROLES] == [101, 102, 103]  # after the specials: old ids unchanged
    messages = [{"role": "user", "content": "374*6="}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    plain = build_char_tokenizer().apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert (len(ids), len(plain)) == (14, 25)
    assert tok.decode(ids) == "<|im_start|>user\n374*6=<|im_end|>\n<|im_start|>assistant\n"
    text = "".join(CHARS) + " username"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.encode("\n", add_special_tokens=False) == [1]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == ids


def test_saved_model_and_tokenizer_load_offline(tmp_path):
    path = save_tiny(tmp_path / "m", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dir left behind
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.padding_side == "left" and tok.eos_token_id == 99 and tok.pad_token_id == 97
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (101, 32, 1, 1)
    assert not cfg.tie_word_embeddings and cfg.max_position_embeddings >= 512
    assert model.dtype == torch.float32 and model.generation_config.eos_token_id == 99
    save_tiny(path, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)  # replacing works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_same_seed_same_weights_and_generation_stops_at_eos():
    tok = build_char_tokenizer()
    a, b = build_tiny_qwen3(tok, seed=3), build_tiny_qwen3(tok, seed=3)
    c = build_tiny_qwen3(tok, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)

    def eos_wins(_module, _inputs, logits):  # make <|im_end|> the greedy choice: generation must stop after it
        return logits.index_fill(-1, torch.tensor([tok.eos_token_id]), 1e4)

    a.lm_head.register_forward_hook(eos_wins)
    ids = torch.tensor([tok.encode("ab", add_special_tokens=False)])
    out = a.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert out[0, 2:].tolist() == [tok.eos_token_id]
