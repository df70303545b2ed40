"""Drive the playground page (``w2s serve``'s ``/``) in headless Chromium, from Debian's ``chromium`` and
``chromium-driver`` packages through Selenium; used by tests/test_playground.py, and run as a script it takes
the screenshot the docs show (docs/img/playground.png) from the demo's own models.

Usage:  python scripts/playground_browser.py --out docs/img/playground.png [--prompt TEXT] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def missing() -> str | None:
    """Why no browser can run here, or None."""
    if not any(shutil.which(name) for name in CHROMIUM) or not shutil.which(DRIVER):
        return "headless Chromium needs Debian's packages: apt-get install chromium chromium-driver"
    return None


def browser(width: int = 1400, height: int = 900):
    """A headless Chromium under Selenium, with the driver from the system (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(n) for n in CHROMIUM if shutil.which(n))
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which(DRIVER)))


def columns(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#columns .column")


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"the playground did not {what} within {timeout:g} s")


def read_column(column) -> dict:
    """A column's method, state, text and figures as the page shows them."""
    from selenium.webdriver.common.by import By

    text = lambda cls: column.find_element(By.CLASS_NAME, cls).get_attribute("textContent")  # noqa: E731
    return {"method": column.find_element(By.CLASS_NAME, "method").get_attribute("value"),
            "state": column.get_attribute("data-state"), "status": text("status"), "text": text("text"),
            **{field: text(field) for field in ("score", "sampled", "small", "tokens", "first", "total")}}


def ask(driver, url: str, prompt: str, max_tokens: int, seed: int = 0, methods: list[str] | None = None,
        key: str | None = None, timeout: float = 120.0) -> list[dict]:
    """Open the playground at ``url``, (type the API key,) choose the columns' methods, run ``prompt`` and
    return the three columns once none is running."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url)
    if key is not None:
        wait(lambda: driver.find_element(By.ID, "auth").is_displayed(), 10, "ask for the API key")
        driver.find_element(By.ID, "key").send_keys(key)
        driver.find_element(By.ID, "use-key").click()
    wait(lambda: driver.find_element(By.ID, "model").text not in ("", "…"), 10, "load /v1/models")
    for column, method in zip(columns(driver), methods or []):
        Select(column.find_element(By.CLASS_NAME, "method")).select_by_value(method)
    for field, value in (("prompt", prompt), ("max-tokens", str(max_tokens)), ("seed", str(seed))):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "run").click()
    wait(lambda: all(c.get_attribute("data-state") in ("done", "error") for c in columns(driver)), timeout,
         "finish its three methods")
    return [read_column(c) for c in columns(driver)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--prompt", default="Write a short review of a film you watched last week.")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    if missing():
        sys.exit(missing())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "w2s.cli", "serve", "--port", str(port)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            except httpx.HTTPError:
                return server.poll() is not None  # stop waiting: it exited

        wait(up, 300, "start")
        if server.poll() is not None:
            sys.exit(f"w2s serve exited with {server.returncode}")
        driver = browser(height=1000)  # the whole page: three columns and their figures
        try:
            for column in ask(driver, f"http://127.0.0.1:{port}/", args.prompt, args.max_tokens, timeout=600):
                print(column)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
