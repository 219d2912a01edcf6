"""The chat page in headless Chromium: attach an image, ask, watch the answer stream in, ask a follow-up.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped, saying so, without them.
"""

from __future__ import annotations

import shutil

import pytest
from serve_helpers import MODEL_NAME, data_uri, image_part, png_bytes, running_server, text_part

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="chromium and chromedriver are not installed "
                                       "(apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # no driver download: the apt one
    yield driver
    driver.quit()


def test_page_streams_answers_with_an_image_and_history(tiny, browser, tmp_path):
    openai = pytest.importorskip("openai")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    image = tmp_path / "example.png"
    image.write_bytes(png_bytes((300, 100), "purple"))
    with running_server(*tiny) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        first = [image_part(data_uri(image.read_bytes()), max_dynamic_patch=2), text_part("What is this?")]
        want1 = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": first}],
                                               max_tokens=12, temperature=0, extra_body={"max_dynamic_patch": 2})
        want1 = want1.choices[0].message.content

        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text == MODEL_NAME)
        for field, value in (("tiles", "2"), ("temperature", "0"), ("max-tokens", "12")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pending img"))
        browser.find_element(By.ID, "prompt").send_keys("What is this?")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "done")
        answer = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
        assert answer.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent") == want1
        assert int(answer.get_attribute("data-chunks")) > 1  # it arrived in pieces
        assert browser.find_elements(By.CSS_SELECTOR, ".msg.user img")  # the image shows in the question

        # A follow-up: the page sends the whole conversation, image included.
        history = [{"role": "user", "content": first}, {"role": "assistant", "content": want1},
                   {"role": "user", "content": "And now?"}]
        want2 = client.chat.completions.create(model=MODEL_NAME, messages=history, max_tokens=12, temperature=0,
                                               extra_body={"max_dynamic_patch": 2}).choices[0].message.content
        browser.find_element(By.ID, "prompt").send_keys("And now?")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done]")) == 2)
        answers = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")
        assert answers[-1].get_attribute("textContent") == want2 != want1


def test_page_answers_about_a_shipped_example_image_with_the_shipped_model(browser):
    """What a new user does first: open the page, attach an example image, ask, read the model's answer."""
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from internvl.chat import from_pretrained
    from internvl.tiny import EXAMPLES_DIR, MODEL_DIR
    from internvl.tiny.examples import load_examples
    from internvl.demo import answer_examples
    question = next(q for q in load_examples() if q.images == ("shapes-1.png",))
    model, tokenizer = from_pretrained(MODEL_DIR, dtype=torch.float32)
    expected = answer_examples(model, tokenizer, [question])[0]
    with running_server(model, tokenizer) as (base, _):
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text == MODEL_NAME)
        box = browser.find_element(By.ID, "temperature")
        box.clear()
        box.send_keys("0")
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLES_DIR / "shapes-1.png"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pending img"))
        browser.find_element(By.ID, "prompt").send_keys(question.question)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "done")
        answer = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1].get_attribute("textContent")
        assert answer.strip() == expected.strip()  # what the library answers for the same image and question
