"""HFServer without Ray: batched generate vs a plain forward, sleep/wake, abort gate, bucketed weight sync."""

import asyncio
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

import verl_patches
from copd.tiny.qwen3 import save_tiny

verl_patches.apply_all()

from verl_patches.hf_rollout.server import HFServer  # noqa: E402

TEMPERATURE = 0.8


def compose_trainer_config(model_path: str, *extra: str):
    """verl's ppo_trainer config with the CPU overrides and the tiny model."""
    import verl

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                *verl_patches.cpu_overrides(1),
                f"actor_rollout_ref.model.path={model_path}",
                "data.max_prompt_length=32",
                "data.max_response_length=8",
                f"actor_rollout_ref.rollout.temperature={TEMPERATURE}",
                *extra,
            ],
        )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2))


@pytest.fixture
def server(model_path):
    cfg = compose_trainer_config(model_path)
    return HFServer(cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.model, replica_rank=0)


def sampling(**kw):
    return {"temperature": TEMPERATURE, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True, **kw}


def forward_log_probs(model, prompt, response):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits / TEMPERATURE, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_concurrent_requests_are_batched_and_log_probs_match_forward(server, model_path):
    prompts = [[98, 87, 85] + [10 + i] * (1 + i % 4) + [99, 1, 98] for i in range(12)]

    async def run():
        calls = [
            server.generate(prompt_ids=p, sampling_params=sampling(), request_id=str(i)) for i, p in enumerate(prompts)
        ]
        return await asyncio.gather(*calls)

    outputs = asyncio.run(run())
    assert server.stats["requests"] == 12 and server.stats["batches"] < 12  # grouped into left-padded batches
    reference = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa").eval()
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.stop_reason == "completed" and 1 <= len(out.token_ids) <= 8  # response_length 8
        assert len(out.log_probs) == len(out.token_ids) and "global_steps" in out.extra_fields
        expected = forward_log_probs(reference, prompt, out.token_ids)
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-5, rtol=0)


def test_log_probs_only_when_asked_and_seeded_requests_reproduce(server):
    async def run():
        a = await server.generate(
            prompt_ids=[5, 6, 7], sampling_params=sampling(logprobs=False, seed=3), request_id="a"
        )
        b = await server.generate(
            prompt_ids=[5, 6, 7], sampling_params=sampling(logprobs=False, seed=3), request_id="b"
        )
        return a, b

    a, b = asyncio.run(run())
    assert a.log_probs is None and a.token_ids == b.token_ids


