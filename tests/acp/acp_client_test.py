"""grove acp driven by the official Python ACP client (PyPI
`agent-client-protocol`), whose pydantic models validate every message.

Usage: python3 acp_client_test.py GROVE_BIN WORKSPACE
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


class Recorder:
    """The client side: records every session/update it receives."""

    def __init__(self):
        self.updates = []

    async def session_update(self, session_id, update, **kwargs):
        self.updates.append((session_id, update))

    async def request_permission(self, *args, **kwargs):
        raise acp.RequestError.method_not_found("session/request_permission")

    def of(self, kind):
        return [u for _, u in self.updates if isinstance(u, kind)]

    def output(self):
        """What the command cards show: their code blocks."""
        out = []
        for p in self.of(schema.ToolCallProgress):
            for c in p.content or []:
                block = getattr(c, "content", None)
                if isinstance(block, schema.TextContentBlock) and block.text.startswith("```"):
                    out.append(block.text)
        return "\n".join(out)

    def text(self):
        return "".join(
            u.content.text
            for u in self.of(schema.AgentMessageChunk)
            if isinstance(u.content, schema.TextContentBlock)
        )


def text_block(t):
    return schema.TextContentBlock(type="text", text=t)


def grove(*args):
    out = subprocess.run([GROVE, *args, "--workspace", WS], capture_output=True, text=True, env=ENV)
    return out


async def connect(rec, log_name):
    stderr = open(os.path.join(WS, "..", log_name), "w")
    return acp.spawn_agent_process(
        rec, GROVE, "acp", env=ENV, cwd=WS, transport_kwargs={"stderr": stderr}
    )


async def full_turn_and_cancel():
    rec = Recorder()
    async with await connect(rec, "acp-a.log") as (conn, proc):
        init = await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
        check(init.protocol_version == 1, "initialize negotiates protocol v1")
        check(init.agent_capabilities.load_session, "loadSession advertised")
        check(init.agent_info is not None and init.agent_info.name == "grove", "agentInfo names grove")
        new = await conn.new_session(cwd=WS, mcp_servers=[])
        sid = new.session_id
        check(new.modes is not None and new.modes.current_mode_id == "shell", "modes offered (engines)")
        resp = await conn.prompt(
            session_id=sid,
            prompt=[text_block("echo hello from grove; grove progress 50 halfway; sleep 0.3; echo bye")],
        )
        check(resp.stop_reason == "end_turn", "a full turn ends with end_turn")
        starts = rec.of(schema.ToolCallStart)
        check(len(starts) == 1 and starts[0].kind == "execute", "the task appears as an execute tool_call")
        progress = rec.of(schema.ToolCallProgress)
        check(any(p.status == "completed" for p in progress), "tool_call_update reports completion")
        output = rec.output()
        check("hello from grove" in output and "bye" in output,
              "output streamed as the tool call's content (a code block)")
        check("hello from grove" not in rec.text(), "not as the agent's message text")
        cmds = rec.of(schema.AvailableCommandsUpdate)
        names = {c.name for u in cmds for c in u.available_commands}
        check({"spawn", "tasks", "wait", "cancel", "status"} <= names, "slash commands advertised")
        # The session's tasks are visible from any other process.
        listed = grove("list", "--session", sid, "--json")
        check(listed.returncode == 0 and len(json.loads(listed.stdout)) == 1, "grove list --session shows the task")
        # A failing task: the failure is visible to the user.
        resp = await conn.prompt(session_id=sid, prompt=[text_block("echo oops; exit 7")])
        check(resp.stop_reason == "end_turn", "a failed task still ends the turn")
        check("exit code 7" in rec.text(), "the failure is shown to the user")
        # Cancel mid-prompt.
        rec.updates.clear()
        prompt = asyncio.create_task(conn.prompt(session_id=sid, prompt=[text_block("sleep 60")]))
        deadline = time.time() + 20
        while time.time() < deadline and not any(
            p.status == "in_progress" for p in rec.of(schema.ToolCallProgress)
        ):
            await asyncio.sleep(0.05)
        await conn.cancel(session_id=sid)
        resp = await asyncio.wait_for(prompt, 20)
        check(resp.stop_reason == "cancelled", "session/cancel ends the prompt with cancelled")
        task_id = rec.of(schema.ToolCallStart)[0].tool_call_id
        shown = json.loads(grove("show", task_id, "--json").stdout)
        check(shown["status"] == "cancelled", "the task itself was cancelled")
        # Slash commands run orchestrator operations.
        rec.updates.clear()
        await conn.prompt(session_id=sid, prompt=[text_block("/spawn echo from slash")])
        await conn.prompt(session_id=sid, prompt=[text_block("/wait")])
        await conn.prompt(session_id=sid, prompt=[text_block("/tasks")])
        check("Spawned task" in rec.text() and "completed" in rec.text(), "/spawn, /wait and /tasks work")
        await conn.prompt(session_id=sid, prompt=[text_block("/status")])
        check("primary pid" in rec.text(), "/status reports the primary")
        try:
            await conn.set_session_mode(session_id=sid, mode_id="nosuch")
            check(False, "an unknown mode is refused")
        except acp.RequestError as e:
            check(e.code == -32602, "an unknown mode is refused with -32602")
    return sid


async def load_from_another_process(sid):
    rec = Recorder()
    async with await connect(rec, "acp-b.log") as (conn, proc):
        await conn.initialize(protocol_version=acp.PROTOCOL_VERSION)
        await conn.load_session(cwd=WS, session_id=sid, mcp_servers=[])
        users = [u.content.text for u in rec.of(schema.UserMessageChunk)]
        check(any("hello from grove" in u for u in users), "load replays the user's prompts before responding")
        check(len(rec.of(schema.ToolCallStart)) >= 3, "load replays the tasks as tool calls")
        check("hello from grove" in rec.output(), "load replays the output")
        try:
            await conn.load_session(cwd=WS, session_id="no-such-session", mcp_servers=[])
            check(False, "loading an unknown session fails")
        except acp.RequestError as e:
            check(e.code == -32602, "loading an unknown session fails with -32602")


def primary_pid():
    with open(os.path.join(WS, ".grove", "primary.json")) as f:
        return json.load(f)["pid"]


async def failover_between_two_agents():
    rec_a, rec_b = Recorder(), Recorder()
    async with await connect(rec_a, "acp-c.log") as (conn_a, proc_a):
        await conn_a.initialize(protocol_version=acp.PROTOCOL_VERSION)
        await conn_a.new_session(cwd=WS, mcp_servers=[])
        async with await connect(rec_b, "acp-d.log") as (conn_b, proc_b):
            await conn_b.initialize(protocol_version=acp.PROTOCOL_VERSION)
            sid_b = (await conn_b.new_session(cwd=WS, mcp_servers=[])).session_id
            victim = primary_pid()
            check(victim in (proc_a.pid, proc_b.pid), "one of the two agents is the primary")
            survivor, rec = (conn_b, rec_b) if victim == proc_a.pid else (conn_a, rec_a)
            sid = sid_b if survivor is conn_b else None
            if sid is None:
                sid = (await survivor.new_session(cwd=WS, mcp_servers=[])).session_id
            os.kill(victim, signal.SIGKILL)
            resp = await asyncio.wait_for(
                survivor.prompt(session_id=sid, prompt=[text_block("echo after the failover")]), 30
            )
            check(resp.stop_reason == "end_turn", "the surviving agent still serves prompts")
            check("after the failover" in rec.output(), "and streams their output")
            check(primary_pid() != victim, "a new primary took over")


def garbage_input():
    p = subprocess.Popen([GROVE, "acp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=WS)
    p.stdin.write("this is not json\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"nope\"}\n")
    p.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "unknown/notification"}) + "\n")
    p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "initialize",
                              "params": {"protocolVersion": 1}}) + "\n")
    p.stdin.flush()
    first = json.loads(p.stdout.readline())
    second = json.loads(p.stdout.readline())
    third = json.loads(p.stdout.readline())
    p.stdin.close()
    code = p.wait(timeout=15)
    check(first.get("error", {}).get("code") == -32700, "garbage gets a parse error")
    check(second.get("error", {}).get("code") == -32601 and second.get("id") == 1, "unknown method gets -32601")
    check(third.get("id") == 2 and "result" in third, "the agent keeps going after garbage")
    check(code == 0, "EOF on stdin is a clean shutdown")


async def main():
    sid = await full_turn_and_cancel()
    await load_from_another_process(sid)
    await failover_between_two_agents()
    garbage_input()


asyncio.run(main())
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
