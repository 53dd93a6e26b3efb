"""Export of a latent one-step student as a stock StableDiffusionPipeline folder: ``DiffusionPipeline`` reloads it
and ``pipe(prompt, num_inference_steps=1, timesteps=[t_init], guidance_scale=0.0)`` (LCMScheduler) reproduces
``x0 = G(z)`` (latents and decoded images) for eps- and v-prediction teachers, with LoRA fused into a plain UNet;
the model card holds that call; a non-integer timestep or VE input scaling is one clear error. A K-step student
exports as ``pipe(prompt, num_inference_steps=K, timesteps=[t_1..t_K], guidance_scale=0.0)``, which with the same
seeded generator reproduces its training-time chain (``run_chain``: LCM's re-noising draws are the chain's noise)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures import save_tiny_latent_teacher  # noqa: E402

from fdistill.export.stable_diffusion import export_sd_student, one_step_kwargs  # noqa: E402
from fdistill.nets.generator import OneStepGenerator  # noqa: E402
from fdistill.teachers.latent import load_latent_teacher  # noqa: E402

PROMPTS = ["a red apple", "a smiling face", "a blue car"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for pred in ("epsilon", "v_prediction"):
        root = tmp_path_factory.mktemp(pred)
        save_tiny_latent_teacher(root / "sd", prediction_type=pred, seed=1)
        (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        out[pred] = root
    return out


def _teacher(root, lora_rank=0):
    return load_latent_teacher(
        SimpleNamespace(
            path=str(root / "sd"),
            subfolder=None,
            dtype="float32",
            prompts_file=str(root / "prompts.txt"),
            lora_rank=lora_rank,
        )
    )


def _perturbed_generator(teacher, t_init: int) -> OneStepGenerator:
    """A generator that differs from the teacher (as after training): random LoRA B, or noise on the UNet."""
    net = teacher.make_network()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.requires_grad and (teacher.lora_rank == 0 or "lora_B" in name):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return OneStepGenerator(net, teacher.sigma_at(t_init), "vp")


@pytest.mark.parametrize(("pred", "lora", "t_init"), [("epsilon", 2, 399), ("v_prediction", 0, 625)])
def test_stock_pipeline_one_step_reproduces_generator(roots, tmp_path, pred, lora, t_init):
    from diffusers import DiffusionPipeline, LCMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    teacher = _teacher(roots[pred], lora)
    gen = _perturbed_generator(teacher, t_init)
    out = export_sd_student(gen, teacher, tmp_path / "student", card={"method": "test"})
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.scheduler.config.prediction_type == pred
    keys = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)  # a plain UNet2DConditionModel
    kwargs = one_step_kwargs(out)
    assert kwargs == {"num_inference_steps": 1, "timesteps": [t_init], "guidance_scale": 0.0}

    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([2, 0, 1])
    prompts = [PROMPTS[i] for i in cond.tolist()]
    with torch.no_grad():
        x0 = gen(z, cond)
        lat = pipe(prompts, latents=z.clone(), output_type="latent", **kwargs).images
        torch.testing.assert_close(lat, x0, rtol=1e-5, atol=2e-5)
        assert (x0 - teacher.denoise_cond(gen.input_scale * z, gen.sigma_init * torch.ones(3), cond)).abs().max() > 1e-3
        images = pipe(prompts, latents=z.clone(), output_type="pt", **kwargs).images
        torch.testing.assert_close(images, (teacher.decode(x0) / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=2e-5)
        seeded = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).images
        torch.testing.assert_close(seeded, x0, rtol=1e-5, atol=2e-5)  # the pipeline's own unit-variance draw


def test_model_card_and_files_hold_the_exact_call(roots, tmp_path):
    teacher = _teacher(roots["epsilon"])
    out = export_sd_student(_perturbed_generator(teacher, 399), teacher, tmp_path / "s", card={"method": "fdistill"})
    card = (out / "README.md").read_text()
    assert "num_inference_steps=1, timesteps=[399], guidance_scale=0.0" in card
    assert "DiffusionPipeline.from_pretrained" in card and "**method**: fdistill" in card and "**NFE**: 1" in card
    info = json.loads((out / "fdistill_export.json").read_text())
    assert info["timesteps"] == [399] and info["scheduler"] == "LCMScheduler"
    assert (out / "prompts.txt").read_text().splitlines() == PROMPTS


@pytest.mark.parametrize(("pred", "timesteps"), [("epsilon", [999, 749, 499]), ("v_prediction", [999, 499])])
def test_k_step_export_reproduces_the_training_chain(roots, tmp_path, pred, timesteps):
    """The stock LCM pipeline at the recorded timesteps is the student's chain ``x0_k = D(x_k, sigma_k)``,
    ``x_{k+1} = x0_k + sigma_{k+1} eps_k``: a seeded generator draws ``z`` and then ``eps_1..eps_{K-1}``
    (``randn_tensor`` in each intermediate LCM step), so the chain fed the same draws matches to float32 rounding
    (tolerance 1e-4: the VP input ``sqrt(abar) x0 + sqrt(1 - abar) eps`` vs the chain's ``(x0 + sigma eps) /
    sqrt(1 + sigma^2)``, through K UNet calls)."""
    from diffusers import DiffusionPipeline

    from fdistill.export.loading import sd_one_step_call, sd_student_call

    teacher = _teacher(roots[pred])
    one = _perturbed_generator(teacher, timesteps[0])
    sigmas = [teacher.sigma_at(t) for t in timesteps]
    gen = OneStepGenerator(one.net, sigmas[0], "vp", sigmas=sigmas)
    out = export_sd_student(gen, teacher, tmp_path / "k", card={"method": "test"})
    call = sd_student_call(out)
    assert call == {"num_inference_steps": len(timesteps), "timesteps": timesteps, "guidance_scale": 0.0}
    assert one_step_kwargs(out) == call == sd_one_step_call(out)
    text = f"num_inference_steps={len(timesteps)}, timesteps={timesteps}, guidance_scale=0.0"
    card = (out / "README.md").read_text()
    assert text in card and f"**NFE**: {len(timesteps)}" in card and "generator=torch.Generator()" in card
    pipe = DiffusionPipeline.from_pretrained(out)
    cond = torch.tensor([1, 0])
    prompts = [PROMPTS[i] for i in cond.tolist()]
    shape = (2, *teacher.sample_shape)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(shape, generator=g)
    noise = torch.stack([torch.randn(shape, generator=g) for _ in timesteps[1:]])
    with torch.no_grad():
        chain = gen(z, cond, noise=noise)
        seeded = pipe(prompts, generator=torch.Generator().manual_seed(7), output_type="latent", **call).images
        torch.testing.assert_close(seeded, chain, rtol=1e-4, atol=1e-4)
        assert (chain - one(z, cond)).abs().max() > 1e-3  # the later steps change the sample
        g = torch.Generator().manual_seed(8)  # given latents: the generator draws only the re-noising
        given = pipe(prompts, latents=z.clone(), generator=g, output_type="latent", **call).images
        g = torch.Generator().manual_seed(8)
        noise = torch.stack([torch.randn(shape, generator=g) for _ in timesteps[1:]])
        torch.testing.assert_close(given, gen(z, cond, noise=noise), rtol=1e-4, atol=1e-4)


def test_k_step_level_off_the_timestep_grid_is_a_clear_error(roots, tmp_path):
    teacher = _teacher(roots["epsilon"])
    gen = OneStepGenerator(teacher.make_network(), teacher.sigma_at(999), "vp", sigmas=[teacher.sigma_at(999), 2.5])
    with pytest.raises(ValueError, match=r"student_sigmas\[1\]=2.5 is timestep 624\.\d+ .* \(timestep 625\)"):
        export_sd_student(gen, teacher, tmp_path / "k")
    assert not (tmp_path / "k").exists()  # refused before anything is written


def test_non_integer_timestep_and_ve_input_are_clear_errors(roots, tmp_path):
    teacher = _teacher(roots["epsilon"])
    net = teacher.make_network()
    with pytest.raises(ValueError, match=r"sigma_init=2.5 is timestep 624\.\d+ .* \(timestep 625\)"):
        export_sd_student(OneStepGenerator(net, 2.5, "vp"), teacher, tmp_path / "a")
    with pytest.raises(ValueError, match="generator_input=vp"):
        export_sd_student(OneStepGenerator(net, teacher.sigma_at(399), "ve"), teacher, tmp_path / "b")


def test_trainer_end_of_run_export_reloads_as_the_ema_generator(roots, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline
    from test_latent_teacher import latent_run_config

    from fdistill.train.distill import Distiller

    d = Distiller(
        latent_run_config(roots["epsilon"], tmp_path, "method.name=dmd", "train.steps=1", "train.ema_decay=0.5")
    )
    d.run()
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "student")
    z, cond = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        lat = pipe(
            [PROMPTS[1], PROMPTS[2]], latents=z.clone(), output_type="latent", **one_step_kwargs(tmp_path / "student")
        ).images
        torch.testing.assert_close(lat, d.ema.model(z, cond), rtol=1e-5, atol=2e-5)


def test_bf16_teacher_exports_full_precision_components(roots, tmp_path):
    from safetensors.torch import load_file

    root = roots["epsilon"]
    teacher = load_latent_teacher(
        SimpleNamespace(path=str(root / "sd"), subfolder=None, dtype="bfloat16", prompts_file=str(root / "prompts.txt"))
    )
    net = teacher.make_network()
    out = export_sd_student(OneStepGenerator(net, teacher.sigma_at(999), "vp"), teacher, tmp_path / "s")
    for part, name in [
        ("vae", "diffusion_pytorch_model"),
        ("unet", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ]:
        ref, got = (
            load_file(str(root / "sd" / part / f"{name}.safetensors")),
            load_file(str(out / part / f"{name}.safetensors")),
        )
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), part
    assert one_step_kwargs(out)["timesteps"] == [999]


def test_init_generator_loads_an_exported_student(roots, tmp_path):
    """``train.init_generator``: DI* starts from an exported one-step student; its UNet weights land in the new
    generator exactly, and a folder of another architecture is one clear error."""
    from fdistill.train.networks import load_generator_weights

    teacher = _teacher(roots["epsilon"])
    gen = _perturbed_generator(teacher, 399)
    out = export_sd_student(gen, teacher, tmp_path / "student", card={"method": "test"})
    fresh = OneStepGenerator(teacher.make_network(), teacher.sigma_at(399), "vp")
    load_generator_weights(fresh, out)
    for (name, a), b in zip(gen.net.unet.state_dict().items(), fresh.net.unet.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(FileNotFoundError, match="init_generator"):
        load_generator_weights(fresh, tmp_path / "nowhere")
    other = _teacher(roots["v_prediction"])  # same architecture: loads; a pruned state dict does not
    (tmp_path / "bad" / "unet").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"conv_in.weight": torch.zeros(1)}, str(tmp_path / "bad" / "unet" / "x.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        load_generator_weights(OneStepGenerator(other.make_network(), 1.0, "vp"), tmp_path / "bad")
