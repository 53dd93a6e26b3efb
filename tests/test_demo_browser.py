"""The demo page in a real browser: Debian's Chromium driven by Playwright (Python, sync API).

Picks a class, asks for the teacher too, clicks Generate and waits until both galleries show their images;
a screenshot lands in the test's tmp_path. With a 2-step student: ticks hybrid sampling, changes the teacher's and
the student's step counts and checks that the hybrid gallery and the info text follow. Every request to anything
but the local server is blocked and recorded, so the test also proves the page works offline (no font CDN, no
analytics). ``playwright install`` is never needed: the browser is ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

CHROMIUM = Path(os.environ.get("FDISTILL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]  # fmt: skip
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
pytest.importorskip("gradio")

from fdistill.apps.demo import create_demo, launch_demo  # noqa: E402
from fdistill.export.pipeline import export_student  # noqa: E402
from fdistill.nets.unet import EDMUNet  # noqa: E402

SIZE, SCALE, NAMES, N = 16, 4, ["alpha", "beta", "gamma"], 6


def tiny_unet(seed: int) -> EDMUNet:
    torch.manual_seed(seed)
    return EDMUNet(sample_size=SIZE, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
                   num_classes=len(NAMES), attention_head_dim=8)  # fmt: skip


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_ckpt")
    export_student(tiny_unet(0), 2.5, root / "student", class_names=NAMES)
    tiny_unet(1).save_pretrained(root / "teacher")
    demo = create_demo(student_path=root / "student", teacher_path=root / "teacher", device="cpu",
                       display_scale=SCALE)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, local_url, _ = launch_demo(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield local_url.rstrip("/")
    demo.close()


@pytest.fixture(scope="module")
def k_url(tmp_path_factory):
    """A 2-step student (exported as tests/test_few_step.py does) next to its teacher."""
    root = tmp_path_factory.mktemp("browser_k_ckpt")
    export_student(tiny_unet(0), 2.5, root / "student", class_names=NAMES, student_sigmas=[2.5, 0.6])
    tiny_unet(1).save_pretrained(root / "teacher")
    demo = create_demo(student_path=root / "student", teacher_path=root / "teacher", device="cpu",
                       display_scale=SCALE)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, local_url, _ = launch_demo(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield local_url.rstrip("/")
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except sync_api.Error as e:  # a Playwright/Chromium pair that cannot talk: say so instead of a stack
            pytest.skip(f"Playwright cannot drive {CHROMIUM}: {str(e).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    """A fresh page (own context) that may reach only the demo server; other requests are aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []

    def only_local(route) -> None:
        if route.request.url.startswith((url, "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.blocked = blocked
    yield page
    context.close()


def gallery_images_loaded(page, elem_id: str) -> int:
    """Number of <img> in the gallery that have finished loading with real pixels."""
    return page.evaluate(
        """id => [...document.querySelectorAll(`#${id} img`)]
                 .filter(im => im.complete && im.naturalWidth > 0 && im.getBoundingClientRect().width > 0).length""",
        elem_id,
    )


def test_pick_class_generate_and_see_both_galleries(page, url, tmp_path):
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#generate")

    classes = page.get_by_role("combobox", name="Class")
    classes.click()
    page.get_by_role("option", name="gamma", exact=True).click()
    assert classes.input_value() == "gamma"
    count = page.locator("#num-images input[type=number]")
    count.fill(str(N))
    count.press("Tab")
    page.get_by_label("Also run the teacher").check()
    nfe = page.locator("#teacher-nfe input[type=number]")
    nfe.fill("5")
    nfe.press("Tab")
    page.fill("#seed input", "42")
    page.locator("#seed input").press("Tab")

    page.click("#generate")
    page.wait_for_function(
        """n => ['student-gallery', 'teacher-gallery'].every(id =>
               [...document.querySelectorAll(`#${id} img`)].filter(im => im.complete && im.naturalWidth > 0).length
               === n)""",
        arg=N,
        timeout=TIMEOUT_MS,
    )
    page.wait_for_function("document.querySelector('#info').innerText.includes('Speed-up')", timeout=TIMEOUT_MS)
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)

    assert gallery_images_loaded(page, "student-gallery") == N
    assert gallery_images_loaded(page, "teacher-gallery") == N
    sizes = page.evaluate("[...document.querySelectorAll('#student-gallery img')].map(im => im.naturalWidth)")
    assert sizes == [SIZE * SCALE] * N  # upscaled 4x for display
    info = page.inner_text("#info")
    assert "Seed used: 42" in info and "of gamma" in info and "Speed-up" in info
    assert page.input_value("#seed-used input") == "42"
    assert shot.stat().st_size > 10_000
    assert page.blocked == [], f"the page tried to reach the network: {page.blocked}"


def test_bad_seed_shows_an_error_and_the_page_keeps_working(page, url):
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#generate")
    page.fill("#seed input", "-7")
    page.locator("#seed input").press("Tab")
    page.click("#generate")
    page.get_by_text("seed must be", exact=False).first.wait_for(timeout=TIMEOUT_MS)
    page.fill("#seed input", "1")
    page.locator("#seed input").press("Tab")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#student-gallery img').length === 8", timeout=TIMEOUT_MS)


def set_number(page, selector: str, value: int) -> None:
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_hybrid_checkbox_and_step_counts_update_gallery_and_info(browser, k_url, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(k_url, wait_until="domcontentloaded")
        page.wait_for_selector("#generate")
        set_number(page, "#num-images", 4)
        page.fill("#seed input", "7")
        page.locator("#seed input").press("Tab")
        page.get_by_label("Teacher's first step (hybrid sampling)").check()
        set_number(page, "#hybrid-steps", 2)
        set_number(page, "#student-steps", 1)
        page.click("#generate")
        page.wait_for_function(
            """() => document.querySelector('#info').innerText.includes('(1 of 2 steps)')
                     && document.querySelector('#info').innerText.includes("teacher's first 2")""",
            timeout=TIMEOUT_MS,
        )
        page.wait_for_function(
            """n => ['student-gallery', 'hybrid-gallery'].every(id =>
                   [...document.querySelectorAll(`#${id} img`)].filter(im => im.complete && im.naturalWidth > 0)
                   .length === n)""",
            arg=4,
            timeout=TIMEOUT_MS,
        )
        assert gallery_images_loaded(page, "hybrid-gallery") == 4
        assert "5 + 1 = 6" in page.inner_text("#info")  # 2 Heun steps + the hand-over, then the 1 student step
        page.screenshot(path=str(tmp_path / "hybrid.png"), full_page=True)

        set_number(page, "#student-steps", 2)  # the student's own steps change the info and the NFE
        page.click("#generate")
        page.wait_for_function("document.querySelector('#info').innerText.includes('(2 of 2 steps)')")
        assert "2-step student (2 of 2 steps)" in page.inner_text("#info")

        page.get_by_label("Teacher's first step (hybrid sampling)").uncheck()
        page.click("#generate")
        page.wait_for_function(
            """() => !document.querySelector('#info').innerText.includes('hybrid (')
                     && document.querySelectorAll('#hybrid-gallery img').length === 0""",
            timeout=TIMEOUT_MS,
        )
        assert gallery_images_loaded(page, "student-gallery") == 4
    finally:
        context.close()
