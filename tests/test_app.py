"""`multiverse app` in a real browser: headless system Chromium driven by Playwright.

The app runs as a process on 127.0.0.1 with a tiny random model whose `generate()` calls get a
logits processor forcing a three-path skeleton (a random model does not fork by itself), with some LaTeX
written into it. The test types a question, waits until at least two path columns are on the page, checks
the counter, that the math is rendered and that no end-of-turn token shows, and saves a screenshot under
its tmp folder. Gradio, Playwright and Chromium are part of the test install (`.ci/run`): a missing one
fails the test, it does not skip.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from pathlib import Path

import gradio  # noqa: F401 (the app's dependency: a missing one fails here, it does not skip)
import pytest
from playwright.sync_api import sync_playwright
from test_serve import free_port, start_server, stop
from tiny import tiny_model

from multiverse.app import main as app_main

TESTS = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# forced text: inline math in path 1 and in the conclusion, then an answer after </Think> with a bare \boxed{}
SKELETON = r'[4, block(["1", "2", "3"], [[" $x^2+1$ ", 36], [18], [28]]), " so $y$ ", 4]'
ANSWER = "\nSo $x+1$ is \\boxed{42}."
# visible text of an element without the KaTeX it rendered (whose hidden MathML keeps the TeX source)
TEXT_BESIDE_MATH = "el => { const c = el.cloneNode(true); c.querySelectorAll('.katex').forEach(k => k.remove()); "
TEXT_BESIDE_MATH += "return c.textContent; }"
# whether a path was ever drawn while still being written (a fast machine finishes between two looks)
WATCH_LIVE_PATHS = """() => { window.mvSawLivePath = false; new MutationObserver(() => {
    if (document.querySelector('#mv-live .mv-path.mv-live')) window.mvSawLivePath = true;
}).observe(document.body, {subtree: true, childList: true, attributes: true}); }"""
CHROMIUM_FLAGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


def test_app_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert app_main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a model folder" in err[0]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(url, tokenizer, log) of the app running with the forced skeleton."""
    folder = tmp_path_factory.mktemp("app")
    model, tokenizer = tiny_model("qwen2", seed=3)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    port = free_port()
    launcher = folder / "launch.py"
    launcher.write_text(textwrap.dedent(f"""
        import sys
        import time
        sys.path.insert(0, {str(TESTS)!r})
        from engine_skeleton import SkeletonProcessor, block, skeleton_template
        from transformers import LogitsProcessor, LogitsProcessorList
        from multiverse.app import CSS, build_demo, load

        class Pace(LogitsProcessor):
            # 50 ms a step: the page is drawn while paths are still being written, however fast the machine
            def __call__(self, input_ids, scores):
                time.sleep(0.05)
                return scores

        model, tokenizer = load({str(folder / "model")!r})
        template = skeleton_template(tokenizer, {SKELETON}, answer=0)
        template.ids += tokenizer({ANSWER!r}, add_special_tokens=False)["input_ids"]  # then eos
        demo = build_demo(model, tokenizer, LogitsProcessorList([SkeletonProcessor(template, tokenizer), Pace()]))
        demo.queue().launch(server_name="127.0.0.1", server_port={port}, css=CSS)
    """))
    url = f"http://127.0.0.1:{port}"
    process = start_server([sys.executable, str(launcher)], port, folder / "app.log", probe=url)
    yield url, tokenizer, folder / "app.log"
    stop(process)


@pytest.mark.slow
def test_paths_fill_side_by_side_in_a_real_browser(app, tmp_path):
    app_url, tokenizer, log = app
    assert Path(CHROMIUM).is_file(), "apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(app_url, timeout=120_000)
            page.fill("#mv-question textarea", "Ann has 3 bags of 12 apples and Ben has 25. How many apples?")
            page.evaluate(WATCH_LIVE_PATHS)
            page.click("#mv-send")
            page.wait_for_function("document.querySelectorAll('#mv-live .mv-path').length >= 2", timeout=240_000)
            page.wait_for_function("document.querySelector('#mv-live').innerText.includes('</Think>')", timeout=240_000)
            page.wait_for_selector(".message.bot, [data-testid='bot']", timeout=240_000)  # the reply comes last
            page.wait_for_timeout(1000)  # KaTeX renders after the update
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            labels = [text.removeprefix("Path ") for text in page.locator("#mv-live .mv-label").all_inner_texts()]
            live_text = page.inner_text("#mv-live")
            counter = page.inner_text(".mv-counter")
            page_text = page.inner_text("body")
            live_math = page.locator("#mv-live .katex").count()
            live_beside_math = page.locator("#mv-live").evaluate(TEXT_BESIDE_MATH)
            reply = page.locator(".message.bot, [data-testid='bot']").last
            reply_math = reply.locator(".katex").count()
            reply_beside_math = reply.evaluate(TEXT_BESIDE_MATH)
            seen_live = page.evaluate("window.mvSawLivePath")
        finally:
            browser.close()
    assert labels == ["1", "2", "3"] and seen_live
    assert live_text.index("<Goal>") < live_text.index("Path 1") and "<Conclusion>" in live_text
    tokens, steps, parallelism = (float(x) for x in re.findall(r"[\d.]+", counter)[:3])
    assert tokens > steps > 0 and parallelism == pytest.approx(tokens / steps, abs=0.01) and parallelism > 1.3
    assert shot.stat().st_size > 10_000
    # no end-of-turn token anywhere (the tiny tokenizer's eos is its pad too), the tags kept
    assert tokenizer.eos_token not in page_text and "<Conclusion>" in page_text
    # the math rendered in the transcript (x^2+1, y, x+1, the bare \boxed{42}) and in the reply (the answer only)
    assert live_math >= 4 and reply_math == 2
    for text in (live_beside_math, reply_beside_math):
        assert "\\boxed" not in text and "$" not in text and "x^2" not in text
    # the app passes its attention mask: transformers has nothing to warn about
    assert "attention mask" not in log.read_text()
    print(f"screenshot: {shot}")
