"""A vision-language response ends at its first media placeholder (verl's M-RoPE would read it as media)."""

from copd.tiny import vl_tokenizer as vt
from recipe.copd.agent_loop import media_cut, media_token_ids


def test_media_placeholders_of_the_tiny_vl_tokenizer():
    tokenizer = vt.build_vl_tokenizer()
    ids = media_token_ids(tokenizer)
    assert vt.token_id("<|image_pad|>") in ids and vt.token_id("<|video_pad|>") in ids and len(ids) == 5
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    assert media_cut([a, b, a], ids) is None
    assert media_cut([a, vt.token_id("<|vision_start|>"), b, vt.token_id("<|image_pad|>")], ids) == 1
