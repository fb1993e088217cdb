#!/usr/bin/env python3
"""Submits one of the console's forms in headless Chromium, as an operator clicking it would.

Drives Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
replies on fd 4, each a JSON text ended by NUL): sets the Authorization header, opens the page,
clicks the button that `selector` finds, waits for the page the form leads to, and prints JSON:
{"responses": [[method, url, status], ...], "url": final URL, "text": the page's text}.

usage: console_form.py URL AUTHORIZATION SELECTOR
"""

import json
import os
import subprocess
import sys
import tempfile
import time

TIMEOUT_S = 20


class Browser:
    def __init__(self):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def on_pipes():
            # Through fresh copies: the pipe ends may themselves be fds 3 and 4.
            reads, writes = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self.profile = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile.name}",
                "about:blank",
            ],
            preexec_fn=on_pipes,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def read_message(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self.buffer += chunk
        text, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(text)

    def call(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method, deadline):
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self.read_message())
        raise RuntimeError(f"no {method} in time")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.profile.cleanup()


def main():
    url, authorization, selector = sys.argv[1:4]
    browser = Browser()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ["Page.enable", "Network.enable"]:
            browser.call(method, session=session)
        browser.call("Network.setExtraHTTPHeaders", {"headers": {"Authorization": authorization}}, session)
        browser.call("Page.navigate", {"url": url}, session)
        browser.wait_event("Page.loadEventFired", deadline)
        clicked = browser.call(
            "Runtime.evaluate",
            {
                "expression": f"(() => {{ const b = document.querySelector({json.dumps(selector)}); if (!b) return false; b.click(); return true; }})()",
                "returnByValue": True,
            },
            session,
        )
        if not clicked.get("result", {}).get("value"):
            raise RuntimeError(f"no element {selector!r} on the page")
        browser.wait_event("Page.loadEventFired", deadline)
        page = browser.call(
            "Runtime.evaluate",
            {"expression": "[location.href, document.body.innerText]", "returnByValue": True},
            session,
        )["result"]["value"]
        requests = {}
        responses = []
        for event in browser.events:
            params = event.get("params", {})
            if event.get("method") == "Network.requestWillBeSent":
                if "redirectResponse" in params:
                    redirect = params["redirectResponse"]
                    responses.append([requests.get(params["requestId"], "?"), redirect["url"], redirect["status"]])
                requests[params["requestId"]] = params["request"]["method"]
            elif event.get("method") == "Network.responseReceived":
                response = params["response"]
                responses.append([requests.get(params["requestId"], "?"), response["url"], response["status"]])
        print(json.dumps({"responses": responses, "url": page[0], "text": page[1]}))
    finally:
        browser.close()


if __name__ == "__main__":
    main()
