"""A scripted ACP agent on the official Python SDK (PyPI
`agent-client-protocol`), for grove's tests. It chooses what to do from the
words of the prompt, never from the order of requests:

  hello          streams a message in chunks and a thought; end_turn
  edit NAME      a plan, an `edit` tool call with a diff, the file written
                 through the client's fs/write_text_file; end_turn
  permission     asks for permission for an `execute` tool call; the tool
                 completes when allowed, fails when rejected or cancelled
  slow N         streams N chunks, 50 ms apart; honours session/cancel
(session/set_mode accepts the modes default and plan)
  refuse         stop reason refusal
  crash          one chunk, then exits with status 3 mid-turn
  garbage        writes a line that is not JSON on stdout
  read PATH      reads PATH through fs/read_text_file and says what it got
  write PATH     writes PATH through fs/write_text_file and says how it went
  model          says the session's model (a `model` config option: fast, smart)
  mcp            says the names of the MCP servers session/new gave it
  turns          says how many prompts this session has had
  pid            says the agent's process id
  inits          says how many times the agent was initialized
  delegate       through grove's MCP server (from session/new): spawns the
                 children listed in delegate.json in its cwd (a shell
                 prompt, or the spawn tool's arguments), awaits them
                 (policy and quorum from the file) and ends its turn
  goal:MODE      one iteration of a goal (its number read from the prompt's
                 "iteration N", else 1) appended to goals.log in its cwd,
                 then a conclusion block: reach3 (progress 33 per iteration,
                 success at the third), stall (progress 10 each time),
                 blocked (blocked, "need the deploy key"), forever (1 s
                 per iteration, honours session/cancel, progress rising,
                 never done), gated (waits for the file release-N in its
                 cwd, then as reach3 but success at the second), crash
                 (exits mid-turn)
  [grove: ...    (a resumption with delegated results) appends one line to
                 resumed.log in its cwd and says "resumed" and the text
(a prompt that starts with "Continue" says "continued")

Usage: python3 scripted_agent.py
"""

import asyncio
import os
import sys

import acp
from acp import schema
from acp.helpers import (
    plan_entry,
    start_edit_tool_call,
    start_tool_call,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_current_mode,
    update_plan,
    update_tool_call,
)


