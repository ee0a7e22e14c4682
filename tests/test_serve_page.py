"""The page at `/` in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, which
`scripts/setup.sh dev` installs when it runs as root) driven by Selenium, against a real `charbot serve` on the
embedded model. It picks a character, sends a message, sees the reply stream in, resets. A screenshot is kept
in the test's folder (docs/images/serve-page.png was taken from such a run)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from charbot.memory_sqlite import SqliteMemory
from cli_process import ServeCli, user_env
from serve_support import write_cards

FALLBACK = "FALLBACK-REPLY-SENTINEL-3b8e"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WATCH_REPLY = """
window.replyTexts = [];
new MutationObserver(() => {
  const item = document.querySelector("#log li.assistant:last-child:not(.greeting)");
  if (item) window.replyTexts.push([item.querySelector(".text").textContent, item.classList.contains("streaming")]);
}).observe(document.getElementById("log"), {subtree: true, childList: true, characterData: true});
"""


def _browser_or_skip():
    if not (CHROMIUM and DRIVER):
        why = "headless Chromium is not installed (Debian packages chromium and chromium-driver)"
        if os.geteuid() != 0:
            pytest.skip(f"{why}, and this user cannot install them: as root, `scripts/setup.sh dev` installs them with apt-get")
        pytest.fail(f"{why}: run `scripts/setup.sh dev` as root (CI does), it installs them with apt-get")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    # the Debian driver at a known path: Selenium downloads nothing
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


def _talk_and_reset(url: str, db: Path, screenshot: Path) -> dict:
    """The whole browser session (blocking, so it runs in a thread). Returns what the test checks last."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser_or_skip()
    try:
        wait = WebDriverWait(browser, 90, poll_frequency=0.05)
        browser.get(url)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        names = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#characters button .name")]
        assert names == ["Orla", "Pip Tolley"], names
        assert browser.find_element(By.CSS_SELECTOR, "#log li.greeting .text").text.startswith("Mind the ninth step")

        browser.find_element(By.CSS_SELECTOR, '#characters button[data-id="pip-tolley"]').click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#who .name").text == "Pip Tolley")
        assert browser.find_element(By.CSS_SELECTOR, "#who img.avatar").get_attribute("src").startswith("data:image/svg+xml")
        assert "ferry running" in browser.find_element(By.ID, "card-fields").text
        browser.find_element(By.CSS_SELECTOR, '#characters button[data-id="orla"]').click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#who .name").text == "Orla")

        # every text the reply shows, as the page shows it (recorded on each DOM change, not by polling)
        browser.execute_script(WATCH_REPLY)
        browser.find_element(By.ID, "message").send_keys("Hello! Is a storm coming tonight?")
        browser.find_element(By.ID, "send").click()
        reply = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#log li.assistant:last-child[data-done='true']"))
        seen = {
            "shown": browser.execute_script("return window.replyTexts"), "chunks": int(reply.get_attribute("data-chunks") or 0),
            "text": reply.find_element(By.CSS_SELECTOR, ".text").text, "error": "error" in reply.get_attribute("class"),
            "conversation": browser.find_element(By.TAG_NAME, "body").get_attribute("data-conversation"),
            "lore": [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#lorebook:not([hidden]) #lorebook-entries li")],
        }
        store = SqliteMemory(db)
        seen["remembered"] = store.count_messages(f"api:orla:{seen['conversation']}")
        browser.save_screenshot(str(screenshot))

        browser.find_element(By.ID, "reset").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text == "Conversation forgotten.")
        seen["after_reset"] = [li.get_attribute("class") for li in browser.find_elements(By.CSS_SELECTOR, "#log li")]
        seen["lore_after_reset"] = browser.find_element(By.ID, "lorebook").is_displayed()
        seen["remembered_after_reset"] = store.count_messages(f"api:orla:{seen['conversation']}")
        store.close()
        return seen
    finally:
        browser.quit()


@pytest.mark.slow
@pytest.mark.model
async def test_the_page_talks_streams_and_resets_in_a_real_browser(tmp_path):
    cards = write_cards(tmp_path / "cards")
    book = tmp_path / "world.json"
    book.write_text(json.dumps({"entries": [{"keys": ["storm"], "content": "Storms on the island come in from the west.",
                                             "extensions": {}, "enabled": True, "insertion_order": 10, "comment": "storms"}]}))
    env = user_env(tmp_path, CHARBOT_FALLBACK_REPLY=FALLBACK)
    args = ("--seed", "7", "--max-new-tokens", "48", "--persona-dir", str(cards), "--lorebook", str(book))
    async with ServeCli(*args, env=env, cwd=tmp_path) as server:
        await server.wait_ready()
        shot = tmp_path / "serve-page.png"
        seen = await asyncio.to_thread(_talk_and_reset, server.root + "/", tmp_path / "memory.db", shot)
    assert not seen["error"] and seen["text"] != FALLBACK and len(seen["text"].split()) >= 3, seen
    # it appeared piece by piece while the reply was streaming, each piece extending the last
    growing = list(dict.fromkeys(text for text, streaming in seen["shown"] if streaming and text))
    assert seen["chunks"] >= 3 and len(growing) >= 3, seen
    assert all(later.startswith(earlier) for earlier, later in zip(growing, growing[1:])), growing
    assert seen["lore"] == ["storms (key 'storm' in message 1 (newest first, scan depth 2))"]  # the entry the reply's prompt held
    assert seen["remembered"] == 2  # the exchange, in charbot's memory under the page's conversation id
    assert seen["after_reset"] == ["assistant greeting"] and seen["remembered_after_reset"] == 0 and not seen["lore_after_reset"]
    assert shot.stat().st_size > 10_000
    assert server.returncode == 0 and "Traceback" not in server.stderr
