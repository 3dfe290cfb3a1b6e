"""Driving the app's page in Chromium the way a user does, shared by tests/test_app.py and bench/app.py."""


def open_page(browser, url, width=1100):
    """A page in `browser` (a Browser: the page gets its own context, closed with it; or a BrowserContext: a tab)."""
    from playwright.sync_api import BrowserContext
    page = browser.new_page() if isinstance(browser, BrowserContext) else browser.new_page(viewport={'width': width, 'height': 900})
    page.goto(url, timeout=60_000)
    page.wait_for_selector('.widget-upload', state='visible', timeout=60_000)
    return page


def close_tab(page):
    """Close `page` as a user closes a tab: its beforeunload handlers run (Voila's asks for its kernel's shutdown).
    With `run_before_unload` playwright does not wait for the close, and headless chromium finishes it only
    once something waits on the page: wait for it."""
    page.close(run_before_unload=True)
    try:
        if not page.is_closed(): page.wait_for_event('close', timeout=30_000)
    except Exception:
        if not page.is_closed(): raise
