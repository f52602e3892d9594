"""Drives grove's web board in a real browser (Debian's Chromium, headless,
through Playwright for Python: no browser download), for tests/web.rs.

Usage: python3 board.py SCENARIO GROVE_BIN WORKSPACE URL SCREENSHOT

Scenarios:
  tasks     the board lists the tasks; a task spawned from the CLI appears;
            cancel from the page; spawn from the page; the graph and the
            members views render
  approve   an ACP task waiting on a permission request (engine `scripted`)
            is approved from the page, another one denied
  failover  with the page open, the primary is killed with SIGKILL: the
            page reconnects to the next primary on the same port, keeps
            updating, and the seqs it received have no gap; the members
            view shows the new promotion with its measured takeover
  delegation  the delegation view (engine `scripted`, which spawns and
            awaits children through grove's MCP server) follows the
            pending awaits, the delegated tasks and the live injections
            as grove commands change them
  goals     the goals view follows a goal of the scripted agent (engine
            `scripted`, `goal:gated`: each iteration waits for a file) from
            iteration 1 to completed, and the task page shows its goal
  diff      two finished worktree tasks (`seq 1 3000000 > big.txt`, `echo
            small > s.txt`): "Show changes" of the first says the changes
            are cut and names `grove diff`; the second's shows them whole
  opener    URL is the page `grove web --open` wrote (file://): it leads
            the browser to the board, whose address keeps no token

Every wait has a generous deadline; a failed check exits 1 with its reason.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

DEADLINE = 60.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def fail(why):
    print(f"board.py: FAILED: {why}", file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


class Run:
    def __init__(self, grove, ws, url, shot):
        self.grove, self.ws, self.url, self.shot = grove, ws, url, shot

    def cli(self, *args):
        out = subprocess.run([self.grove, "--workspace", self.ws, "--no-autostart", *args],
                             capture_output=True, text=True, timeout=DEADLINE)
        check(out.returncode == 0, f"grove {' '.join(args)}: {out.returncode} {out.stderr}")
        return out.stdout.strip()

    def open(self, page):
        """Opens the board's URL; the board's first page moves on to the
        address without the token by itself: back once the board is there."""
        page.goto(self.url)
        page.wait_for_url(lambda u: u.startswith("http") and "token=" not in u, timeout=DEADLINE * 1000)

    def task(self, tid):
        return json.loads(self.cli("show", tid, "--json"))

    def wait(self, what, f, within=DEADLINE):
        until = time.time() + within
        while time.time() < until:
            v = f()
            if v:
                return v
            time.sleep(0.1)
        fail(f"timed out after {within}s waiting for {what}")

    def wait_status(self, tid, status):
        return self.wait(f"task {tid} {status}", lambda: self.task(tid)["status"] == status)

    def page_status(self, page, tid):
        return page.evaluate("id => { const t = window.groveBoard.tasks.get(id); return t ? t.status : null; }", tid)

    def wait_page_status(self, page, tid, status):
        return self.wait(f"the page to show task {tid} {status}",
                         lambda: self.page_status(page, tid) == status)

    def contiguous(self, page):
        seen = page.evaluate("window.groveBoard.seen")
        first = page.evaluate("window.groveBoard.firstSeq")
        check(seen == list(range(first, first + len(seen))),
              f"the page's seqs are not contiguous from {first}: {seen}")
        return seen


def tasks(r, page):
    first = r.cli("spawn", "echo first", "--tag", "ci")
    r.open(page)
    row = page.locator(f'tr.task[data-id="{first}"]')
    row.wait_for(timeout=DEADLINE * 1000)
    # The token went from the URL into a cookie; the address bar lost it.
    check("token=" not in page.url, f"the token stays in the address bar: {page.url}")
    # A task spawned from the CLI appears, and follows its status live.
    sleeper = r.cli("spawn", "sleep 60", "--tag", "slow")
    page.locator(f'tr.task[data-id="{sleeper}"]').wait_for(timeout=DEADLINE * 1000)
    r.wait_page_status(page, sleeper, "running")
    r.wait_page_status(page, first, "completed")
    # Cancel from the page.
    page.locator(f'tr.task[data-id="{sleeper}"] button[data-action="cancel"]').click()
    r.wait_status(sleeper, "cancelled")
    r.wait_page_status(page, sleeper, "cancelled")
    # Filters: by tag, then by search.
    page.fill("#tag-filter", "ci")
    r.wait("the tag filter", lambda: page.locator("tr.task").count() == 1)
    page.fill("#tag-filter", "")
    page.fill("#search", "sleep")
    r.wait("the search", lambda: page.locator("tr.task").count() == 1)
    page.fill("#search", "")
    # Spawn from the page, with a dependency: the graph puts it right of it.
    page.fill("#spawn textarea[name=prompt]", "echo from the page")
    page.fill("#spawn input[name=deps]", first)
    page.click("#spawn button[type=submit]")
    spawned = r.wait("the page's spawn", lambda: page.evaluate(
        "[...window.groveBoard.tasks.values()].find(t => t.prompt === 'echo from the page')"))
    r.wait_status(spawned["id"], "completed")
    check(r.task(spawned["id"])["dependencies"] == [first], "the page's spawn kept its dependency")
    # The task page shows the log.
    page.goto(base(r) + f"#task/{first}")
    r.wait("the task's log", lambda: "first" in page.locator("#transcript").inner_text())
    page.goto(base(r) + "#graph")
    r.wait("the graph", lambda: page.locator("#graph g.node").count() == 3)
    page.goto(base(r) + "#members")
    r.wait("the members", lambda: "Primary" in page.locator("#members").inner_text())
    # A running task's progress bar follows `grove progress`.
    build = r.cli("spawn", "sleep 60", "--tag", "build", "--tag", "ci")
    r.wait_status(build, "running")
    r.cli("progress", "40", "compiling", "--task", build)
    page.goto(base(r) + "#tasks")
    r.wait("the progress bar", lambda: page.evaluate(
        "id => (window.groveBoard.tasks.get(id) || {}).progress_pct", build) == 40)
    page.locator(f'tr.task[data-id="{build}"] .bar').wait_for(timeout=DEADLINE * 1000)
    page.screenshot(path=r.shot, full_page=True)
    r.contiguous(page)


def approve(r, page):
    yes = r.cli("spawn", "permission", "-e", "scripted")
    no = r.cli("spawn", "permission", "-e", "scripted")
    r.wait_status(yes, "waiting")
    r.wait_status(no, "waiting")
    r.open(page)
    page.goto(base(r) + "#asks")
    card = page.locator(f'[data-ask="{yes}"]')
    card.wait_for(timeout=DEADLINE * 1000)
    card.locator('button[data-action="approve"]').first.click()
    r.wait_status(yes, "completed")
    page.locator(f'[data-ask="{no}"] button[data-action="deny"]').click()
    r.wait(f"task {no} to end after the deny", lambda: r.task(no)["status"] in ("completed", "failed"))
    r.wait_page_status(page, yes, "completed")
    # The conversation shows the tool call and the answer.
    page.goto(base(r) + f"#task/{yes}")
    r.wait("the transcript", lambda: "permission: selected" in page.locator("#transcript").inner_text())
    page.screenshot(path=r.shot, full_page=True)
    r.contiguous(page)


def failover(r, page):
    r.open(page)
    # (wait_for_function evaluates a string, which the board's CSP forbids)
    r.wait("the page's event stream", lambda: page.evaluate(
        "() => !!(window.groveBoard && window.groveBoard.source && window.groveBoard.source.readyState === 1)"))
    before = [r.cli("spawn", f"echo before {i}") for i in range(3)]
    for t in before:
        r.wait_page_status(page, t, "completed")
    # The members view stays open across the kill: the new promotion
    # appears there by itself.
    page.evaluate("() => { location.hash = '#members'; }")
    page.locator("#promotions").wait_for(timeout=DEADLINE * 1000)
    primary = json.load(open(os.path.join(r.ws, ".grove", "primary.json")))
    os.kill(primary["pid"], signal.SIGKILL)
    # Writes go on through the next primary; the page must see them all.
    after = [r.cli("spawn", f"echo after {i}") for i in range(3)]
    for t in after:
        r.wait_page_status(page, t, "completed")
    ask = urllib.request.Request(base(r) + "api/state", headers={"X-Grove-Token": token(r.url)})
    state = json.load(urllib.request.urlopen(ask, timeout=DEADLINE))
    r.wait("the page to reach the store's last seq",
           lambda: page.evaluate("window.groveBoard.lastSeq") >= state["last_seq"])
    seen = r.contiguous(page)
    check(page.evaluate("window.groveBoard.reconnects") >= 1, "the page never reconnected")
    # The failover's promotion carries measured durations (the takeover on
    # the new primary's clock; the lock won after the old primary's last
    # heartbeat it heard), not the upper bound of older promotions.
    row = page.locator(f'tr.promotion[data-epoch="{primary["epoch"] + 1}"]')
    row.wait_for(timeout=DEADLINE * 1000)
    measured = row.locator("[data-takeover-ms]")
    measured.wait_for(timeout=DEADLINE * 1000)
    took = float(measured.get_attribute("data-takeover-ms"))
    check(took >= 0, f"the takeover is a measured number: {took}")
    text = row.inner_text()
    check("took over in" in text and "after the last heartbeat of " + primary["instance_id"][:8] in text,
          f"the promotion shows its measured takeover and the old primary's last heartbeat: {text}")
    check(row.locator("[data-unmeasured]").count() == 0, f"an upper bound shown for a measured promotion: {text}")
    print(f"board.py: the page shows the failover: {text}", file=sys.stderr)
    print(f"board.py: the page saw seqs {seen[0]}..{seen[-1]} across the failover", file=sys.stderr)
    page.screenshot(path=r.shot, full_page=True)


def delegation(r, page):
    r.open(page)
    page.goto(base(r) + "#delegation")
    shown = lambda key: page.locator(f'[data-metric="{key}"]').inner_text()
    r.wait("the delegation view", lambda: page.locator('[data-metric="awaits_pending"]').count() == 1)
    check(shown("awaits_pending") == "0" and shown("live_injections") == "0",
          f"a fresh workspace shows no await and no injection: {page.locator('#delegation').inner_text()}")
    # The scripted agent spawns one child through grove's MCP server,
    # awaits it, and ends its turn; the child ends when go_a exists.
    child = ("while [ ! -e go_a ]; do sleep 0.02; done; "
             "echo '<grove:conclusion>{\"status\":\"success\",\"summary\":\"child a done\"}</grove:conclusion>'")
    with open(os.path.join(r.ws, "delegate.json"), "w") as f:
        json.dump({"children": [child]}, f)
    parent = r.cli("spawn", "delegate", "-e", "scripted")
    r.wait("the page to show the pending await", lambda: shown("awaits_pending") == "1")
    r.wait("the page to show the delegated task", lambda: shown("delegated_tasks") == "1")
    awaits = json.loads(r.cli("awaits", "--json"))
    check(len(awaits) == 1 and awaits[0]["parent_id"] == parent, f"grove awaits: {awaits}")
    # The child ends: the await fires into the parent's open session.
    open(os.path.join(r.ws, "go_a"), "w").close()
    r.wait("the page to show the live injection", lambda: shown("live_injections") == "1")
    r.wait("the page to show no pending await", lambda: shown("awaits_pending") == "0")
    r.wait_status(parent, "completed")
    r.wait("the page to show the delegated task ended", lambda: shown("delegated_open") == "0")
    stats = json.loads(r.cli("stats", "--json"))["delegation"]
    check(stats["live_injections"] == 1, f"grove stats agrees: {stats}")
    page.screenshot(path=r.shot, full_page=True)
    r.contiguous(page)


def goals(r, page):
    r.open(page)
    page.goto(base(r) + "#goals")
    r.wait("the goals view", lambda: page.locator("#goals .card").count() == 1)
    proc = subprocess.Popen(
        [r.grove, "--workspace", r.ws, "--no-autostart", "goal", "-e", "scripted",
         "goal:gated ship the release", "--output-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        goal = page.locator("#goals [data-goal]")
        attr = lambda name: goal.first.get_attribute(name) if goal.count() == 1 else None
        r.wait("the page to show the goal at iteration 1",
               lambda: attr("data-goal-status") == "running" and attr("data-iteration") == "1")
        open(os.path.join(r.ws, "release-1"), "w").close()
        r.wait("the page to show iteration 2", lambda: attr("data-iteration") == "2")
        text = goal.first.inner_text()
        check("50" in text and "iteration 1 of gated" in text,
              f"the goal shows the first iteration's progress and summary: {text}")
        open(os.path.join(r.ws, "release-2"), "w").close()
        r.wait("the page to show the goal completed", lambda: attr("data-goal-status") == "completed")
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    check(proc.returncode == 0, f"grove goal exited {proc.returncode}: {err}")
    result = json.loads(out)
    check(result["status"] == "completed" and result["iteration"] == 2, f"grove goal: {result}")
    page.screenshot(path=r.shot, full_page=True)
    # The task page shows the goal beside the task.
    page.goto(base(r) + "#task/" + result["session_id"])
    r.wait("the task page to show its goal",
           lambda: page.locator('#task [data-goal-status="completed"]').count() == 1)
    r.contiguous(page)


def diff(r, page):
    r.open(page)
    by_prompt = lambda prompt: r.wait(f"the task {prompt!r} on the page", lambda: page.evaluate(
        "p => { const t = [...window.groveBoard.tasks.values()].find(t => t.prompt === p); return t && t.id; }",
        prompt))
    big, small = by_prompt("seq 1 3000000 > big.txt"), by_prompt("echo small > s.txt")
    page.goto(base(r) + f"#task/{big}")
    page.locator("#task button", has_text="Show changes").click()
    note = page.locator("#task .truncated")
    note.wait_for(timeout=DEADLINE * 1000)
    text = note.inner_text()
    check(f"grove diff {big}" in text, f"the note names grove diff: {text}")
    # The start of the patch, without laying out 8 MiB of text for it.
    start = page.locator("#task pre.diff").evaluate("e => e.textContent.slice(0, 200)")
    check("diff --git a/big.txt" in start, "the patch's start is shown")
    # The visible part only: a full-page shot of 8 MiB of patch takes
    # longer than Playwright waits on a busy machine; the note is on top.
    page.screenshot(path=r.shot)
    page.goto(base(r) + f"#task/{small}")
    page.locator("#task button", has_text="Show changes").click()
    r.wait("the small task's changes", lambda: page.locator("#task pre.diff").count() == 1
           and "+small" in page.locator("#task pre.diff").inner_text())
    check(page.locator("#task .truncated").count() == 0, "a small diff is said to be cut")


def opener(r, page):
    page.goto(r.url)

    def on_the_board():
        try:
            return page.url.startswith("http://127.0.0.1:") and page.evaluate(
                "() => !!(window.groveBoard && window.groveBoard.source && window.groveBoard.source.readyState === 1)")
        except Exception:  # evaluated while the page is being replaced
            return False
    r.wait("the board", on_the_board)
    check("token=" not in page.url, f"the token stays in the address bar: {page.url}")
    page.screenshot(path=r.shot, full_page=True)


def base(r):
    return r.url.split("?")[0]


def token(url):
    return url.split("token=")[1]


def main():
    scenario, grove, ws, url, shot = sys.argv[1:6]
    r = Run(grove, ws, url, shot)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        scenarios = {"tasks": tasks, "approve": approve, "failover": failover, "delegation": delegation,
                     "goals": goals, "diff": diff, "opener": opener}
        scenarios[scenario](r, page)
        check(not errors, f"the page threw: {errors}")
        browser.close()
    print(f"board.py: {scenario} passed", file=sys.stderr)


if __name__ == "__main__":
    main()
