"""A character-level tokenizer with Qwen-style specials, built offline.

Every printable ASCII character, "\\n" and "\\t" is ONE token, so verl's Qwen continuous-token builder (which checks
that "\\n" encodes to a single id) and its chat-template boundary logic work as with a real Qwen tokenizer, while the
vocabulary stays ~100 ids (a 151k vocabulary makes a tiny model 20-40x slower on CPU).
"""

from transformers import PreTrainedTokenizerFast

#: The regular characters, in id order: "\\t", "\\n", then printable ASCII 32..126 (space included).
CHARS: tuple[str, ...] = ("\t", "\n", *(chr(c) for c in range(32, 127)))
#: Special tokens, in id order after the characters. "<unk>" catches characters outside CHARS.
SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")

#: Qwen ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def char_vocab() -> dict[str, int]:
    """Token -> id for the characters then the specials (ids are dense from 0)."""
    return {tok: i for i, tok in enumerate(CHARS + SPECIALS)}


#: ChatML's role names, one token each with `role_tokens=True` (ids after the specials).
ROLES: tuple[str, ...] = ("system", "user", "assistant")


def build_char_tokenizer(role_tokens: bool = False) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (eos `<|im_end|>`, pad `<|endoftext|>`, left padding).

    A BPE model without merges and without a pre-tokenizer maps each character to its own id; the Fuse decoder
    joins ids back without separators, so decode(encode(s)) == s for any string made of CHARS.
    role_tokens: also one token for each of ROLES (as a real Qwen vocabulary has), so the chat template's
    `<|im_start|>user\n` and `<|im_start|>assistant\n` are 3 tokens each instead of 6 and 11: the toy's prompts
    shrink from 25 to 14 tokens and every forward pass over them with it. Still decode(encode(s)) == s.
    """
    from tokenizers import Tokenizer, decoders, models

    vocab = char_vocab()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",  # set in the constructor: an attribute set afterwards is not saved
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"char tokenizer has {len(tokenizer)} ids, expected {len(vocab)}: special tokens drifted")
    if role_tokens:
        tokenizer.add_tokens(list(ROLES))
        if len(tokenizer) != len(vocab) + len(ROLES):
            raise RuntimeError(f"char tokenizer with role tokens has {len(tokenizer)} ids, expected {len(vocab) + 3}")
    return tokenizer
