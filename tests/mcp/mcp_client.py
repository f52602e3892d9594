"""grove mcp driven by the official Python MCP client (PyPI `mcp`).

Usage: python3 mcp_client.py GROVE_BIN WORKSPACE SCENARIO
SCENARIO is `tools` (every tool listed, its schema valid, each one called,
bad arguments refused as tool errors), `children` (run with GROVE_TASK_ID
set: what it spawns are that task's children, under max_children = 2) or
`projects` (GROVE_TASK_ID and OTHER_PROJECT set: a child delegated to
another workspace) or `lend` (GROVE_TASK_ID set, under max_parallel = 1:
the caller's slot is lent while it waits, so its child runs).
Prints `N passed, M failed` and exits non-zero on any failure.
"""

import json
import os
import sys

import anyio
import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

GROVE, WS, SCENARIO = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3]
passed, failed = 0, 0

TOOLS = {
    "spawn", "get", "list", "output", "wait", "cancel", "pause", "resume",
    "retry", "relaunch", "say", "progress", "conclude", "stats", "engines",
    "personas", "await", "awaits", "await_cancel", "projects",
}


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}", flush=True)
    else:
        failed += 1
        print(f"FAIL {what}", flush=True)


class Grove:
    def __init__(self, session):
        self.s = session

    async def call(self, name, args):
        """A tool call that must succeed: its structured answer."""
        r = await self.s.call_tool(name, args)
        if r.is_error:
            raise AssertionError(f"{name} {args} failed: {r.content[0].text}")
        return r.structured_content

    async def refused(self, name, args):
        """A tool call that must be refused as a tool error: its text."""
        r = await self.s.call_tool(name, args)
        if not r.is_error:
            raise AssertionError(f"{name} {args} was not refused: {r.structured_content}")
        return r.content[0].text


def block(status, summary):
    body = json.dumps({"status": status, "summary": summary})
    return f"echo '<grove:conclusion>{body}</grove:conclusion>'"


