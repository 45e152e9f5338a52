"""A character-level tokenizer carrying Qwen3-VL's special tokens, and a chat template that renders like Qwen3-VL's.

Vocabulary: "\\t", "\\n" and printable ASCII (one id per character, so "\\n" is one token as verl's Qwen builder
expects), then Qwen3-VL's 26 added tokens in Qwen's own order (`<|endoftext|>` ... `</think>`, Qwen ids
151643-151668), then `<unk>`. A Qwen id q >= 151643 maps to `N_CHARS + (q - 151643)`: the names, their order and
their special/non-special flags are Qwen's, the numbers are remapped into a 128-id vocabulary (a 151,936-id
vocabulary would dominate a tiny model's cost).
"""

from transformers import PreTrainedTokenizerFast

#: Regular characters in id order: "\\t", "\\n", then printable ASCII 32..126.
CHARS: tuple[str, ...] = ("\t", "\n", *(chr(c) for c in range(32, 127)))
N_CHARS = len(CHARS)
#: Qwen3-VL's id of its first added token (`<|endoftext|>`).
QWEN_FIRST_ADDED_ID = 151643
#: Qwen3-VL's added tokens in id order (151643...), with Qwen's `special` flag.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
UNK = "<unk>"
#: Model vocabulary size: characters + added tokens + <unk> (124), rounded up to a multiple of 64.
VOCAB_SIZE = 128


def tiny_id(qwen_id: int) -> int:
    """The tiny vocabulary's id for one of Qwen3-VL's added-token ids (151643...151668)."""
    offset = qwen_id - QWEN_FIRST_ADDED_ID
    if not 0 <= offset < len(ADDED_TOKENS):
        raise ValueError(f"{qwen_id} is not a Qwen3-VL added-token id ({QWEN_FIRST_ADDED_ID}..151668)")
    return N_CHARS + offset


def token_id(name: str) -> int:
    """The tiny vocabulary's id of an added token by name, e.g. token_id('<|image_pad|>')."""
    names = [n for n, _ in ADDED_TOKENS]
    return N_CHARS + names.index(name)


# Qwen3-VL-Instruct's rendering: ChatML turns; a user (or tool) content list renders images and videos as
# <|vision_start|><|image_pad|><|vision_end|> / ...<|video_pad|>... in place ("Picture k: " / "Video k: " first
# when add_vision_id); a system prompt only when given; tools in a system block; tool results as user turns
# wrapping <tool_response>. Written for this project; the tests pin its output on text, image and video turns.
CHAT_TEMPLATE = """\
{%- macro render(content, allow_media) -%}
{%- if content is string -%}{{ content }}
{%- else -%}{%- for item in content -%}
{%- if allow_media and (item.type == 'image' or 'image' in item or 'image_url' in item) -%}
{%- set counts.image = counts.image + 1 -%}
{%- if add_vision_id %}Picture {{ counts.image }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>
{%- elif allow_media and (item.type == 'video' or 'video' in item) -%}
{%- set counts.video = counts.video + 1 -%}
{%- if add_vision_id %}Video {{ counts.video }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>
{%- elif 'text' in item -%}{{ item.text }}
{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set counts = namespace(image=0, video=0) -%}
{%- if tools -%}
{{- '<|im_start|>system\\n' -}}
{%- if messages[0].role == 'system' -%}{{- render(messages[0].content, false) + '\\n\\n' -}}{%- endif -%}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' -}}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}
{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n' -}}
{%- elif messages[0].role == 'system' -%}
{{- '<|im_start|>system\\n' + render(messages[0].content, false) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{{- '<|im_start|>user\\n' + render(message.content, true) + '<|im_end|>\\n' -}}
{%- elif message.role == 'assistant' -%}
{{- '<|im_start|>assistant\\n' + render(message.content, false) -}}
{%- for call in message.tool_calls or [] -%}
{%- set call = call.function if call.function else call -%}
{%- if not loop.first or message.content %}{{ '\\n' }}{% endif -%}
{{- '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' -}}
{{- call.arguments if call.arguments is string else call.arguments | tojson -}}
{{- '}\\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\\n' -}}
{%- elif message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif -%}
{{- '\\n<tool_response>\\n' + render(message.content, true) + '\\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""


def build_vl_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer: eos `<|im_end|>`, pad `<|endoftext|>`, left padding, Qwen3-VL's chat template.

    A BPE model without merges maps each character to its id; added tokens are matched whole first. decode(encode(s))
    == s for any string of CHARS and added tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({name: N_CHARS + i for i, (name, _) in enumerate(ADDED_TOKENS)})
    vocab[UNK] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    backend.decoder = decoders.Fuse()
    backend.add_tokens([AddedToken(n, special=False, normalized=False) for n, s in ADDED_TOKENS if not s])
    backend.add_special_tokens([AddedToken(n, special=True, normalized=False) for n, s in ADDED_TOKENS if s])
    backend.add_special_tokens([AddedToken(UNK, special=True, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=UNK,
        padding_side="left",  # set in the constructor: an attribute set afterwards is not saved
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=262144,
    )
    for name, _ in ADDED_TOKENS:
        if tokenizer.convert_tokens_to_ids(name) != token_id(name):
            raise RuntimeError(f"tiny VL tokenizer: {name} got id {tokenizer.convert_tokens_to_ids(name)}")
    return tokenizer
