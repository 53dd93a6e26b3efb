"""Bad API input to the demo, fuzzed: random class names, prompts, seeds, counts, teacher NFE, CFG scales, hybrid
teacher steps and student steps (a one-step and a 3-step student) given to the function behind Gradio's ``/generate``
endpoint (called directly, no HTTP) either return the requested images or
are refused with exactly one ``gr.Error`` whose message is one short line naming the field, never another exception;
the engine serves a good request after every example."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gr = pytest.importorskip("gradio")

from test_demo import NAMES, SIZE, TextStubPipeline, tiny_unet  # noqa: E402

from fdistill.apps.demo import ALL_CLASSES, MAX_IMAGES, create_demo  # noqa: E402
from fdistill.export.pipeline import export_student  # noqa: E402

MAX_MESSAGE = 300
GOOD = {"class_name": "beta", "prompt": "a red bag", "seed": 0, "num_images": 1, "run_teacher": False,
        "teacher_nfe": 2, "cfg_scale": 1.0, "hybrid": False, "hybrid_steps": 1, "student_steps": 1}  # fmt: skip
ARGS = list(GOOD)


def endpoint(demo) -> object:
    """The Python function Gradio serves as ``/generate``."""
    (fn,) = [f.fn for f in demo.fns.values() if f.api_name == "generate"]
    return fn


@pytest.fixture(scope="module")
def demos(tmp_path_factory, request):
    import fdistill.export.pipeline

    root = tmp_path_factory.mktemp("demo_fuzz")
    export_student(tiny_unet(), 2.5, root / "student", class_names=NAMES, card={"method": "dmd", "NFE": 1})
    tiny_unet(seed=1).save_pretrained(root / "teacher")
    class_demo = create_demo(root / "student", root / "teacher", device="cpu", display_scale=1)
    # a text-conditional student (prompt box), as in test_demo; its class must be importable from
    # fdistill.export.pipeline
    fdistill.export.pipeline.TextStubPipeline = TextStubPipeline
    request.addfinalizer(lambda: delattr(fdistill.export.pipeline, "TextStubPipeline"))
    TextStubPipeline(tiny_unet(num_classes=0)).save_pretrained(root / "text")
    text_demo = create_demo(root / "text", device="cpu", load_teacher=False, display_scale=1)
    # a 3-step student (as tests/test_few_step.py exports one) with the same teacher
    export_student(tiny_unet(), 2.5, root / "k3", class_names=NAMES, student_sigmas=[2.5, 1.0, 0.3])
    k_demo = create_demo(root / "k3", root / "teacher", device="cpu", display_scale=1)
    return {"class": endpoint(class_demo), "text": endpoint(text_demo), "kstep": endpoint(k_demo)}


nasty_floats = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, 1e308, -1e308, 0.5, -0.0, 1e-300])
nasty_other = st.sampled_from([None, "", "5", "abc", "nan", "inf", "-1", True, False, [], [1], {}, b"1", 1 + 2j])
numbers = st.one_of(
    st.integers(-5, 100),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, 2**64 + 1, -(2**63) - 1, 10**6, 10**30, 2**32 - 1, 2**32]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 20).map(float),  # integral floats, as a gr.Number/gr.Slider sends them
    nasty_floats,
    nasty_other,
)
control = st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp"])
texts = st.one_of(
    st.text(max_size=30),
    st.text(control, max_size=30),
    st.integers(0, 3000).map(lambda n: "x" * n),
    st.sampled_from(["", " ", "\n\t", "\x00", "a\x00b", "\ud800", "a" * 1001, " " * 2000 + "a", "😀" * 50]),
)
class_names = st.one_of(
    st.sampled_from([*NAMES, ALL_CLASSES]),
    st.sampled_from([*NAMES, ALL_CLASSES]).map(lambda s: s.upper()),
    st.sampled_from([*NAMES, ALL_CLASSES]).map(lambda s: s + " "),
    st.integers(-5, 5),  # an index instead of a name
    texts,
    nasty_other,
    nasty_floats,
)
fuzzed = st.fixed_dictionaries(
    {
        "class_name": class_names,
        "prompt": st.one_of(texts, nasty_other),
        "seed": numbers,
        "num_images": st.one_of(st.integers(-1, MAX_IMAGES + 2), numbers),
        "run_teacher": st.one_of(st.booleans(), st.sampled_from([None, 0, 1])),
        "teacher_nfe": st.one_of(st.integers(-1, 6), numbers),
        "cfg_scale": st.one_of(st.floats(-1, 11), numbers),
        "hybrid": st.one_of(st.booleans(), st.sampled_from([None, 0, 1])),
        "hybrid_steps": st.one_of(st.integers(-1, 6), numbers),
        "student_steps": st.one_of(st.integers(-1, 5), st.none(), numbers),
    }
)
valid = st.fixed_dictionaries(
    {
        "class_name": st.sampled_from([*NAMES, ALL_CLASSES]),
        "prompt": st.sampled_from(["a red bag", " x ", "\x00 tab\there 😀", "p" * 1000]),
        "seed": st.one_of(st.integers(-1, 2**32 - 1), st.integers(-1, 50).map(float)),
        "num_images": st.one_of(st.integers(1, 4), st.sampled_from([float(MAX_IMAGES), MAX_IMAGES])),
        "run_teacher": st.booleans(),
        "teacher_nfe": st.one_of(st.integers(1, 4), st.just(3.0)),
        "cfg_scale": st.one_of(st.floats(0, 10), st.sampled_from([0, 10, 1])),
        "hybrid": st.booleans(),
        "hybrid_steps": st.sampled_from([1, 1.0]),  # teacher NFE 1..4 is 1 or 2 Heun steps
        "student_steps": st.sampled_from([None, 1, 1.0]),
    }
)
# a valid request with 0..3 of its fields fuzzed: whole requests are accepted, and each bad field is met alone too
requests = st.tuples(
    valid, fuzzed, st.integers(0, 3).flatmap(lambda k: st.permutations(ARGS).map(lambda a: a[:k]))
).map(lambda t: {**t[0], **{a: t[1][a] for a in t[2]}})


def _check(fn, kw: dict) -> str:
    """Call the endpoint with ``kw`` and check the contract; ``"ok"`` or ``"refused"``."""
    try:
        student, teacher, info, seed_used, hybrid = fn(*(kw[a] for a in ARGS))
    except gr.Error as e:
        msg = str(e.message)
        assert msg and "\n" not in msg and "\r" not in msg and len(msg) <= MAX_MESSAGE, (kw, msg)
        assert not msg.startswith("generation failed"), (kw, msg)  # an unexpected failure, not a refusal
        return "refused"
    except BaseException as e:
        pytest.fail(f"{kw!r} raised {type(e).__name__}: {e}")
    n = int(kw["num_images"])
    assert len(student) == n and all(im.size == (SIZE, SIZE) for im, _ in student), kw
    assert len(teacher) == (n if kw["run_teacher"] else 0), kw
    assert len(hybrid) == (n if kw["hybrid"] else 0) and all(im.size == (SIZE, SIZE) for im, _ in hybrid), kw
    assert isinstance(info, str) and isinstance(seed_used, int) and 0 <= seed_used < 2**32, kw
    return "ok"


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["class", "text", "kstep"]), kw=requests)
def test_random_requests_return_images_or_one_line_error(demos, kind, kw):
    fn = demos[kind]
    _check(fn, kw)
    assert _check(fn, GOOD) == "ok"  # still serving


@pytest.mark.parametrize(
    "bad",
    [
        {"seed": math.nan},
        {"seed": math.inf},
        {"seed": 2**64},
        {"seed": "7"},
        {"num_images": -math.inf},
        {"num_images": 10**6},
        {"num_images": 2.5},
        {"class_name": 1},
        {"class_name": None},
        {"class_name": "x" * 5000},
        {"run_teacher": True, "teacher_nfe": math.inf},
        {"run_teacher": True, "teacher_nfe": 0},
        {"run_teacher": True, "cfg_scale": math.nan},
        {"run_teacher": True, "cfg_scale": math.inf},
        {"run_teacher": True, "cfg_scale": "abc"},
        {"run_teacher": True, "cfg_scale": 1 + 2j},
        {"hybrid": True, "hybrid_steps": 0},
        {"hybrid": True, "hybrid_steps": 5},
        {"hybrid": True, "hybrid_steps": 2},  # teacher NFE 2 is 1 Heun step
        {"hybrid": True, "hybrid_steps": math.nan},
        {"hybrid": True, "hybrid_steps": "1"},
        {"hybrid": True, "cfg_scale": math.inf},
        {"student_steps": 2},  # a one-step student
        {"student_steps": 0},
        {"student_steps": math.inf},
        {"student_steps": "1"},
    ],
)
def test_known_bad_requests_are_refused(demos, bad):
    assert _check(demos["class"], {**GOOD, **bad}) == "refused"
    assert _check(demos["class"], {**GOOD, "run_teacher": True}) == "ok"
    assert _check(demos["class"], {**GOOD, "hybrid": True}) == "ok"


@pytest.mark.parametrize("steps", [1, 2, 3, 3.0, None])
def test_k_step_student_takes_its_steps_and_the_hybrid(demos, steps):
    assert _check(demos["kstep"], {**GOOD, "student_steps": steps, "hybrid": True, "run_teacher": True}) == "ok"
    for bad in (4, 0, -1, 2.5):
        assert _check(demos["kstep"], {**GOOD, "student_steps": bad}) == "refused"


@pytest.mark.parametrize("prompt", ["", " \t\n", "\x1c\x1d", None, 5, ["a"], "a" * 1001])
def test_bad_prompts_are_refused(demos, prompt):
    assert _check(demos["text"], {**GOOD, "prompt": prompt}) == "refused"
    assert _check(demos["text"], GOOD) == "ok"