def test_sleep_wake_and_abort_gate(server):
    async def run():
        await server.sleep()
        with pytest.raises(RuntimeError, match="asleep"):
            await server.generate(prompt_ids=[5, 6], sampling_params=sampling(), request_id="x")
        await server.wake_up(tags=["weights"])
        await server.abort_all_requests(reject_request=True)
        rejected = await server.generate(prompt_ids=[5, 6], sampling_params=sampling(), request_id="y")
        await server.abort_all_requests()  # without reject: a new request waits for resume_generation
        waiting = asyncio.create_task(server.generate(prompt_ids=[5, 6], sampling_params=sampling(), request_id="z"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await server.resume_generation()
        return rejected, await waiting

    rejected, resumed = asyncio.run(run())
    assert rejected.stop_reason == "aborted" and rejected.token_ids == []
    assert resumed.stop_reason == "completed" and resumed.token_ids


def test_bucketed_weight_update_changes_generation(server, model_path):
    new = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa").eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn_like(p))
    named = list(new.state_dict().items())

    async def run():
        await server.update_weights(named[:5], last=False)
        await server.update_weights(named[5:], last=True, global_steps=7)
        return await server.generate(prompt_ids=[5, 6, 7], sampling_params=sampling(), request_id="w")

    out = asyncio.run(run())
    assert out.extra_fields["global_steps"] == 7
    torch.testing.assert_close(
        torch.tensor(out.log_probs), forward_log_probs(new, [5, 6, 7], out.token_ids), atol=1e-5, rtol=0
    )
    with pytest.raises(RuntimeError, match="incomplete"):
        asyncio.run(server.update_weights(named[:5], last=True))
    with pytest.raises(KeyError, match="unknown"):
        asyncio.run(server.update_weights([("model.nope.weight", torch.zeros(1))], last=False))


def build_tiny_qwen2_vl(path):
    """A random Qwen2-VL over the char vocabulary: ids 96/100/94 serve as vision start / image pad / vision end."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from copd.tiny.char_tokenizer import build_char_tokenizer

    text = dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        bos_token_id=97,
        eos_token_id=99,
        pad_token_id=97,
    )
    vision = dict(
        depth=1,
        embed_dim=16,
        hidden_size=32,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_chans=3,
        mlp_ratio=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=100,
        video_token_id=95,
        vision_start_token_id=96,
        vision_end_token_id=94,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 99, 97
    model.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    return model


def test_image_request_uses_the_processor_and_matches_forward(tmp_path):
    import types

    import numpy as np
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil
    from verl.utils.config import omega_conf_to_dataclass

    build_tiny_qwen2_vl(tmp_path / "vl")
    cfg = compose_trainer_config(str(tmp_path / "vl"), "data.max_prompt_length=64")
    model_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    model_config.processor = types.SimpleNamespace(image_processor=image_processor)  # no torchvision: no full processor
    server = HFServer(cfg.actor_rollout_ref.rollout, model_config)
    image = Image.fromarray((np.random.RandomState(0).rand(56, 56, 3) * 255).astype(np.uint8))
    pixels = image_processor(images=[image], return_tensors="pt")
    n_pad = int(pixels["image_grid_thw"].prod()) // 4  # 2x2 patches merge into one image token
    prompt = [98, 10, 96] + [100] * n_pad + [94, 11, 12]  # the agent loop sends the expanded image tokens

    async def run():
        image_call = server.generate(prompt_ids=prompt, sampling_params=sampling(), request_id="i", image_data=[image])
        text_call = server.generate(prompt_ids=[5, 6, 7], sampling_params=sampling(), request_id="t")
        return await asyncio.gather(image_call, text_call)

    out, text_out = asyncio.run(run())
    assert text_out.token_ids and server.stats["batches"] == 2  # an image request runs alone
    full = torch.tensor([prompt + out.token_ids])
    modality = (full == 100).int()  # 1 marks image tokens (M-RoPE positions)
    with torch.no_grad():
        logits = server.model(input_ids=full, mm_token_type_ids=modality, **pixels).logits[0, len(prompt) - 1 : -1]
        blind = server.model(input_ids=full, mm_token_type_ids=modality * 0).logits[0, len(prompt) - 1 : -1]
    index = torch.tensor(out.token_ids)[:, None]
    expected = torch.log_softmax(logits / TEMPERATURE, -1).gather(-1, index)[:, 0]
    torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-5, rtol=0)
    without_image = torch.log_softmax(blind / TEMPERATURE, -1).gather(-1, index)[:, 0]
    assert (without_image - expected).abs().max() > 1e-3  # the pixels reached the model


@pytest.fixture(scope="module")
def qwen3vl_server(tmp_path_factory):
    """HFServer over the tiny Qwen3-VL, with the processor verl itself loads from the model folder."""
    from copd.tiny.qwen3vl import build_tiny_qwen3vl

    path = build_tiny_qwen3vl(tmp_path_factory.mktemp("qwen3vl") / "model")
    cfg = compose_trainer_config(path, "data.max_prompt_length=128", "actor_rollout_ref.model.trust_remote_code=True")
    return HFServer(cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.model)


def agent_loop_prompt(processor, content, images=None, videos=None):
    """Prompt ids and trainer-side inputs as verl's agent loop builds them (chat template, then the processor)."""
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = dict(build_multimodal_processor_inputs(processor, text=[text], images=images, videos=videos))
    return inputs.pop("input_ids")[0].tolist(), inputs


def test_video_and_image_requests_match_a_plain_forward(qwen3vl_server):
    from PIL import Image

    server = qwen3vl_server
    g = torch.Generator().manual_seed(0)
    # what verl's dataset (qwen_vl_utils.fetch_video) hands over: resized float frames and their metadata
    frames = torch.randint(0, 256, (4, 3, 64, 96), generator=g).float()
    video = (frames, {"fps": 2.0, "frames_indices": [0, 2, 4, 6], "total_num_frames": 8, "video_backend": "test"})
    image = Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy())
    cases = {
        "video": dict(content=[{"type": "video"}, {"type": "text", "text": "What moves?"}], videos=[video]),
        "image": dict(content=[{"type": "image"}, {"type": "text", "text": "What?"}], images=[image]),
        "both": dict(content=[{"type": "image"}, {"type": "video"}], images=[image], videos=[video]),
    }
    prompts = {name: agent_loop_prompt(server.processor, **case) for name, case in cases.items()}
    assert "<2.5 seconds>" in server.processor.tokenizer.decode(prompts["video"][0])  # frames 4, 6 at 2 fps

    async def run():
        calls = [
            server.generate(
                prompt_ids=prompts[name][0],
                sampling_params=sampling(),
                request_id=name,
                image_data=case.get("images"),
                video_data=case.get("videos"),
            )
            for name, case in cases.items()
        ]
        return await asyncio.gather(*calls)

    for name, out in zip(cases, asyncio.run(run()), strict=True):
        prompt, inputs = prompts[name]
        assert out.stop_reason == "completed" and out.token_ids, name
        full = torch.tensor([prompt + out.token_ids])
        types = inputs["mm_token_type_ids"][0].tolist() + [0] * len(out.token_ids)  # the trainer's own modality ids
        pixels = {k: v for k, v in inputs.items() if k != "attention_mask" and k != "mm_token_type_ids"}
        served = server._mm_inputs(
            prompt, cases[name].get("images"), cases[name].get("videos")
        )  # what the server computed
        assert served.keys() == {*pixels, "mm_token_type_ids"}, name
        for key, value in pixels.items():
            torch.testing.assert_close(served[key], value, atol=0, rtol=0, msg=f"{name}: {key}")
        with torch.no_grad():
            mm_token_type_ids = torch.tensor([types])
            logits = server.model(input_ids=full, mm_token_type_ids=mm_token_type_ids, **pixels).logits
            blind = server.model(input_ids=full, mm_token_type_ids=mm_token_type_ids * 0).logits
        index = torch.tensor(out.token_ids)[:, None]
        steps = slice(len(prompt) - 1, -1)
        expected = torch.log_softmax(logits[0, steps] / TEMPERATURE, -1).gather(-1, index)[:, 0]
        torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-5, rtol=0, msg=name)
        without = torch.log_softmax(blind[0, steps] / TEMPERATURE, -1).gather(-1, index)[:, 0]
        assert (without - expected).abs().max() > 1e-4, name  # the pixels reached the model