async def tools(s, g):
    listed = (await s.list_tools()).tools
    check({t.name for t in listed} == TOOLS, f"every tool is listed: {sorted(t.name for t in listed)}")
    for t in listed:
        try:
            jsonschema.Draft202012Validator.check_schema(t.input_schema)
            ok = t.input_schema.get("type") == "object"
        except jsonschema.SchemaError as e:
            ok = False
            print(e)
        check(ok and bool(t.description), f"{t.name}: a valid object schema and a description")
        if t.input_schema.get("required"):
            why = await g.refused(t.name, {})
            check("missing field" in why, f"{t.name} without its required arguments: {why}")
        if t.input_schema.get("additionalProperties") is False:
            why = await g.refused(t.name, {"no_such_argument": 1})
            check("unknown field" in why, f"{t.name} with an unknown argument: {why}")

    for name in ("stats", "engines", "personas", "projects"):
        check(await g.call(name, {}) is not None, f"{name} answers")
    engines = await g.call("engines", {})
    check(any(e["name"] == "shell" for e in engines["engines"]), "engines lists shell")

    done = await g.call("spawn", {"prompt": "echo hello; " + block("success", "said hello"), "tags": ["t1"]})
    check(done["status"] in ("queued", "running"), f"spawn answers with a queued task: {done['status']}")
    waited = await g.call("wait", {"ids": [done["id"]], "timeout_seconds": 60})
    t = waited["tasks"][0]
    check(waited["satisfied"] and t["status"] == "completed", f"wait: completed {waited}")
    c = t["conclusion"] or {}
    check(c.get("source") == "reported" and c.get("summary") == "said hello", f"wait returns the conclusion {c}")
    got = await g.call("get", {"id": done["id"][:10]})
    check(got["id"] == done["id"] and got["children"] == [], "get by prefix, with its children")
    out = await g.call("output", {"id": done["id"]})
    check("hello" in out["text"] and out["next_offset"] == out["size"], f"output: the tail {out}")
    page = await g.call("output", {"id": done["id"], "offset": 0, "max_bytes": 3})
    check(page["text"] == "hel" and page["next_offset"] == 3, f"output: a page {page}")
    listed = await g.call("list", {"tag": "t1"})
    check(listed["total"] == 1 and listed["tasks"][0]["id"] == done["id"], "list by tag")
    why = await g.refused("spawn", {"prompt": "echo x", "keep_session": True})
    check("acp" in why, f"keep_session on a shell task is refused: {why}")
    why = await g.refused("list", {"status": "bogus"})
    check("one of" in why, f"list: an unknown status says the valid ones: {why}")
    why = await g.refused("get", {"id": "ffffffffffff"})
    check("no task" in why and "list" in why, f"get: an unknown id says where to look: {why}")

    # Overrides: an unknown engine changes nothing; a new prompt reruns.
    why = await g.refused("relaunch", {"id": done["id"], "engine": "no-such-engine"})
    check("no-such-engine" in why, f"relaunch onto an unknown engine is refused: {why}")
    same = await g.call("get", {"id": done["id"]})
    check(same["engine"] == "shell" and same["status"] == "completed", "...and the task is unchanged")
    why = await g.refused("relaunch", {"id": done["id"], "timeout_seconds": -1})
    check("positive" in why, f"relaunch with a bad timeout is refused: {why}")
    again = await g.call("relaunch", {"id": done["id"], "prompt": "echo again", "wait": True})
    check(again["status"] == "completed", f"relaunch with a new prompt, waited: {again['status']}")
    out = await g.call("output", {"id": done["id"]})
    check(out["text"].rstrip().endswith("again"), "the rerun ran the new prompt")
    check(again["conclusion"]["source"] == "synthesized", f"a rerun without a block: synthesized {again['conclusion']}")

    long = await g.call("spawn", {"prompt": "sleep 60"})
    paused = await g.call("pause", {"id": long["id"]})
    check(paused["status"] == "paused", "pause")
    resumed = await g.call("resume", {"id": long["id"], "tags": ["resumed"]})
    check(resumed["status"] in ("queued", "running") and resumed["tags"] == ["resumed"], f"resume with new tags {resumed}")
    why = await g.refused("say", {"id": long["id"], "text": "more"})
    check("acp" in why.lower() or "conversation" in why.lower(), f"say to a shell task is refused: {why}")
    cancelled = await g.call("cancel", {"id": long["id"]})
    check(cancelled["cancelled"] == [long["id"]], "cancel")
    why = await g.refused("cancel", {"id": long["id"]})
    check("already cancelled" in why, f"cancelling it again: {why}")
    retried = await g.call("retry", {"id": long["id"]})
    check(retried["id"] != long["id"] and retried["prompt"] == "sleep 60", "retry: a new task, a shell prompt unchanged")
    await g.call("cancel", {"id": retried["id"]})
    # A waited rerun is bounded: a run that does not end answers timed_out.
    why = await g.refused("retry", {"id": long["id"], "wait": True, "wait_seconds": 0})
    check("wait_seconds" in why and "positive" in why, f"retry with a bad wait: {why}")
    slow = await g.call("retry", {"id": long["id"], "wait": True, "wait_seconds": 0.5})
    check(slow.get("timed_out") is True and slow["status"] in ("queued", "running")
          and slow["id"] in slow["hint"], f"a waited retry that does not end in time: {slow}")
    await g.call("cancel", {"id": slow["id"]})

    listed = await g.call("awaits", {"all": True})
    check(listed["awaits"] == [], f"no awaits yet: {listed}")
    for tool, args in (("progress", {"percent": 5}), ("conclude", {"status": "success", "summary": "x"}),
                       ("await", {}), ("await_cancel", {})):
        why = await g.refused(tool, args)
        check("GROVE_TASK_ID" in why, f"{tool} outside a task: {why}")
    why = await g.refused("wait", {})
    check("GROVE_TASK_ID" in why and "ids" in why, f"wait without ids outside a task: {why}")
    why = await g.refused("wait", {"ids": [done["id"], done["id"]]})
    check("twice" in why, f"wait naming a task twice: {why}")
    why = await g.refused("wait", {"ids": [done["id"]], "policy": "quorum", "quorum": 2})
    check("quorum" in why, f"an impossible quorum: {why}")


