"""grove acp in front of an ACP engine, driven by the official Python ACP
client (PyPI `agent-client-protocol`): the editor talks to the scripted
agent (tests/acp_agents/scripted_agent.py, engine `scripted`) through
grove. Its updates arrive as themselves (tool calls, diffs, plans), its
permission requests are asked of the editor, a cancel keeps the session,
and a `grove acp` killed mid-turn (or while its editor is asked a
permission) leaves the agent working: a new one
loads the session, gets the whole conversation and the rest of the turn.

Usage: python3 relay_client_test.py GROVE_BIN WORKSPACE
Prints `N passed, M failed` and exits non-zero on any failure.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import acp
from acp import schema

GROVE, WS = sys.argv[1], os.path.realpath(sys.argv[2])
ENV = dict(os.environ, GROVE_LOG="grove=info", GROVE_NO_AUTOSTART="1")
passed, failed = 0, 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {what}", flush=True)
    else:
        failed += 1
        print(f"FAIL {what}", flush=True)


class Editor:
    """The client side: records every update; answers permission requests
    with `answer` (an option id, or None to reject)."""

    def __init__(self, answer="allow"):
        self.updates = []
        self.asked = []
        self.answer = answer

    async def session_update(self, session_id, update, **kwargs):
        self.updates.append((session_id, update))

    async def request_permission(self, options, session_id, tool_call, **kwargs):
        self.asked.append((session_id, tool_call))
        if self.answer is None:
            pick = next(o for o in options if o.kind.startswith("reject"))
        else:
            pick = next(o for o in options if o.option_id == self.answer)
        return schema.RequestPermissionResponse(
            outcome=schema.AllowedOutcome(outcome="selected", option_id=pick.option_id)
        )

    def of(self, kind):
        return [u for _, u in self.updates if isinstance(u, kind)]

    def text(self):
        return "".join(
            u.content.text
            for u in self.of(schema.AgentMessageChunk)
            if isinstance(u.content, schema.TextContentBlock)
        )


def text_block(t):
    return schema.TextContentBlock(type="text", text=t)


async def connect(rec, log_name):
    stderr = open(os.path.join(WS, "..", log_name), "w")
    return acp.spawn_agent_process(
        rec, GROVE, "acp", env=ENV, cwd=WS, transport_kwargs={"stderr": stderr}
    )


async def ask(conn, sid, text):
    return await asyncio.wait_for(conn.prompt(session_id=sid, prompt=[text_block(text)]), 30)


async def wait_until(cond, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    check(False, f"in time: {what}")
    return False


async def turns_through_grove():
    ed = Editor(answer="allow")
    async with await connect(ed, "relay-a.log") as (conn, proc):
        await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
        sid = (await conn.new_session(cwd=WS, mcp_servers=[])).session_id
        await conn.set_session_mode(session_id=sid, mode_id="scripted")
        resp = await ask(conn, sid, "edit notes.txt")
        check(resp.stop_reason == "end_turn", "a relayed turn ends with the agent's end_turn")
        starts = ed.of(schema.ToolCallStart)
        check(any(s.tool_call_id == "t1" and s.kind == "edit" for s in starts),
              "the agent's tool call arrives as a tool_call (not flattened to text)")
        diffs = [c for p in ed.of(schema.ToolCallProgress) for c in (p.content or [])
                 if getattr(c, "type", "") == "diff"]
        check(any(d.new_text == "new\n" for d in diffs), "its diff arrives as a diff")
        check(len(ed.of(schema.AgentPlanUpdate)) == 1, "its plan arrives as a plan")
        check(ed.text() == "edited", "its message arrives as message chunks")
        with open(os.path.join(WS, "notes.txt")) as f:
            check(f.read() == "new\n", "the agent wrote the file in the workspace")
        # The next prompt is the next turn of the same agent session.
        ed.updates.clear()
        await ask(conn, sid, "turns")
        check(ed.text() == "turns 2", "a second prompt is a follow-up in the same agent session")
        # The agent's permission request is asked of the editor.
        ed.updates.clear()
        await ask(conn, sid, "permission")
        check(len(ed.asked) == 1 and ed.asked[0][0] == sid,
              "the permission request is forwarded to the editor, in its session")
        check(ed.text() == "ran make", "the editor's answer reached the agent")
        ed.answer = None
        ed.updates.clear()
        await ask(conn, sid, "permission")
        check(ed.text() == "did not run make", "a rejection reaches the agent too")
        # Cancel: the turn ends cancelled, the session stays for the next.
        ed.updates.clear()
        prompt = asyncio.create_task(ask(conn, sid, "slow 200"))
        await wait_until(lambda: ed.text(), "the slow turn streams")
        await conn.cancel(session_id=sid)
        resp = await prompt
        check(resp.stop_reason == "cancelled", "session/cancel ends the relayed turn with cancelled")
        ed.updates.clear()
        await ask(conn, sid, "turns")
        check(ed.text().endswith("turns 6"), f"the session goes on after a cancel ({ed.text()!r})")
        tasks = json.loads(subprocess.run([GROVE, "list", "--session", sid, "--json", "--workspace", WS],
                                          capture_output=True, text=True, env=ENV).stdout)
        check(len(tasks) == 1 and tasks[0]["keep_session"], "one kept agent session holds every turn")
    return sid


async def killed_editor_and_load(sid):
    # Another member keeps the grove going while the editors come and go.
    member = subprocess.Popen([GROVE, "serve", "--workspace", WS], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ed = Editor()
        async with await connect(ed, "relay-b.log") as (conn, proc):
            await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
            await conn.load_session(cwd=WS, session_id=sid, mcp_servers=[])
            ed.updates.clear()
            prompt = asyncio.create_task(conn.prompt(session_id=sid, prompt=[text_block("slow 40")]))
            await wait_until(lambda: "c1 " in ed.text(), "the turn streams")
            os.kill(proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(prompt, 5)
            except Exception:
                pass
        later = Editor()
        async with await connect(later, "relay-c.log") as (conn, proc):
            await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
            await conn.load_session(cwd=WS, session_id=sid, mcp_servers=[])
            users = [u.content.text for u in later.of(schema.UserMessageChunk)]
            check(users[:2] == ["edit notes.txt", "turns"], f"load replays the prompts ({users[:3]})")
            check(any(s.tool_call_id == "t1" for s in later.of(schema.ToolCallStart)),
                  "load replays the agent's tool calls")
            await wait_until(lambda: "c39 " in later.text(), "the rest of the running turn arrives")
            check("c39 " in later.text(), "a new window gets the turn that outlived the killed one")
            await ask(conn, sid, "turns")
            check(later.text().endswith("turns 8"), f"and the session takes the next prompt ({later.text()[-60:]!r})")
    finally:
        member.send_signal(signal.SIGTERM)
        member.wait(timeout=15)


class Silent(Editor):
    """An editor that never answers a permission request (its window dies
    first)."""

    async def request_permission(self, options, session_id, tool_call, **kwargs):
        self.asked.append((session_id, tool_call))
        await asyncio.Future()


async def a_pending_permission_outlives_the_editor():
    member = subprocess.Popen([GROVE, "serve", "--workspace", WS], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ed = Silent()
        async with await connect(ed, "relay-d.log") as (conn, proc):
            await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
            sid = (await conn.new_session(cwd=WS, mcp_servers=[])).session_id
            await conn.set_session_mode(session_id=sid, mode_id="scripted")
            prompt = asyncio.create_task(conn.prompt(session_id=sid, prompt=[text_block("permission")]))
            await wait_until(lambda: ed.asked, "the editor is asked")
            os.kill(proc.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(prompt, 5)
            except Exception:
                pass
        later = Editor(answer="allow")
        async with await connect(later, "relay-e.log") as (conn, proc):
            await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
            await conn.load_session(cwd=WS, session_id=sid, mcp_servers=[])
            await wait_until(lambda: later.asked, "the request is asked again in the new window")
            check(len(later.asked) == 1 and later.asked[0][0] == sid,
                  "a permission request still waiting is asked of the window that loads the session")
            await wait_until(lambda: "ran make" in later.text(), "the answer reaches the agent")
            check("ran make" in later.text(), "and the agent's turn goes on to its end")
    finally:
        member.send_signal(signal.SIGTERM)
        member.wait(timeout=15)


async def main():
    sid = await turns_through_grove()
    await killed_editor_and_load(sid)
    await a_pending_permission_outlives_the_editor()


asyncio.run(main())
print(f"{passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