class Scripted:
    def __init__(self):
        self.conn = None
        self.cancelled = {}
        self.cwd = {}
        self.model = {}
        self.mcp = {}
        self.turns = {}
        self.inits = 0

    def on_connect(self, conn):
        self.conn = conn

    async def initialize(self, protocol_version, client_capabilities=None, client_info=None, **kw):
        self.inits += 1
        return schema.InitializeResponse(
            protocol_version=1,
            agent_capabilities=schema.AgentCapabilities(load_session=False),
            agent_info=schema.Implementation(name="scripted-agent", version="1"),
        )

    async def new_session(self, cwd, mcp_servers=None, **kw):
        sid = f"s{len(self.cwd) + 1}"
        self.cwd[sid] = cwd
        self.model[sid] = "fast"
        self.mcp[sid] = [getattr(m, "name", "?") for m in (mcp_servers or [])]
        self.servers = getattr(self, "servers", {})
        self.servers[sid] = list(mcp_servers or [])
        modes = schema.SessionModeState(
            current_mode_id="default",
            available_modes=[
                schema.SessionMode(id="default", name="Default"),
                schema.SessionMode(id="plan", name="Plan"),
            ],
        )
        return schema.NewSessionResponse(
            session_id=sid, modes=modes, config_options=[self.model_option(sid)]
        )

    def model_option(self, sid):
        return schema.SessionConfigOptionSelect(
            id="model",
            name="Model",
            category="model",
            type="select",
            current_value=self.model[sid],
            options=[
                schema.SessionConfigSelectOption(value="fast", name="Fast"),
                schema.SessionConfigSelectOption(value="smart", name="Smart One"),
            ],
        )

    async def set_config_option(self, config_id, session_id, value, **kw):
        if config_id != "model" or value not in ("fast", "smart"):
            raise acp.RequestError.invalid_params({"configId": config_id, "value": value})
        self.model[session_id] = value
        return schema.SetSessionConfigOptionResponse(config_options=[self.model_option(session_id)])

    async def set_session_mode(self, session_id, mode_id, **kw):
        if mode_id not in ("default", "plan"):
            raise acp.RequestError.invalid_params({"modeId": mode_id})
        await self.conn.session_update(session_id=session_id, update=update_current_mode(mode_id))
        return schema.SetSessionModeResponse()

    async def delegate(self, sid):
        import json

        with open(os.path.join(self.cwd[sid], "delegate.json")) as f:
            plan = json.load(f)
        server = next((m for m in self.servers[sid] if getattr(m, "name", "") == "grove"), None)
        if server is None:
            return "no grove MCP server in session/new"
        return await _delegate(server, plan)

    async def goal(self, sid, text):
        import json
        import re

        mode = re.search(r"goal:(\w+)", text).group(1)
        m = re.search(r"iteration (\d+)", text)
        n = int(m.group(1)) if m else 1
        cwd = self.cwd[sid]
        with open(os.path.join(cwd, "goals.log"), "a") as f:
            f.write(f"{n}\n")
        con = {"status": "partial", "summary": f"iteration {n} of {mode}", "next_step": f"iteration {n + 1}"}
        if mode == "reach3":
            con.update(progress=33 * n, status="success" if n >= 3 else "partial")
        elif mode == "stall":
            con.update(progress=10)
        elif mode == "blocked":
            con.update(status="blocked", blocked_reason="need the deploy key", progress=5)
        elif mode == "forever":
            for _ in range(20):
                if self.cancelled.get(sid):
                    return "cancelled"
                await asyncio.sleep(0.05)
            con.update(progress=n)
        elif mode == "gated":
            gate = os.path.join(cwd, f"release-{n}")
            for _ in range(1200):
                if os.path.exists(gate) or self.cancelled.get(sid):
                    break
                await asyncio.sleep(0.05)
            con.update(progress=50 * n, status="success" if n >= 2 else "partial")
        elif mode == "crash":
            await self.say(sid, "about to crash")
            await asyncio.sleep(0.1)
            os._exit(3)
        await self.say(sid, f"working on iteration {n}\n")
        await self.say(sid, "<grove:conclusion>" + json.dumps(con) + "</grove:conclusion>")
        return None

    async def cancel(self, session_id, **kw):
        self.cancelled[session_id] = True

    async def say(self, sid, text):
        await self.conn.session_update(session_id=sid, update=update_agent_message_text(text))

    async def prompt(self, session_id, prompt, **kw):
        sid = session_id
        self.cancelled[sid] = False
        text = " ".join(b.text for b in prompt if getattr(b, "type", "") == "text")
        words = text.split()
        self.turns[sid] = self.turns.get(sid, 0) + 1
        if "goal:" in text:
            stop = await self.goal(sid, text)
            if stop:
                return schema.PromptResponse(stop_reason=stop)
        elif text.startswith("Continue"):
            await self.say(sid, "continued")
        elif text.startswith("[grove:"):
            with open(os.path.join(self.cwd[sid], "resumed.log"), "a") as f:
                f.write(text.replace("\n", " ") + "\n")
            await self.say(sid, "resumed " + text)
        elif "delegate" in words:
            try:
                await self.say(sid, await self.delegate(sid))
            except Exception as e:
                await self.say(sid, f"delegate failed: {e!r}")
        elif "model" in words:
            await self.say(sid, f"model {self.model[sid]}")
        elif "mcp" in words:
            await self.say(sid, "mcp " + ",".join(self.mcp[sid]))
        elif "pid" in words:
            await self.say(sid, f"pid {os.getpid()}")
        elif "inits" in words:
            await self.say(sid, f"inits {self.inits}")
        elif "turns" in words:
            await self.say(sid, f"turns {self.turns[sid]}")
        elif "hello" in words:
            await self.conn.session_update(session_id=sid, update=update_agent_thought_text("greeting"))
            for w in ["Hel", "lo ", "wor", "ld"]:
                await self.say(sid, w)
        elif "edit" in words:
            name = words[words.index("edit") + 1]
            path = os.path.join(self.cwd[sid], name)
            await self.conn.session_update(
                session_id=sid,
                update=update_plan([plan_entry("write the file", status="in_progress")]),
            )
            await self.conn.session_update(
                session_id=sid,
                update=start_edit_tool_call("t1", f"Write {name}", path, "new\n"),
            )
            await self.conn.session_update(
                session_id=sid,
                update=update_tool_call(
                    "t1", status="in_progress", content=[tool_diff_content(path, "new\n", "old\n")]
                ),
            )
            await self.conn.write_text_file(session_id=sid, path=path, content="new\n")
            await self.conn.session_update(session_id=sid, update=update_tool_call("t1", status="completed"))
            await self.say(sid, "edited")
        elif "permtwice" in words or "permparallel" in words or "rejectonly" in words:
            # Two requests one after the other, or N at once (ACP lets
            # tools run in parallel): which option each answer chose.
            options = [
                schema.PermissionOption(option_id="allow", name="Allow once", kind="allow_once"),
                schema.PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
            ]

            async def ask(i):
                answer = await self.conn.request_permission(
                    session_id=sid,
                    tool_call=update_tool_call(f"p{i}", title=f"Run step {i}", kind="execute"),
                    options=options,
                )
                o = answer.outcome
                return o.option_id if getattr(o, "outcome", "") == "selected" else "cancelled"

            if "rejectonly" in words:
                options = [options[1]]
            if "permtwice" in words:
                got = [await ask(0), await ask(1)]
            elif "rejectonly" in words:
                got = [await ask(0)]
            else:
                n = int(words[words.index("permparallel") + 1])
                got = await asyncio.gather(*(ask(i) for i in range(n)))
            await self.say(sid, "perms " + ",".join(got))
        elif "permission" in words:
            await self.conn.session_update(
                session_id=sid, update=start_tool_call("t2", "Run make", kind="execute", status="pending")
            )
            options = [
                schema.PermissionOption(option_id="allow", name="Allow once", kind="allow_once"),
                schema.PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
            ]
            answer = await self.conn.request_permission(
                session_id=sid,
                tool_call=update_tool_call("t2", title="Run make", kind="execute"),
                options=options,
            )
            outcome = answer.outcome
            allowed = getattr(outcome, "outcome", "") == "selected" and outcome.option_id == "allow"
            await self.conn.session_update(
                session_id=sid, update=update_tool_call("t2", status="completed" if allowed else "failed")
            )
            if self.cancelled.get(sid):
                return schema.PromptResponse(stop_reason="cancelled")
            await self.say(sid, "ran make" if allowed else "did not run make")
        elif "slow" in words:
            n = int(words[words.index("slow") + 1])
            for i in range(n):
                if self.cancelled.get(sid):
                    return schema.PromptResponse(stop_reason="cancelled")
                await self.say(sid, f"c{i} ")
                await asyncio.sleep(0.05)
        elif "refuse" in words:
            await self.say(sid, "no")
            return schema.PromptResponse(stop_reason="refusal")
        elif "crash" in words:
            await self.say(sid, "about to crash")
            await asyncio.sleep(0.1)
            os._exit(3)
        elif "garbage" in words:
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
            await asyncio.sleep(30)
        elif "read" in words:
            path = words[words.index("read") + 1]
            try:
                got = await self.conn.read_text_file(session_id=sid, path=path)
                await self.say(sid, f"read ok: {got.content}")
            except Exception as e:  # the client's refusal
                await self.say(sid, f"read refused: {e}")
        elif "write" in words:
            path = words[words.index("write") + 1]
            try:
                await self.conn.write_text_file(session_id=sid, path=path, content="pwned")
                await self.say(sid, "write ok")
            except Exception as e:
                await self.say(sid, f"write refused: {e}")
        else:
            await self.say(sid, f"unknown script: {text}")
        return schema.PromptResponse(stop_reason="end_turn")


async def _delegate(server, plan):
    # The official MCP Python SDK as grove's MCP client, on the stdio
    # server that session/new named.
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    env = dict(os.environ)
    for e in getattr(server, "env", None) or []:
        env[e.name] = e.value
    params = StdioServerParameters(command=server.command, args=list(server.args or []), env=env)
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            ids = []
            for child in plan["children"]:
                # A prompt for a shell child, or the spawn tool's arguments.
                spawn = child if isinstance(child, dict) else {"prompt": child, "engine": "shell"}
                got = await s.call_tool("spawn", spawn)
                if got.is_error:
                    return f"spawn refused: {got.content[0].text}"
                ids.append(got.structured_content["id"])
            args = {"ids": ids, "policy": plan.get("policy", "all")}
            for key in ("quorum", "timeout_seconds"):
                if key in plan:
                    args[key] = plan[key]
            got = await s.call_tool("await", args)
            if got.is_error:
                return f"await refused: {got.content[0].text}"
            return "awaiting " + " ".join(ids)


async def main():
    await acp.run_agent(Scripted())


if __name__ == "__main__":
    asyncio.run(main())