def test_audio_is_refused(server):
    with pytest.raises(NotImplementedError, match="audio"):
        asyncio.run(server.generate(prompt_ids=[5], sampling_params=sampling(), request_id="a", audio_data=[b""]))


def test_video_without_a_processor_says_what_to_set(server):
    frames = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="trust_remote_code"):
        asyncio.run(server.generate(prompt_ids=[5], sampling_params=sampling(), request_id="v", video_data=[frames]))


def test_generate_many_answers_each_request_and_returns_a_bad_ones_error(server):
    prompts = [[98, 87, 85, 10 + i, 99, 1, 98] for i in range(4)]
    requests = [{"prompt_ids": p, "sampling_params": sampling(), "request_id": str(i)} for i, p in enumerate(prompts)]
    requests.append({"prompt_ids": prompts[0], "sampling_params": sampling(), "request_id": "x", "audio_data": [1]})
    outputs = asyncio.run(server.generate_many(requests))
    assert [o.stop_reason for o in outputs[:4]] == ["completed"] * 4
    assert server.stats["requests"] == 4 and server.stats["batches"] == 1  # one batch
    assert isinstance(outputs[4], NotImplementedError) and "audio" in str(outputs[4])  # that request only
    assert all(len(o.token_ids) >= 1 and len(o.log_probs) == len(o.token_ids) for o in outputs[:4])