async def children(s, g):
    parent = os.environ["GROVE_TASK_ID"]
    slow = await g.call("spawn", {"prompt": "sleep 60"})
    quick = await g.call("spawn", {"prompt": "echo child output"})
    check(slow["parent_id"] == parent and quick["parent_id"] == parent, "children record their parent")
    why = await g.refused("spawn", {"prompt": "echo one too many"})
    check("max_children" in why, f"the fan-out limit: {why}")
    mine = await g.call("list", {"parent": "self"})
    check({t["id"] for t in mine["tasks"]} == {slow["id"], quick["id"]}, "list parent=self")
    stats = await g.call("stats", {})
    check(stats["my_unfinished_children"] >= 1, f"stats counts my unfinished children {stats}")
    waited = await g.call("wait", {"ids": [quick["id"]], "timeout_seconds": 60})
    c = waited["tasks"][0]["conclusion"]
    check(c["source"] == "synthesized" and c["status"] == "success" and "child output" in c["summary"],
          f"a child without a block concludes from its output {c}")
    p = await g.call("progress", {"percent": 40, "text": "delegated"})
    check(p["progress_pct"] == 40, "progress of my own task")
    mine = await g.call("conclude", {"status": "partial", "summary": "one child left", "confidence": 0.5})
    check(mine["conclusion"]["source"] == "reported", "conclude my own task")
    why = await g.refused("conclude", {"status": "great", "summary": "x"})
    check("one of" in why, f"conclude with a bad status: {why}")
    why = await g.refused("await", {"ids": [slow["id"]]})
    check("not an acp engine" in why and "wait" in why, f"a shell task cannot await: {why}")
    why = await g.refused("await", {"ids": [slow["id"]], "policy": "most"})
    check("one of all, any, quorum" in why, f"await with a bad policy: {why}")
    why = await g.refused("await_cancel", {})
    check("no pending await" in why, f"await_cancel with nothing pending: {why}")
    print(json.dumps({"slow": slow["id"], "quick": quick["id"]}), flush=True)


async def projects(s, g):
    """Run with GROVE_TASK_ID set and OTHER_PROJECT naming a registered
    workspace where a member runs: a child delegated there."""
    parent, other = os.environ["GROVE_TASK_ID"], os.environ["OTHER_PROJECT"]
    listed = await g.call("projects", {})
    mine = [p for p in listed["projects"] if p["name"] == other]
    check(len(mine) == 1 and mine[0]["running"] and not mine[0]["stale"], f"projects lists {other}, running: {listed}")
    check(any(p["id"] == listed["this"] for p in listed["projects"]), "projects lists this workspace too")
    child = await g.call("spawn", {"prompt": "echo from there; " + block("success", "done there"), "project": other})
    check(child["parent_id"] == parent and child["engine"] == "delegate", f"the child is ours, run by the delegate engine {child}")
    waited = await g.call("wait", {"ids": [child["id"]], "timeout_seconds": 60})
    t = waited["tasks"][0]
    check(waited["satisfied"] and t["status"] == "completed", f"wait: completed {waited}")
    c = t["conclusion"] or {}
    check(c.get("status") == "success" and c.get("summary") == "done there", f"the other task's conclusion {c}")
    got = await g.call("get", {"id": child["id"]})
    check(got["conclusion"] == t["conclusion"], "get returns it too")
    out = await g.call("output", {"id": child["id"]})
    check("from there" in out["text"] and "delegated to" in out["text"], f"its output is the other task's {out}")
    failing = await g.call("spawn", {"prompt": "echo broken; exit 3", "project": other})
    waited = await g.call("wait", {"ids": [failing["id"]], "timeout_seconds": 60})
    t = waited["tasks"][0]
    check(t["status"] == "failed" and t["exit_code"] == 3, f"a failure there fails the child here {t}")
    why = await g.refused("spawn", {"prompt": "echo x", "project": "no-such-project"})
    check("no project" in why and "projects" in why, f"an unknown project: {why}")
    why = await g.refused("spawn", {"prompt": "echo x", "project": other, "keep_session": True})
    check("keep_session" in why, f"keep_session with a project: {why}")
    print(json.dumps({"child": child["id"]}), flush=True)


async def lend(s, g):
    """The caller's task holds the only slot; its child runs while it waits."""
    child = await g.call("spawn", {"prompt": "echo ran on a lent slot"})
    check(child["status"] == "queued", f"the child queues behind its parent {child}")
    waited = await g.call("wait", {"ids": [child["id"]], "timeout_seconds": 60})
    t = waited["tasks"][0]
    check(waited["satisfied"] and t["status"] == "completed", f"the child ran meanwhile {waited}")
    later = await g.call("spawn", {"prompt": "echo after the wait"})
    print(json.dumps({"child": child["id"], "later": later["id"]}), flush=True)


async def main():
    params = StdioServerParameters(
        command=GROVE, args=["mcp", "--workspace", WS], env=dict(os.environ)
    )
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            init = await s.initialize()
            check(init.server_info.name == "grove", "initialize: the server is grove")
            g = Grove(s)
            try:
                await {"tools": tools, "children": children, "projects": projects, "lend": lend}[SCENARIO](s, g)
            except AssertionError as e:
                check(False, str(e))


anyio.run(main)
print(f"{passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
