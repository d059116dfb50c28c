#!/usr/bin/env python3
"""Times the console's pages in headless chromium: from navigation to the
first contentful paint, and to the page's table filled with data (the Keys
page's first 50 keys; the Trail page's first 100 records). Prints a table;
asserts nothing. For docs/CONSOLE.md's measurements:

  paint.py LOGIN_URL [ROUNDS=5]"""

import sys
import tempfile
import time

from browser import Browser


def timed(b, url, ready_expr):
    b.go("about:blank")
    time.sleep(0.2)
    t0 = time.time()
    b.go(url)
    b.wait(ready_expr, url, timeout=60)
    filled = (time.time() - t0) * 1000
    fcp = b.js("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
    return fcp, filled


def main():
    url = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    base = url.split("/login")[0]
    with tempfile.TemporaryFile() as log:
        b = Browser("chromium", log)
        try:
            b.go(url)
            b.wait("document.body && document.body.getAttribute('data-ready') === '1'", "sign in")
            pages = [
                ("keys", base + "/#keys",
                 "document.querySelectorAll('#keys-table tbody tr').length >= 50"),
                ("trail", base + "/#trail",
                 "document.querySelectorAll('#trail-table tbody tr').length >= 100"),
            ]
            for name, u, ready in pages:
                for i in range(rounds):
                    fcp, filled = timed(b, u, ready)
                    print(f"{name}\tround {i + 1}\tfirst contentful paint {fcp:.0f} ms\t"
                          f"table filled {filled:.0f} ms", flush=True)
        finally:
            b.close()


if __name__ == "__main__":
    main()
