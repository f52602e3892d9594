"""A scripted Anthropic Messages endpoint on loopback, so that a real,
published agent (Claude Code's ACP adapter) can run in the tests offline and
deterministically.

What it answers (see ../shared/REAL-AGENTS.md for what the agent sends):
- `HEAD /` (the agent probes it once at start-up): 200, empty.
- `POST /v1/messages...` (one per model turn, always streamed): a reply
  chosen from the request's *content* — the last human text and whether the
  last user message carries a tool result — never from the order of
  requests, so side calls cannot shift the script.

The script, by the words of the last human text:
- contains "write the file NAME": a `Write` tool call that creates NAME
  (in the working directory the system prompt names) with the text
  "written by the stub\\n"; after the tool result: "The file is written."
  or, when the tool result is an error (the user refused), "The write was
  refused."
- contains "run the command": a `Bash` tool call `echo stub-ran`; after
  its result, "The command ran."
- contains "slowly": the text reply is streamed in 20 pieces, 150 ms apart
  (long enough to kill a member mid-turn).
- anything else: "Hello from the stub model." (with the human text's
  first word echoed, so follow-ups are told apart).

Usage: model_stub.py [--lo-up] PORT_FILE — with --lo-up (in a fresh network
namespace, where even loopback starts down) first brings `lo` up; binds 127.0.0.1 on a free port, writes the
port to PORT_FILE (atomically), serves until killed. Every request is also
appended as one JSON line to PORT_FILE + ".log" for the tests to inspect
(its path, the last human text, whether it carries a tool result and
whether that result is an error).
"""

import json
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "claude-stub-1"


def last_user_message(body):
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return message
    return {"content": []}


def blocks(message):
    content = message.get("content", [])
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content


def human_text(body):
    """The last text a human wrote (skipping system reminders the agent adds)."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        texts = [
            b.get("text", "")
            for b in blocks(message)
            if b.get("type") == "text" and "<system-reminder>" not in b.get("text", "")
        ]
        if texts:
            return texts[-1]
    return ""


def tool_result(body):
    for b in blocks(last_user_message(body)):
        if b.get("type") == "tool_result":
            return b
    return None


def workdir(body):
    """The session's working directory, as the agent states it in its
    context ("Primary working directory: /path")."""
    m = re.search(r"[Ww]orking directory: (/[^\s\\\"]+)", json.dumps(body))
    return m.group(1) if m else os.getcwd()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.do_HEAD()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with open(self.server.log_path, "a") as log:
            result = tool_result(body)
            log.write(json.dumps({"path": self.path, "human": human_text(body),
                                  "tool_result": result is not None,
                                  "tool_error": bool(result and result.get("is_error"))}) + "\n")
        if not self.path.startswith("/v1/messages"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/v1/messages/count_tokens"):
            data = json.dumps({"input_tokens": 10}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.stream(body)

    def stream(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        human = human_text(body)
        result = tool_result(body)
        self.event("message_start", {"type": "message_start", "message": {
            "id": "msg_stub_%d" % time.monotonic_ns(), "type": "message", "role": "assistant",
            "model": body.get("model", MODEL), "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}})
        write = re.search(r"write the file (\S+)", human)
        if result is not None:
            if result.get("is_error"):
                self.text(0, "The write was refused." if write else "The tool was refused.")
            else:
                self.text(0, "The file is written." if write else "The command ran.")
            stop = "end_turn"
        elif write:
            path = os.path.join(workdir(body), write.group(1))
            self.tool(0, "Write", {"file_path": path, "content": "written by the stub\n"})
            stop = "tool_use"
        elif "run the command" in human:
            self.tool(0, "Bash", {"command": "echo stub-ran", "description": "Print a word"})
            stop = "tool_use"
        else:
            first = (human.split() or ["nothing"])[0]
            pieces = 20 if "slowly" in human else 1
            self.text(0, "Hello from the stub model (%s)." % first, pieces)
            stop = "end_turn"
        self.event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": 12}})
        self.event("message_stop", {"type": "message_stop"})

    def text(self, index, text, pieces=1):
        self.event("content_block_start", {"type": "content_block_start", "index": index,
                                           "content_block": {"type": "text", "text": ""}})
        size = max(1, -(-len(text) // pieces))
        for i in range(0, len(text), size):
            self.event("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": {"type": "text_delta",
                                                         "text": text[i:i + size]}})
            if pieces > 1:
                time.sleep(0.15)
        self.event("content_block_stop", {"type": "content_block_stop", "index": index})

    def tool(self, index, name, tool_input):
        self.event("content_block_start", {"type": "content_block_start", "index": index,
                                           "content_block": {"type": "tool_use",
                                                             "id": "toolu_stub_%d" % time.monotonic_ns(),
                                                             "name": name, "input": {}}})
        self.event("content_block_delta", {"type": "content_block_delta", "index": index,
                                           "delta": {"type": "input_json_delta",
                                                     "partial_json": json.dumps(tool_input)}})
        self.event("content_block_stop", {"type": "content_block_stop", "index": index})

    def event(self, name, data):
        self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())
        self.wfile.flush()


def loopback_up():
    """Brings `lo` up (SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP), as
    `ip link set lo up` would, without needing iproute2."""
    import fcntl
    import socket
    import struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
    s.close()


def main():
    args = sys.argv[1:]
    if args and args[0] == "--lo-up":
        loopback_up()
        args = args[1:]
    port_file = args[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.log_path = port_file + ".log"
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
