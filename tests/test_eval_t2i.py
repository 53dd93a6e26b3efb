"""``fdistill eval-t2i``: teacher rows (EDM Heun + CFG) and exported one-step students on the same prompts and noise,
scored by a caption-match model (tiny random components built here, no network): the CLI writes every metric of
every generator and the grid; R@k, the diversity scores and ``match`` are checked on hand-built cases; the teacher's
sampler starts from the same noise as the students; bad arguments are one line on stderr and exit 2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from fixtures import export_perturbed_student, save_tiny_clip_model, save_tiny_latent_teacher
from PIL import Image

from fdistill.eval.t2i import (
    T2IGenerator,
    batch_noise,
    diversity_scores,
    evaluate_t2i,
    load_student_generator,
    load_teacher,
    main,
    retrieval_accuracy,
    select_prompts,
    teacher_generators,
)
from fdistill.rewards import PreferenceReward
from fdistill.teachers.latent import load_latent_teacher

PROMPTS = [f"{c} {thing}" for c in ("red", "blue") for thing in ("ball", "cat", "car", "sun", "hat")]
IMAGE = (3, 16, 16)  # save_tiny_latent_teacher: 8x8 latents, a 2-level VAE (x2)
METRICS = ("match", "R@1", "R@5", "fd_caption_match", "diversity", "pixel_std", "ms_per_image")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("eval_t2i")
    save_tiny_latent_teacher(root / "teacher", seed=1, max_length=16)
    (root / "teacher" / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cfg = SimpleNamespace(
        path=str(root / "teacher"), subfolder=None, dtype="float32", prompts_file=str(root / "teacher/prompts.txt")
    )
    teacher = load_latent_teacher(cfg)
    export_perturbed_student(teacher, root / "run" / "student", 399)
    save_tiny_clip_model(root / "clip", image_size=IMAGE[-1])
    real = root / "real"
    real.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(6):
        arr = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(real / f"{i}.png")
    return SimpleNamespace(root=root, teacher=root / "teacher", student=root / "run" / "student", clip=root / "clip",
                           real=real)  # fmt: skip


def _base_args(f: SimpleNamespace, *extra: str) -> list[str]:
    return [
        "--teacher", str(f.teacher), "--student", str(f.student), "--reward", str(f.clip), "--device", "cpu",
        "--num-prompts", "6", "--diversity-prompts", "2", "--diversity-seeds", "3", "--batch-size", "4", *extra,
    ]  # fmt: skip


def test_cli_end_to_end_writes_every_metric_of_every_generator(folders, tmp_path, capsys):
    out, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    argv = _base_args(
        folders,
        "--student", f"copy={folders.student}", "--teacher-nfe", "2,3", "--cfg", "1,2", "--real", str(folders.real),
        "--out-json", str(out), "--grid", str(grid),
    )  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["rows"]]
    # NFE 2 runs 1 Heun evaluation (2 * steps - 1: one Euler step); CFG w != 1 doubles the UNet evaluations
    assert [(r["kind"], r["nfe"], r["unet_evals"], r["cfg"]) for r in result["rows"]] == [
        ("teacher", 1, 1, 1.0), ("teacher", 1, 2, 2.0), ("teacher", 3, 3, 1.0), ("teacher", 3, 6, 2.0),
        ("student", 1, 1, None), ("student", 1, 1, None),
    ]  # fmt: skip
    assert names == ["teacher NFE 1 w=1", "teacher NFE 1 w=2", "teacher NFE 3 w=1", "teacher NFE 3 w=2",
                     "run/student", "copy"]  # fmt: skip
    assert result["rows"][0]["info"]["nfe_requested"] == 2
    assert any("even --teacher-nfe" in n for n in result["notes"])
    for r in result["rows"]:
        for m in METRICS:
            assert isinstance(r[m], float) and r[m] == r[m], (r["name"], m)
        assert 0 <= r["R@1"] <= r["R@5"] <= 1 and r["diversity"] >= 0 and r["pixel_std"] > 0
        assert r["num_images"] == 6
    student, copy = result["rows"][4], result["rows"][5]
    for m in ("match", "R@1", "R@5", "fd_caption_match", "diversity", "pixel_std"):  # same folder, same noise
        assert student[m] == pytest.approx(copy[m], abs=1e-6), m
    assert result["rows"][0]["match"] != pytest.approx(student["match"], abs=1e-9)
    assert result["num_prompts"] == 6 and result["prompts"] == [PROMPTS[i] for i in select_prompts(PROMPTS, 6)]
    assert result["rank_pool_size"] == len(PROMPTS) and result["num_real"] == 6
    assert result["command"].startswith("fdistill eval-t2i --teacher ") and "--cfg 1,2" in result["command"]
    assert result["reward"]["scale"] == pytest.approx(result["reward_scale"])
    assert Image.open(grid).size == (6 * 18 + 2, 6 * 20)  # 6 prompts (< 8) x 6 generator blocks, 16 px + 2 px pad
    assert result["grid"]["rows"] == names
    assert "| generator | NFE | UNet evals | CFG w | match | R@1 | R@5 | FD (caption-match) |" in stdout
    assert "| copy | 1 | 1 | - |" in stdout and "NOT Inception FID" in stdout


def test_inception_is_skipped_with_a_message_when_weights_are_missing(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FDISTILL_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    out = tmp_path / "e.json"
    argv = _base_args(folders, "--skip-teacher", "--real", str(folders.real), "--inception", "--out-json", str(out))
    assert main([*argv, "--diversity-prompts", "0"]) == 0
    err = capsys.readouterr().err
    assert "Inception FID/KID skipped" in err and "missing.pth" in err
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["inception_fid"] is None and row["diversity"] is None and isinstance(row["fd_caption_match"], float)
    assert any("Inception FID/KID skipped" in n for n in result["notes"])


def test_python_api_match_is_score_images_and_real_images_give_fd(folders):
    reward = PreferenceReward.from_pretrained(str(folders.clip), PROMPTS)
    prompts = PROMPTS[:4]
    fixed = {p: torch.rand(*IMAGE, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i, p in enumerate(prompts)}

    def fixed_sample(texts: list[str], seed: int) -> torch.Tensor:  # noqa: ARG001 - ignores the noise
        return torch.stack([fixed[t] for t in texts])

    def noisy_sample(texts: list[str], seed: int) -> torch.Tensor:
        return torch.rand(len(texts), *IMAGE, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    gens = [
        T2IGenerator("fixed", "student", 1, 1, None, list, fixed_sample),
        T2IGenerator("noisy", "student", 1, 1, None, list, noisy_sample),
    ]
    real = torch.rand(8, *IMAGE, generator=torch.Generator().manual_seed(9)) * 2 - 1
    res = evaluate_t2i(gens, reward, prompts, rank_pool=PROMPTS, real_images=real, diversity_prompts=3,
                       diversity_seeds=2, batch_size=3)  # fmt: skip
    fixed_row, noisy_row = res["rows"]
    with torch.no_grad():
        expected = reward.score_images(torch.stack([fixed[p] for p in prompts]), prompts).mean()
    assert fixed_row["match"] == pytest.approx(float(expected), rel=1e-5)
    assert fixed_row["diversity"] == pytest.approx(0.0, abs=1e-6) and fixed_row["pixel_std"] == 0.0
    assert noisy_row["diversity"] > 0 and noisy_row["pixel_std"] > 0
    assert fixed_row["fd_caption_match"] > 0 and res["diversity_prompts"] == [prompts[0], prompts[1], prompts[2]]
    assert res["rank_pool_size"] == len(PROMPTS)


def test_clip_score_and_split_spreads_with_verdicts(folders, tmp_path, capsys):
    """--clip-model adds torchmetrics' CLIP score; --splits 3 gives match / FD / CLIP score over 3 disjoint sets of
    2 prompts (their mean ± std) and a verdict of the student against each teacher row by the noise rule."""
    from fdistill.eval.fid_eval import beyond_noise
    from fdistill.metrics.clip_score import clip_score

    out = tmp_path / "e.json"
    argv = _base_args(folders, "--teacher-nfe", "3", "--real", str(folders.real), "--clip-model", str(folders.clip),
                      "--splits", "3", "--diversity-prompts", "0", "--out-json", str(out))  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    teacher_row, student_row = result["rows"]
    assert result["splits"] == 3 and result["split_size"] == 2
    for r in result["rows"]:
        assert 0 <= r["clip_score"] <= 100
        for key in ("match", "fd_caption_match", "clip_score"):
            sp = r[f"{key}_split"]
            assert sp["splits"] == 3 and sp["size"] == 2 and len(sp["values"]) == 3
            assert sp["mean"] == pytest.approx(sum(sp["values"]) / 3) and sp["std"] >= 0
        # match is a mean over images: the mean of three equal-size split means is the mean of all six
        assert r["match_split"]["mean"] == pytest.approx(r["match"], rel=1e-6)
    verdicts = {v["metric"]: v for v in result["verdicts"]}
    assert set(verdicts) == {"match", "fd_caption_match", "clip_score"}
    for key, v in verdicts.items():
        diff, noise, beyond = beyond_noise(student_row[f"{key}_split"], teacher_row[f"{key}_split"])
        assert (v["diff"], v["noise"], v["beyond_noise"]) == (pytest.approx(diff), pytest.approx(noise), beyond)
    assert "| match ± s | FD ± s |" in stdout and "CLIP score" in stdout and "Student vs teacher" in stdout
    # the CLIP score column is the torchmetrics score of the same images (the student: same noise, same prompts)
    gen = load_student_generator(str(folders.student), "cpu", "s", load_teacher(folders.teacher).sample_shape)
    from fdistill.eval.t2i.generators import generate

    images, _ = generate(gen, result["prompts"], 4, 0, torch.device("cpu"))
    expected = clip_score(images, result["prompts"], str(folders.clip))
    assert student_row["clip_score"] == pytest.approx(expected, rel=1e-5)


def test_noise_rule_on_hand_built_spreads():
    from fdistill.eval.fid_eval import beyond_noise, spread

    a, b = spread([10.0, 11.0, 12.0], 100), spread([7.0, 7.5, 8.0], 100)  # std 1 and 0.5: noise 2 sqrt(1.25)
    diff, noise, beyond = beyond_noise(a, b)
    assert diff == pytest.approx(3.5) and noise == pytest.approx(2 * 1.25**0.5) and beyond
    assert not beyond_noise(a, spread([9.0, 10.0, 11.0], 100))[2]


def test_teacher_starts_from_the_same_noise_as_the_students(folders):
    teacher = load_teacher(folders.teacher)
    (gen,) = teacher_generators(teacher, [3], [2.0], "cpu")
    seen = []

    def spy(x, sigma, cond=None, guidance=1.0):
        seen.append((x.clone(), float(sigma[0]), guidance))
        return torch.zeros_like(x)

    teacher.denoise = spy
    ids = gen.encode(PROMPTS[:3])
    gen.sample(ids, 7)
    x0, sigma0, w = seen[0]
    assert w == 2.0 and sigma0 == pytest.approx(teacher.sigma_max, rel=1e-5)
    torch.testing.assert_close(x0 / sigma0, batch_noise((3, 4, 8, 8), 7, "cpu"), rtol=1e-5, atol=1e-5)


def test_retrieval_accuracy_on_hand_built_features():
    text = torch.eye(10)
    assert retrieval_accuracy(text.clone(), text, torch.arange(10)) == {1: 1.0, 5: 1.0}
    # image i's features weigh text (i + j) % 10 by 10 - j (distinct): its own text (i + i) % 10 ranks i + 1
    weights = torch.arange(10, 0, -1).float()
    images = torch.stack([torch.zeros(10).index_add(0, (i + torch.arange(10)) % 10, weights) for i in range(10)])
    images = torch.nn.functional.normalize(images, dim=-1)
    targets = torch.tensor([(2 * i) % 10 for i in range(10)])
    assert retrieval_accuracy(images, text, targets, (1, 3, 5, 10)) == {1: 0.1, 3: 0.3, 5: 0.5, 10: 1.0}
    swapped = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9])  # two images carry each other's features
    assert retrieval_accuracy(text[swapped], text, torch.arange(10))[1] == pytest.approx(0.8)


def test_diversity_scores_on_hand_built_samples():
    same_f = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1).expand(4, 5, 8)
    same_x = torch.rand(1, 5, *IMAGE).expand(4, 5, *IMAGE)
    assert diversity_scores(same_f, same_x) == (pytest.approx(0.0, abs=1e-12), 0.0)
    orth_f = torch.eye(2).view(2, 1, 2)  # two seeds of one prompt: orthogonal embeddings
    x = torch.stack([torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 1.0)])  # std (ddof 1) = sqrt(2)
    dist, std = diversity_scores(orth_f, x)
    assert dist == pytest.approx(1.0) and std == pytest.approx(2**0.5)
    with pytest.raises(ValueError, match="2 seeds"):
        diversity_scores(orth_f[:1], x[:1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--teacher": "nowhere"}, "--teacher nowhere: no such folder"),
        ({"--teacher-nfe": "0,3"}, "NFE values must be integers >= 1"),
        ({"--teacher-nfe": "a,b"}, "comma-separated integers"),
        ({"--cfg": "-1"}, "CFG scales must be"),
        ({"--student": "missing_student"}, "--student missing_student: no such folder"),
        ({"--reward": "no_reward"}, "--reward no_reward: no such folder"),
        ({"--real": "nothing.txt"}, "--real 'nothing.txt'"),
        ({"--diversity-seeds": "1"}, "--diversity-seeds must be >= 2"),
        ({"--device": "tpu"}, "tpu"),
        ({"--splits": "4"}, "--splits 4 of --num-prompts 6"),
        ({"--clip-model": "no_clip_here"}, "--clip-model no_clip_here"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(folders, capsys, change, message):
    argv = _base_args(folders) + ([] if "--real" in change else ["--real", "none"])
    for key, value in change.items():
        if key in argv:
            argv[argv.index(key) + 1] = value
        else:
            argv += [key, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fdistill eval-t2i: error:") and message in err, err


def test_splits_are_checked_against_the_prompts_the_table_holds(folders, capsys):
    """--num-prompts 20 passes the early check at --splits 6, but the table holds 10 prompts: 10 // 6 < 2 is a
    one-line error after the teacher (and its prompt table) loaded, exit 2."""
    argv = _base_args(folders, "--real", "none", "--splits", "6")
    argv[argv.index("--num-prompts") + 1] = "20"
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "fdistill eval-t2i: error: --splits 6 of the table's 10 prompts: sets of >= 2 prompts"


def test_help_and_cli_registration(capsys):
    from fdistill.cli import COMMANDS

    assert "eval-t2i" in COMMANDS
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fdistill eval-t2i --teacher checkpoints/emoji_teacher" in out and "NOT Inception FID" in out


def test_prompt_subset_is_even_and_repeated_teacher_rows_are_one(folders):
    assert select_prompts(list(range(10)), 4) == [0, 2, 5, 7]
    assert select_prompts(list(range(3)), 5) == [0, 1, 2]
    teacher = load_teacher(folders.teacher)
    gens = teacher_generators(teacher, [3, 4, 5], [1.0, 1.0], "cpu")  # NFE 4 runs 3 evaluations, as NFE 3
    assert [(g.nfe, g.cfg) for g in gens] == [(3, 1.0), (5, 1.0)]


def test_images_are_reduced_to_features_a_batch_at_a_time(folders, monkeypatch):
    """evaluate_t2i keeps no batch of images once its features are taken (the 30k-prompt protocol fits in memory):
    when batch k is made, every batch before k - 1 has been freed; the numbers equal those of the whole tensor."""
    import weakref

    import fdistill.eval.t2i.evaluate as evaluate_module
    from fdistill.eval.t2i.generators import generate, generate_batches
    from fdistill.metrics.fid import fid_from_features

    reward = PreferenceReward.from_pretrained(str(folders.clip), PROMPTS)
    alive_before_previous: list[int] = []

    def watched(*args, **kwargs):
        refs = []
        for batch in generate_batches(*args, **kwargs):
            alive_before_previous.append(sum(r() is not None for r in refs[:-1]))
            refs.append(weakref.ref(batch[1]))
            yield batch

    monkeypatch.setattr(evaluate_module, "generate_batches", watched)

    def noisy_sample(texts: list[str], seed: int) -> torch.Tensor:
        return torch.rand(len(texts), *IMAGE, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    gen = T2IGenerator("noisy", "student", 1, 1, None, list, noisy_sample)
    real = torch.rand(7, *IMAGE, generator=torch.Generator().manual_seed(9)) * 2 - 1
    res = evaluate_t2i([gen], reward, PROMPTS, real_images=iter(real.split(3)), diversity_prompts=0, batch_size=2,
                       warmup=False)  # fmt: skip
    assert len(alive_before_previous) == 5 and alive_before_previous == [0] * 5
    images, _ = generate(gen, PROMPTS, 2, 0, torch.device("cpu"))
    (row,) = res["rows"]
    expected_fd = fid_from_features(
        evaluate_module.reward_image_features(reward, images, 2), evaluate_module.reward_image_features(reward, real, 2)
    )
    assert row["fd_caption_match"] == pytest.approx(expected_fd, rel=1e-5) and res["num_real"] == 7


def test_split_groups_and_clip_sums_match_the_whole_set(folders):
    """Image i is in split i % S (the last n % S images in none); CLIPScoreSums fed in batches gives torchmetrics'
    score of every group and of all images."""
    from fdistill.eval.t2i.evaluate import split_groups, split_indices
    from fdistill.metrics.clip_score import CLIPScoreSums, make_clip_score

    groups = split_groups(8, 3)
    assert groups.tolist() == [0, 1, 2, 0, 1, 2, 3, 3]
    for k, idx in enumerate(split_indices(8, 3)):
        assert (groups[idx] == k).all()
    assert split_groups(5, 1).tolist() == [0] * 5
    images = torch.rand(8, *IMAGE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    captions = [PROMPTS[i] for i in range(8)]
    metric = make_clip_score(str(folders.clip))
    sums = CLIPScoreSums(metric, 4)
    for start in (0, 3, 6):
        sums.update(images[start : start + 3], captions[start : start + 3], groups[start : start + 3])

    def direct(idx: list[int]) -> float:
        metric.reset()
        uint8 = ((images[idx] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        metric.update(list(uint8), [captions[i] for i in idx])
        return float(metric.compute())

    assert sums.score() == pytest.approx(direct(list(range(8))), rel=1e-5)
    assert sums.score([1]) == pytest.approx(direct([1, 4]), rel=1e-5)


def test_a_real_folder_is_read_a_batch_at_a_time_and_a_bad_one_is_one_line(folders, tmp_path, capsys):
    from fdistill.eval.t2i.inputs import load_real_images, real_image_batches

    batches = list(real_image_batches(str(folders.real), 16, None, 4))
    assert [b.shape[0] for b in batches] == [4, 2]
    assert torch.equal(torch.cat(batches), load_real_images(str(folders.real), 16))
    bad = tmp_path / "real_bad"
    bad.mkdir()
    for i, size in enumerate((16, 16, 12)):
        Image.new("RGB", (size, size)).save(bad / f"{i}.png")
    argv = _base_args(folders, "--skip-teacher", "--real", str(bad), "--diversity-prompts", "0", "--batch-size", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' progress bars
    assert err.startswith(f"fdistill eval-t2i: error: --real {bad}:") and "differs from the first" in err
    one = tmp_path / "real_one"
    one.mkdir()
    Image.new("RGB", (16, 16)).save(one / "0.png")
    argv = _base_args(folders, "--skip-teacher", "--real", str(one), "--diversity-prompts", "0", "--batch-size", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "fdistill eval-t2i: error: --real: 1 real image; the Fréchet distances need at least 2"
