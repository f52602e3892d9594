#!/usr/bin/env python3
"""A grove client written only from ipc-schema/ (README.md, schema.json,
vectors/): the proof that a third party can talk to grove without the Rust
sources.

Usage: grove_peer.py WORKSPACE [--schema-dir DIR]

Against the primary of WORKSPACE it checks the RPC contract (ping, hello,
task writes, idempotent retries, every error path), the task lifecycle
(cancel, pause, resume, retry, relaunch, purge, forced delete, supervisor
reports), session.create, the event stream (SUB, seq order, repair from the events table)
the tasks-table snapshot, the encoding's refusals and their order,
and the golden vectors. The task checks use the default `shell` engine and
look at the agents' process groups in /proc (Linux). It prints a
line per check and a final `N passed, M failed`; the exit status is non-zero
when anything failed.

Requires: pip install pyzmq msgpack
"""

import argparse
import json
import os
import sqlite3
import sys
import time
import traceback
import uuid
from pathlib import Path

try:
    import msgpack
    import zmq
except ImportError as e:  # pragma: no cover - environment problem
    print(f"grove_peer: {e}; run `pip install pyzmq msgpack`", file=sys.stderr)
    sys.exit(2)

TIMEOUT_S = 10.0
PEER_NAME = "grove-peer-" + str(uuid.uuid4())


class CheckFailed(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def unpack(b):
    return msgpack.unpackb(b, raw=False)


def pack(v):
    return msgpack.packb(v, use_bin_type=True)


# ---------------------------------------------------------------------------
# schema.json, as described in ipc-schema/README.md §7.


class Schema:
    def __init__(self, directory):
        self.dir = Path(directory)
        with open(self.dir / "schema.json") as f:
            self.doc = json.load(f)

    def names(self, list_key):
        return [e["name"] for e in self.doc[list_key]]

    def enum_values(self, enum):
        return self.names(self.doc["enums"][enum])

    def shape_fields(self, shape):
        if "record" in shape:
            return self.doc["records"][shape["record"]]["fields"]
        return shape["fields"]

    def variant_fields(self, table, name):
        entry = self.doc[table].get(name)
        if entry is None:
            return None
        if table == "methods":
            return self.shape_fields(entry["params"])
        return self.shape_fields(entry)

    def validate(self, ty, v, path="value"):
        """Checks a decoded value against a schema type. Unknown keys are
        allowed (README §3); required fields must be present."""
        ints = {
            "u8": (0, 2**8 - 1),
            "u32": (0, 2**32 - 1),
            "u64": (0, 2**64 - 1),
            "i32": (-(2**31), 2**31 - 1),
            "i64": (-(2**63), 2**63 - 1),
        }
        if ty == "string":
            check(isinstance(v, str), f"{path}: expected string, got {v!r}")
        elif ty == "bool":
            check(isinstance(v, bool), f"{path}: expected bool, got {v!r}")
        elif ty == "f64":
            check(
                isinstance(v, (int, float)) and not isinstance(v, bool),
                f"{path}: expected f64, got {v!r}",
            )
        elif ty in ints:
            lo, hi = ints[ty]
            check(
                isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
                f"{path}: expected {ty}, got {v!r}",
            )
        elif ty.startswith("list<"):
            check(isinstance(v, list), f"{path}: expected {ty}, got {v!r}")
            for i, item in enumerate(v):
                self.validate(ty[5:-1], item, f"{path}[{i}]")
        elif ty.startswith("map<"):
            check(isinstance(v, dict), f"{path}: expected {ty}, got {v!r}")
            for k, item in v.items():
                check(isinstance(k, str), f"{path}: map keys are strings, got {k!r}")
                self.validate(ty[4:-1], item, f"{path}[{k!r}]")
        elif ty.startswith("enum<"):
            check(v in self.enum_values(ty[5:-1]), f"{path}: {v!r} is not a {ty}")
        elif ty.startswith("record<"):
            self.validate_fields(self.doc["records"][ty[7:-1]]["fields"], v, path)
        elif ty.startswith("variant<"):
            table = ty[8:-1]
            check(
                isinstance(v, dict) and len(v) == 1,
                f"{path}: a variant is a one-key map, got {v!r}",
            )
            (name, body), = v.items()
            fields = self.variant_fields(table, name)
            check(fields is not None, f"{path}: {name!r} is not in {table}")
            self.validate_fields(fields, body, f"{path}.{name}")
        else:
            raise CheckFailed(f"{path}: unknown schema type {ty}")

    def validate_fields(self, fields, v, path):
        check(isinstance(v, dict), f"{path}: expected a map, got {v!r}")
        for f in fields:
            p = f"{path}.{f['name']}"
            if f["name"] not in v:
                check(not f["required"], f"{p}: required field missing")
                continue
            value = v[f["name"]]
            if value is None:
                check(f["nullable"], f"{p}: nil but not nullable")
            else:
                self.validate(f["type"], value, p)


# ---------------------------------------------------------------------------
# The client.


class Peer:
    def __init__(self, workspace, schema):
        self.ws = Path(workspace)
        self.schema = schema
        self.version = schema.doc["protocol_version"]
        with open(self.ws / ".grove" / "primary.json") as f:
            self.record = json.load(f)
        self.epoch_seen = self.record["epoch"]
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(self.record["rpc"])
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.record["pub"])
        self.poller = zmq.Poller()
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.events = []  # (topic, Event) in arrival order
        self.replies = []  # replies received but not yet claimed
        self.expected = []  # (topic, data body) each fresh write must publish
        self.member = {
            "instance_id": PEER_NAME,
            "pid": os.getpid(),
            "kind": "python-peer",
            "started_at": int(time.time() * 1000),
        }

    def close(self):
        self.dealer.close(0)
        self.sub.close(0)
        self.ctx.term()

    # -- sockets --

    def _on_event(self, frames):
        check(len(frames) == 2, f"a PUB message has 2 frames, got {len(frames)}")
        topic = frames[0].decode()
        event = unpack(frames[1])
        self.schema.validate("record<Event>", event, f"event {topic}")
        check(
            list(event["data"]) == [topic],
            f"the data key of an event equals its topic frame: {topic} vs {event['data']}",
        )
        self.events.append((topic, event))

    def pump(self, seconds):
        """Receives whatever arrives for `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for sock, _ in self.poller.poll(int(left * 1000) + 1):
                if sock is self.sub:
                    self._on_event(self.sub.recv_multipart())
                else:
                    self._on_reply(self.dealer.recv_multipart())

    def _on_reply(self, frames):
        check(len(frames) == 1, f"a DEALER reply is one frame, got {len(frames)}")
        reply = unpack(frames[0])
        self.schema.validate("record<Reply>", reply, "reply")
        check(reply["v"] == self.version, f"reply v {reply['v']}")
        check(
            (reply.get("ok") is None) != (reply.get("err") is None),
            f"exactly one of ok/err: {reply}",
        )
        self.replies.append(reply)

    def wait_reply(self, rid, accept_older_epoch=False):
        """The reply to request `rid`; replies from an epoch older than one
        seen are ignored (README §5)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for i, r in enumerate(self.replies):
                if r["id"] == rid:
                    del self.replies[i]
                    if r["epoch"] < self.epoch_seen and not accept_older_epoch:
                        break  # ignored
                    self.epoch_seen = max(self.epoch_seen, r["epoch"])
                    return r
            left = deadline - time.monotonic()
            check(left > 0, f"no reply to request {rid!r} within {TIMEOUT_S}s")
            for sock, _ in self.poller.poll(int(left * 1000) + 1):
                if sock is self.sub:
                    self._on_event(self.sub.recv_multipart())
                else:
                    self._on_reply(self.dealer.recv_multipart())

    def request(self, method, params, rid=None, **overrides):
        rid = rid if rid is not None else str(uuid.uuid4())
        req = {
            "v": self.version,
            "id": rid,
            "from": PEER_NAME,
            "epoch_seen": self.epoch_seen,
            "method": {method: params},
        }
        req.update(overrides)
        self.dealer.send(pack(req))
        return self.wait_reply(rid, accept_older_epoch="epoch_seen" in overrides)

    def call(self, method, params, rid=None, fresh=True):
        """A request that must succeed; returns (variant, body)."""
        reply = self.request(method, params, rid)
        check(reply["err"] is None, f"{method} failed: {reply['err']}")
        (variant, body), = reply["ok"].items()
        entry = self.schema.doc["methods"][method]
        want = [entry["reply"]] + entry["other_replies"]
        check(variant in want, f"{method} answers one of {want}, got {variant}")
        if fresh:
            self.expect_event(method, variant, body, params)
        return variant, body

    def expect_event(self, method, variant, body, params):
        if variant == "task":
            created = method in ("task.create", "task.retry")
            topic = "task.created" if created else "task.updated"
            self.expected.append((topic, {"task": body}))
        elif variant == "deleted":
            self.expected.append(("task.deleted", {"id": body["id"]}))
        elif variant == "welcome":
            self.expected.append(
                ("instance.joined", {"member": params, "epoch": body["epoch"]})
            )

    def expect_error(self, reply, code, rid=None):
        check(reply["ok"] is None, f"expected {code}, got ok {reply['ok']}")
        check(
            reply["err"]["code"] == code,
            f"expected {code}, got {reply['err']['code']}: {reply['err']['message']}",
        )
        check(code in self.schema.names("error_codes"), f"{code} is documented")
        if rid is not None:
            check(reply["id"] == rid, f"reply id {reply['id']!r}, expected {rid!r}")

    def raw(self, frames, rid):
        """Sends raw frames; waits for the reply carrying `rid` ("" when the
        request could not be addressed)."""
        # An unaddressed reply can only be matched by order: forget stale ones.
        self.replies = [r for r in self.replies if r["id"] != ""]
        self.dealer.send_multipart(frames)
        return self.wait_reply(rid, accept_older_epoch=True)

    def read_events(self, after):
        """Durable events with seq > after, from the store, read-only."""
        db = self.ws / ".grove" / "grove.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT seq, epoch, at, topic, payload FROM events WHERE seq > ? ORDER BY seq",
                (after,),
            ).fetchall()
        finally:
            conn.close()
        out = []
        for seq, epoch, at, topic, payload in rows:
            data = unpack(payload)
            self.schema.validate("variant<topics>", data, f"events row {seq}")
            check(list(data) == [topic], f"row {seq}: payload key is its topic")
            out.append((topic, {"seq": seq, "epoch": epoch, "at": at, "data": data}))
        return out

    # -- task state, as events tell it --

    def mark(self):
        """A point in time for `wait_task`: what SUB delivered so far and the
        last seq in the store."""
        rows = self.read_events(0)
        return len(self.events), (rows[-1][1]["seq"] if rows else 0)

    def wait_task(self, tid, pred, what, since=(0, 0)):
        """The first task record of `tid` (from task.created/updated) after
        `since` that satisfies `pred`: from SUB, or, if SUB lost it, from the
        events table (README §6)."""
        n, seq = since
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for t, e in self.events[n:]:
                if t in ("task.created", "task.updated"):
                    task = e["data"][t]["task"]
                    if task["id"] == tid and pred(task):
                        return task
            if time.monotonic() > deadline:
                break
            self.pump(0.05)
        for t, e in self.read_events(seq):
            if t in ("task.created", "task.updated"):
                task = e["data"][t]["task"]
                if task["id"] == tid and pred(task):
                    return task
        raise CheckFailed(f"task {tid}: never {what} within {TIMEOUT_S}s")

    def latest_task(self, tid):
        """The last recorded state of a task, from the events table."""
        last = None
        for t, e in self.read_events(0):
            if t in ("task.created", "task.updated") and e["data"][t]["task"]["id"] == tid:
                last = e["data"][t]["task"]
        return last


def group(pgid):
    """States of the live (non-zombie) processes of process group `pgid`,
    from /proc; None where there is no /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    states = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            states.append(fields[0])
    return states


def wait_group(pgid, pred, what):
    """Waits until the states of group `pgid` satisfy `pred` (skipped
    without /proc)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        states = group(pgid)
        if states is None or pred(states):
            return
        check(time.monotonic() < deadline, f"process group {pgid}: not {what}: {states}")
        time.sleep(0.05)


def in_order(peer, received, last):
    """README §6: turns what SUB delivered (in arrival order) into the gap-free
    durable stream after seq `last`, reading every hole from the store:
    duplicates are dropped, a jump in seq or a heartbeat whose last_seq is
    ahead makes us read the missing rows."""
    out = []

    def fill(upto):
        nonlocal last
        for topic, e in peer.read_events(last):
            if e["seq"] > upto:
                break
            out.append((topic, e))
            last = e["seq"]

    for topic, e in received:
        if e["seq"] == 0:
            if topic == "instance.heartbeat":
                ahead = e["data"][topic]["last_seq"]
                if ahead > last:
                    fill(ahead)
            continue
        if e["seq"] <= last:
            continue  # a duplicate (or before our start)
        if e["seq"] > last + 1:
            fill(e["seq"] - 1)
        out.append((topic, e))
        last = e["seq"]
    return out


# ---------------------------------------------------------------------------
# The checks. Each is a method; they run in order and share state.


class Checks:
    def __init__(self, peer, schema):
        self.p = peer
        self.s = schema
        self.gate = None
        self.task = None
        self.create_id = None
        self.create_reply = None
        self.first_seq_seen = None
        self.joined_seq = None
        self.echo_task = None  # completed (env_and_extra_args)
        self.sleeper = None  # cancelled `sleep 5` (cancel_running, relaunch)
        self.sleeper_dep = None  # its dependent
        self.retried = None  # the retry of the sleeper

    def primary_json(self):
        rec = self.p.record
        self.s.validate_fields(
            self.s.doc["files"]["primary.json"]["fields"], rec, "primary.json"
        )
        check(rec["rpc"].startswith("ipc://"), "rpc is an ipc:// endpoint")
        check(rec["pub"].startswith("ipc://"), "pub is an ipc:// endpoint")
        os.kill(rec["pid"], 0)  # raises if the primary's process is gone

    def subscription_is_live(self):
        # A SUB connects asynchronously: wait for a heartbeat so that the
        # events of the writes below are not lost to the slow-joiner effect.
        deadline = time.monotonic() + TIMEOUT_S
        while not any(t == "instance.heartbeat" for t, _ in self.p.events):
            check(time.monotonic() < deadline, "no heartbeat within the timeout")
            self.p.pump(0.05)
        topic, hb = next(e for e in self.p.events if e[0] == "instance.heartbeat")
        check(not self.s.doc["topics"][topic]["durable"], "heartbeats are transient")
        check(hb["seq"] == 0, f"a transient event has seq 0, got {hb['seq']}")
        check(hb["epoch"] == self.p.record["epoch"], "heartbeat epoch")
        body = hb["data"][topic]
        check(body["instance_id"] == self.p.record["instance_id"], "heartbeat sender")
        self.first_seq_seen = body["last_seq"]

    def ping(self):
        _, info = self.p.call("ping", {}, fresh=False)
        rec = self.p.record
        check(info["instance_id"] == rec["instance_id"], "pong instance_id")
        check(info["pid"] == rec["pid"], "pong pid")
        check(info["epoch"] == rec["epoch"], "pong epoch")
        check(info["rpc_endpoint"] == rec["rpc"], "pong rpc_endpoint")
        check(info["pub_endpoint"] == rec["pub"], "pong pub_endpoint")

    def req_socket_ping(self):
        req = self.p.ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        try:
            req.connect(self.p.record["rpc"])
            rid = str(uuid.uuid4())
            req.send(
                pack(
                    {
                        "v": self.p.version,
                        "id": rid,
                        "from": PEER_NAME,
                        "epoch_seen": self.p.epoch_seen,
                        "method": {"ping": {}},
                    }
                )
            )
            check(req.poll(int(TIMEOUT_S * 1000)), "REQ: no reply")
            reply = unpack(req.recv())
            self.s.validate("record<Reply>", reply, "reply")
            check(reply["id"] == rid, "REQ: reply id")
            check("pong" in (reply["ok"] or {}), f"REQ: {reply}")
        finally:
            req.close(0)

    def hello(self):
        _, welcome = self.p.call("hello", self.p.member)
        check(welcome["epoch"] == self.p.record["epoch"], "welcome epoch")
        check(welcome["last_seq"] > 0, "welcome last_seq")
        self.joined_seq = welcome["last_seq"]

    def task_create(self):
        # The gate never completes during this run, so the task that depends
        # on it stays pending (and writable) whatever the orchestrator does.
        _, gate = self.p.call(
            "task.create", {"prompt": "sleep 300", "tags": ["grove-peer"]}
        )
        self.gate = gate
        check(gate["status"] in ("queued", "running"), f"gate status {gate['status']}")
        check(gate["engine"] == "shell", "the default engine is shell")
        check(gate["attempt"] == 1, "attempt defaults to 1")
        check(gate["extra_args"] == [] and gate["env"] == {}, "extra_args and env default to empty")
        check(gate["run_id"] is None, "no run before the orchestrator starts it")
        self.create_id = str(uuid.uuid4())
        params = {
            "prompt": "echo from the python peer",
            "dependencies": [gate["id"]],
            "tags": ["grove-peer", "python"],
            "priority": -3,
            "timeout_ms": 60000,
            "session_id": "peer-session",
        }
        self.create_params = params
        reply = self.p.request("task.create", params, rid=self.create_id)
        check(reply["err"] is None, f"task.create failed: {reply['err']}")
        self.create_reply = reply
        task = reply["ok"]["task"]
        self.p.expect_event("task.create", "task", task, params)
        self.task = task
        check(task["status"] == "pending", f"a task with a running dependency is pending, got {task['status']}")
        check(task["dependencies"] == [gate["id"]], "dependencies echoed")
        check(task["tags"] == ["grove-peer", "python"], "tags echoed")
        check(task["priority"] == -3, "priority echoed (negative)")
        check(task["timeout_ms"] == 60000, "timeout echoed")
        check(task["session_id"] == "peer-session", "session echoed")
        check(task["model"] is None and task["progress_pct"] is None, "unset fields are nil")

    def retry_same_id(self):
        reply = self.p.request("task.create", self.create_params, rid=self.create_id)
        check(reply["err"] is None, f"retry failed: {reply['err']}")
        check(reply["ok"]["task"]["id"] == self.task["id"], "a retry returns the same task id")
        check(reply["ok"] == self.create_reply["ok"], "a retry returns the recorded reply")
        # The same id with different params is refused, not answered with
        # the first reply (README §4, Idempotency).
        other = dict(self.create_params, prompt="something else")
        reply = self.p.request("task.create", other, rid=self.create_id)
        self.p.expect_error(reply, "idempotency_conflict", self.create_id)

    def resend_in_flight(self):
        """Resending a write before its reply came is safe: it is applied
        once and both attempts get the same answer (README §4)."""
        rid = str(uuid.uuid4())
        params = {
            "prompt": "echo resent while in flight",
            "dependencies": [self.gate["id"]],
            "tags": ["grove-peer"],
        }
        frame = pack(
            {
                "v": self.p.version,
                "id": rid,
                "from": PEER_NAME,
                "epoch_seen": self.p.epoch_seen,
                "method": {"task.create": params},
            }
        )
        self.p.dealer.send(frame)
        self.p.dealer.send(frame)
        first = self.p.wait_reply(rid)
        second = self.p.wait_reply(rid)
        check(first["err"] is None, f"task.create failed: {first['err']}")
        check(first["ok"] == second["ok"], f"two attempts, one answer: {first} vs {second}")
        task = first["ok"]["task"]
        self.p.expect_event("task.create", "task", task, params)
        created = [
            e for t, e in self.p.read_events(0)
            if t == "task.created" and e["data"][t]["task"]["id"] == task["id"]
        ]
        check(len(created) == 1, f"applied once, got {len(created)} task.created")

    def tasks_table_snapshot(self):
        """The tasks table read with MAX(seq) in one read transaction is the
        state the events up to that seq describe (README §6)."""
        db = self.p.ws / ".grove" / "grove.db"
        cols = [c["name"] for c in self.s.doc["files"]["tasks_table"]["columns"]]
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5, isolation_level=None)
        try:
            conn.execute("BEGIN")
            row = conn.execute(
                f"SELECT {', '.join(cols)} FROM tasks WHERE id = ?", (self.task["id"],)
            ).fetchone()
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            conn.execute("COMMIT")
        finally:
            conn.close()
        check(row is not None, "our task has a row")
        task = dict(zip(cols, row))
        for k in ("dependencies", "tags", "extra_args", "env"):
            task[k] = json.loads(task[k])
        # SQLite has no booleans: a bool field is an INTEGER 0 or 1.
        for f in self.s.doc["records"]["TaskRecord"]["fields"]:
            if f["type"] == "bool":
                task[f["name"]] = bool(task[f["name"]])
        # The worktree object is JSON text too, NULL when the task has none.
        if task.get("worktree") is not None:
            task["worktree"] = json.loads(task["worktree"])
        self.s.validate("record<TaskRecord>", task, "tasks row")
        last = None
        for t, e in self.p.read_events(0):
            if e["seq"] > seq:
                break
            if t in ("task.created", "task.updated") and e["data"][t]["task"]["id"] == task["id"]:
                last = e["data"][t]["task"]
        check(last == task, f"the row is the last event's record: {task} vs {last}")

    def set_progress(self):
        tid = self.task["id"]
        _, t = self.p.call("task.set_progress", {"id": tid, "percent": 42, "text": "halfway"})
        check(t["progress_pct"] == 42 and t["progress_text"] == "halfway", f"progress {t}")
        check(t["id"] == tid, "same task")
        # nil / absent leaves a value unchanged.
        _, t = self.p.call("task.set_progress", {"id": tid, "percent": None, "text": "more"})
        check(t["progress_pct"] == 42 and t["progress_text"] == "more", f"progress {t}")
        _, t = self.p.call("task.set_progress", {"id": tid, "percent": 43})
        check(t["progress_pct"] == 43 and t["progress_text"] == "more", f"progress {t}")
        self.task = t

    def invalid_params(self):
        rid = str(uuid.uuid4())
        r = self.p.request("task.set_progress", {"id": self.task["id"], "percent": 101}, rid=rid)
        self.p.expect_error(r, "invalid_params", rid)
        # A refusal decided by the method is recorded too: resending the
        # same request gets it again...
        r = self.p.request("task.set_progress", {"id": self.task["id"], "percent": 101}, rid=rid)
        self.p.expect_error(r, "invalid_params", rid)
        # ...and another request under that id is refused, not answered.
        r = self.p.request("task.set_progress", {"id": self.task["id"], "percent": 5}, rid=rid)
        self.p.expect_error(r, "idempotency_conflict", rid)
        r = self.p.request("task.create", {"prompt": "   "})
        self.p.expect_error(r, "invalid_params")
        r = self.p.request("task.create", {"prompt": "x", "timeout_ms": 0})
        self.p.expect_error(r, "invalid_params")
        r = self.p.request("task.create", {"prompt": "x", "dependencies": ["f" * 32]})
        self.p.expect_error(r, "invalid_params")
        r = self.p.request("hello", dict(self.p.member, kind=""))
        self.p.expect_error(r, "invalid_params")

    def not_found(self):
        r = self.p.request("task.set_progress", {"id": "0" * 32, "percent": 1})
        self.p.expect_error(r, "not_found")
        r = self.p.request("task.delete", {"id": "0" * 32})
        self.p.expect_error(r, "not_found")

    def conflict(self):
        r = self.p.request("task.update_status", {"id": self.task["id"], "status": "completed"})
        self.p.expect_error(r, "conflict")

    def malformed(self):
        r = self.p.raw([b"\xc1\xff not msgpack"], "")
        self.p.expect_error(r, "bad_request", "")
        r = self.p.raw([pack("a string, not a map")], "")
        self.p.expect_error(r, "bad_request", "")
        r = self.p.raw([b""], "")
        self.p.expect_error(r, "bad_request", "")
        # Readable id, missing method: the id is echoed.
        rid = str(uuid.uuid4())
        r = self.p.raw([pack({"v": 1, "id": rid, "from": PEER_NAME, "epoch_seen": 0})], rid)
        self.p.expect_error(r, "bad_request", rid)
        # Known method, params of the wrong type.
        r = self.p.request("task.create", {"prompt": 5})
        self.p.expect_error(r, "bad_request")
        # A required param missing.
        r = self.p.request("task.update_status", {"id": self.task["id"]})
        self.p.expect_error(r, "bad_request")
        # `method` not a map: even the id is not read back (README §4).
        r = self.p.raw([pack({"v": 1, "id": rid, "from": "p", "epoch_seen": 0, "method": "ping"})], "")
        self.p.expect_error(r, "bad_request", "")

    def wire_forms(self):
        """Only the encoding of README §3: a record as an array, an enum
        value as a number or a string as bin is refused."""
        rid = str(uuid.uuid4())
        r = self.p.raw([pack([1, rid, PEER_NAME, 0, {"ping": {}}])], "")
        self.p.expect_error(r, "bad_request", "")
        m = self.p.member
        positional = [m["instance_id"], m["pid"], m["kind"], m["started_at"]]
        r = self.p.request("hello", positional, rid=rid)
        self.p.expect_error(r, "bad_request", rid)
        r = self.p.request("task.update_status", {"id": self.task["id"], "status": 4})
        self.p.expect_error(r, "bad_request")
        r = self.p.request("task.set_progress", {"id": self.task["id"], "text": b"as bin"})
        self.p.expect_error(r, "bad_request")

    def unknown_method(self):
        rid = str(uuid.uuid4())
        r = self.p.request("task.frobnicate", {"how": "hard"}, rid=rid)
        self.p.expect_error(r, "unknown_method", rid)

    def wrong_shape(self):
        req = pack(
            {
                "v": 1,
                "id": str(uuid.uuid4()),
                "from": PEER_NAME,
                "epoch_seen": 0,
                "method": {"ping": {}},
            }
        )
        r = self.p.raw([b"a", b"b", req], "")
        self.p.expect_error(r, "bad_request", "")
        r = self.p.raw([b"not-empty", req], "")
        self.p.expect_error(r, "bad_request", "")
        # Empty delimiter + request is the REQ shape: accepted from a DEALER
        # too; the reply then carries the delimiter back.
        rid = str(uuid.uuid4())
        self.p.dealer.send_multipart(
            [b"", pack({"v": 1, "id": rid, "from": PEER_NAME, "epoch_seen": 0, "method": {"ping": {}}})]
        )
        check(self.p.dealer.poll(int(TIMEOUT_S * 1000)), "no reply to the REQ-shaped request")
        frames = self.p.dealer.recv_multipart()
        check(len(frames) == 2 and frames[0] == b"", f"REQ-shaped reply frames {frames!r}")
        reply = unpack(frames[1])
        check(reply["id"] == rid and "pong" in reply["ok"], f"REQ-shaped reply {reply}")

    def frame_limit(self):
        limit = self.s.doc["max_frame_bytes"]

        def ping_of_size(size, rid):
            base = {"v": 1, "id": rid, "from": PEER_NAME, "epoch_seen": 0, "method": {"ping": {}}, "x_pad": ""}
            n = size - len(pack(base))
            for pad in range(max(n - 8, 0), n + 1):
                frame = pack(dict(base, x_pad="p" * pad))
                if len(frame) == size:
                    return frame
            raise CheckFailed(f"cannot build a frame of {size} bytes")

        # Not decoded, but its id is read so that the answer reaches us.
        r = self.p.raw([ping_of_size(limit + 1, "too-big")], "too-big")
        self.p.expect_error(r, "too_large", "too-big")
        # Exactly at the limit is decoded (and the unknown key is ignored).
        r = self.p.raw([ping_of_size(limit, "at-limit")], "at-limit")
        check(r["err"] is None and "pong" in r["ok"], f"a {limit}-byte frame is served: {r}")

    def stale_epoch(self):
        rid = str(uuid.uuid4())
        # Behind the gate, so it stays pending and can be deleted without force.
        params = {
            "prompt": "echo created after a stale_epoch refusal",
            "dependencies": [self.gate["id"]],
            "tags": ["grove-peer"],
        }
        future = self.p.epoch_seen + 1000
        r = self.p.request("task.create", params, rid=rid, epoch_seen=future)
        self.p.expect_error(r, "stale_epoch", rid)
        check(r["epoch"] < future, "the stale primary's reply carries its older epoch")
        # Nothing was applied or recorded: the same id now creates the task.
        _, task = self.p.call("task.create", params, rid=rid)
        self.p.call("task.delete", {"id": task["id"]})

    def unsupported_version(self):
        rid = str(uuid.uuid4())
        r = self.p.request("ping", {}, rid=rid, v=self.p.version + 1)
        self.p.expect_error(r, "unsupported_version", rid)

    def refusal_order(self):
        """When several checks fail, the first in README §4's order answers:
        the version before the method and its params, the id before the
        epoch."""
        rid = str(uuid.uuid4())
        r = self.p.request("task.frobnicate", {"x": 1}, rid=rid, v=self.p.version + 1)
        self.p.expect_error(r, "unsupported_version", rid)
        rid = str(uuid.uuid4())
        r = self.p.request("task.create", {"prompt": 5}, rid=rid, v=self.p.version + 1)
        self.p.expect_error(r, "unsupported_version", rid)
        r = self.p.request("ping", {}, rid="", epoch_seen=self.p.epoch_seen + 1000)
        self.p.expect_error(r, "bad_request", "")

    def request_ids(self):
        limit = self.s.doc["max_request_id_len"]
        r = self.p.request("ping", {}, rid="")
        self.p.expect_error(r, "bad_request", "")
        r = self.p.request("ping", {}, rid="i" * (limit + 1))
        self.p.expect_error(r, "bad_request")
        r = self.p.request("ping", {}, rid="i" * limit)
        check(r["err"] is None, f"a {limit}-byte id is accepted: {r}")

    def engine_checks(self):
        """task.create checks the engine, persona and work dir on the
        primary (README §4, Tasks)."""
        for params in (
            {"prompt": "x", "engine": "no-such-engine"},
            {"prompt": "x", "persona": "no-such-persona"},
            {"prompt": "x", "work_dir": "/no/such/grove/peer/dir"},
            {"prompt": "x", "work_dir": "no-such-subdir"},
            {"prompt": "x", "model": "some-model"},  # shell takes no model
        ):
            r = self.p.request("task.create", params)
            self.p.expect_error(r, "invalid_params")

    def session_create(self):
        """session.create records a session once: creating it again is a
        no-op (done, no second session.created); a bad id or a relative cwd
        is invalid_params (README §4, Sessions)."""
        sid = "grove-peer-" + str(uuid.uuid4())
        cwd = str(self.p.ws.resolve())
        since = self.p.mark()
        for params in ({"id": sid, "cwd": cwd}, {"id": sid, "cwd": "/elsewhere"}):
            variant, body = self.p.call("session.create", params, fresh=False)
            check(variant == "done" and body == {}, f"session.create answers done: {variant} {body}")
        self.p.expected.append(("session.created", {"id": sid, "cwd": cwd}))
        bad_ids = []
        for params in (
            {"id": "grove-peer-" + str(uuid.uuid4()), "cwd": "relative/dir"},
            {"id": "", "cwd": cwd},
            {"id": "s" * 129, "cwd": cwd},
        ):
            r = self.p.request("session.create", params)
            self.p.expect_error(r, "invalid_params")
            bad_ids.append(params["id"])

        def created(events):
            return [
                e["data"][t]
                for t, e in events
                if t == "session.created" and e["data"][t]["id"] in [sid] + bad_ids
            ]

        # Writes are answered after COMMIT: the table is authoritative now.
        rows = created(self.p.read_events(since[1]))
        check(rows == [{"id": sid, "cwd": cwd}], f"one session.created, first cwd kept: {rows}")
        deadline = time.monotonic() + TIMEOUT_S
        while not created(self.p.events[since[0]:]) and time.monotonic() < deadline:
            self.p.pump(0.05)
        self.p.pump(0.2)
        on_sub = created(self.p.events[since[0]:])
        # (SUB may drop, README §2: events_arrive repairs from the table.)
        check(on_sub in (rows, []), f"SUB never delivers it twice: {on_sub}")

    def pause_resume_waiting(self):
        """A task that has not started: pause holds it, resume puts it back
        where it was (pending: its gate is still running)."""
        tid = self.task["id"]
        r = self.p.request("task.resume", {"id": tid})
        self.p.expect_error(r, "conflict")
        _, t = self.p.call("task.pause", {"id": tid})
        check(t["status"] == "paused" and t["run_id"] is None, f"paused {t}")
        r = self.p.request("task.pause", {"id": tid})
        self.p.expect_error(r, "conflict")
        prompt = t["prompt"]
        # A shell task's prompt is a command line: instructions appended to
        # it would run as commands, so they are refused, and it stays paused.
        r = self.p.request("task.resume", {"id": tid, "instructions": "and say bye"})
        self.p.expect_error(r, "invalid_params")
        _, t = self.p.call("task.resume", {"id": tid})
        check(t["status"] == "pending", f"a resumed waiting task is pending again: {t}")
        check(t["prompt"] == prompt, f"the prompt is as it was: {t['prompt']!r}")
        check(t["run_id"] is None, "never started")
        self.task = t

    def env_and_extra_args(self):
        """extra_args go after the engine's command (sh -c PROMPT ARGS...: $0,
        $1), env into the agent's environment; the log file holds the output."""
        params = {
            "prompt": 'echo "env=$GROVE_PEER_VAR args=$0,$1"',
            "extra_args": ["peer-arg0", "peer arg1"],
            "env": {"GROVE_PEER_VAR": "from python"},
            "tags": ["grove-peer"],
        }
        since = self.p.mark()
        _, t = self.p.call("task.create", params)
        check(t["extra_args"] == params["extra_args"], f"extra_args echoed: {t['extra_args']}")
        check(t["env"] == params["env"], f"env echoed: {t['env']}")
        done = self.p.wait_task(t["id"], lambda x: x["status"] in ("completed", "failed"), "finished", since)
        check(done["status"] == "completed" and done["exit_code"] == 0, f"completed: {done}")
        check(done["run_id"] is not None and done["started_at"] is not None, f"it ran: {done}")
        log = self.p.ws / ".grove" / "logs" / f"{t['id']}.log"
        text = log.read_text()
        check("env=from python args=peer-arg0,peer arg1" in text, f"log {log}: {text!r}")
        self.echo_task = done

    def cancel_running(self):
        """pause SIGSTOPs the agent's process group, resume continues it,
        cancel kills it; dependents fail; late supervisor reports are ignored."""
        since = self.p.mark()
        _, x = self.p.call("task.create", {"prompt": "sleep 5", "tags": ["grove-peer"]})
        _, d = self.p.call(
            "task.create", {"prompt": "true", "dependencies": [x["id"]], "tags": ["grove-peer"]}
        )
        check(d["status"] == "pending", f"dependent pending: {d}")
        run = self.p.wait_task(
            x["id"], lambda t: t["status"] == "running" and t["pid"] is not None, "running with a pid", since
        )
        check(run["run_id"] is not None and run["started_at"] is not None, f"a run: {run}")
        pgid = run["pid"]
        wait_group(pgid, lambda st: len(st) > 0, "alive")

        _, t = self.p.call("task.pause", {"id": x["id"]})
        check(t["status"] == "paused" and t["run_id"] == run["run_id"], f"paused, same run: {t}")
        wait_group(pgid, lambda st: st and all(s in "Tt" for s in st), "stopped (SIGSTOP)")
        _, t = self.p.call("task.resume", {"id": x["id"]})
        check(t["status"] == "running" and t["run_id"] == run["run_id"], f"resumed, same run: {t}")
        wait_group(pgid, lambda st: st and not any(s in "Tt" for s in st), "continued (SIGCONT)")

        since = self.p.mark()
        _, t = self.p.call("task.cancel", {"id": x["id"]})
        check(t["status"] == "cancelled" and t["finished_at"] is not None, f"cancelled: {t}")
        ev = self.p.wait_task(x["id"], lambda t: t["status"] == "cancelled", "cancelled (event)", since)
        check(ev == t, f"the task.updated event carries the reply's record: {ev}")
        dep = self.p.wait_task(d["id"], lambda t: t["status"] == "failed", "failed", since)
        check(dep["failure_reason"] == "dependency_failed", f"dependent: {dep}")
        wait_group(pgid, lambda st: st == [], "gone (the whole group is killed)")
        r = self.p.request("task.cancel", {"id": x["id"]})
        self.p.expect_error(r, "conflict")

        # The supervisor's own report of the killed run: the task has
        # finished already, so it is acknowledged and changes nothing.
        self.p.pump(0.3)
        before = self.p.latest_task(x["id"])
        check(before["status"] == "cancelled", f"still cancelled after the run ended: {before}")
        report = {"id": x["id"], "run_id": run["run_id"], "outcome": "exited", "exit_code": 0}
        _, late = self.p.call("task.finished", report, fresh=False)
        check(late == before, f"a late report changes nothing: {late}")
        self.sleeper, self.sleeper_dep = t, dep

    def finished_is_idempotent(self):
        """task.finished about another run of a live task, or about a task
        that does not exist, is acknowledged and changes nothing."""
        gate = self.p.wait_task(
            self.gate["id"], lambda t: t["status"] == "running" and t["pid"] is not None, "running"
        )
        before = self.p.latest_task(gate["id"])
        check(before["status"] == "running", f"the gate runs: {before}")
        report = {"id": gate["id"], "run_id": "not-" + before["run_id"], "outcome": "exited", "exit_code": 0}
        rid = str(uuid.uuid4())
        variant, t = self.p.call("task.finished", report, rid=rid, fresh=False)
        check(variant == "task" and t == before, f"a report about another run changes nothing: {t}")
        _, t = self.p.call("task.finished", report, fresh=False)
        check(t == before, "and again with a new id")
        self.p.pump(0.2)
        check(self.p.latest_task(gate["id"]) == before, "no event was appended")
        missing = {"id": "0" * 32, "run_id": "r", "outcome": "spawn_error", "message": "x"}
        variant, body = self.p.call("task.finished", missing, fresh=False)
        check(variant == "deleted" and body == {"id": "0" * 32}, f"about a missing task: {variant} {body}")

    def retry(self):
        r = self.p.request("task.retry", {"id": self.task["id"]})
        self.p.expect_error(r, "conflict")  # not finished
        r = self.p.request("task.retry", {"id": "0" * 32})
        self.p.expect_error(r, "not_found")
        old = self.sleeper
        _, y = self.p.call("task.retry", {"id": old["id"]})
        check(y["id"] != old["id"], "a retry is a new task")
        check(y["retry_of"] == old["id"] and y["attempt"] == old["attempt"] + 1, f"linked: {y}")
        check(y["prompt"] == old["prompt"] and y["tags"] == old["tags"], "same spec")
        check(y["status"] in ("queued", "running") and y["run_id"] is None, f"fresh: {y}")
        check(self.p.latest_task(old["id"])["status"] == "cancelled", "the old task is unchanged")
        _, y = self.p.call("task.cancel", {"id": y["id"]})
        self.retried = y

    def relaunch(self):
        r = self.p.request("task.relaunch", {"id": self.task["id"]})
        self.p.expect_error(r, "conflict")  # not finished
        x, d = self.sleeper, self.sleeper_dep
        since = self.p.mark()
        _, t = self.p.call("task.relaunch", {"id": x["id"]})
        check(t["id"] == x["id"] and t["attempt"] == x["attempt"], f"same id and attempt: {t}")
        check(t["status"] == "queued", f"queued again: {t}")
        for f in ("run_id", "exit_code", "failure_reason", "finished_at", "started_at", "pid"):
            check(t[f] is None, f"{f} cleared: {t}")
        # The dependent that failed because of it is rearmed (and records
        # its own task.updated).
        dep = self.p.wait_task(d["id"], lambda t: t["status"] == "pending", "rearmed", since)
        check(dep["failure_reason"] is None and dep["finished_at"] is None, f"rearmed: {dep}")
        self.p.expected.append(("task.updated", {"task": dep}))
        since = self.p.mark()
        _, t = self.p.call("task.cancel", {"id": x["id"]})
        check(t["status"] == "cancelled", f"cancelled again: {t}")
        dep = self.p.wait_task(d["id"], lambda t: t["status"] == "failed", "failed again", since)
        self.sleeper, self.sleeper_dep = t, dep

    def purge(self):
        r = self.p.request("task.purge", {"id": self.gate["id"]})
        self.p.expect_error(r, "conflict")  # running
        for task in (self.echo_task, self.sleeper, self.sleeper_dep, self.retried):
            tid = task["id"]
            _, d = self.p.call("task.purge", {"id": tid})
            check(d == {"id": tid}, f"purged {d}")
            # Idempotent: purging again succeeds, and appends nothing.
            _, d = self.p.call("task.purge", {"id": tid}, fresh=False)
            check(d == {"id": tid}, f"purged twice {d}")
            r = self.p.request("task.cancel", {"id": tid})
            self.p.expect_error(r, "not_found")
        log = self.p.ws / ".grove" / "logs" / f"{self.echo_task['id']}.log"
        check(not log.exists(), f"purge removes the log file {log}")

    def delete_force(self):
        since = self.p.mark()
        _, z = self.p.call("task.create", {"prompt": "sleep 5", "tags": ["grove-peer"]})
        run = self.p.wait_task(
            z["id"], lambda t: t["status"] == "running" and t["pid"] is not None, "running", since
        )
        r = self.p.request("task.delete", {"id": z["id"]})
        self.p.expect_error(r, "conflict")
        r = self.p.request("task.delete", {"id": z["id"], "force": False})
        self.p.expect_error(r, "conflict")
        _, d = self.p.call("task.delete", {"id": z["id"], "force": True})
        check(d == {"id": z["id"]}, f"deleted {d}")
        wait_group(run["pid"], lambda st: st == [], "gone after a forced delete")

    def update_and_delete(self):
        tid = self.task["id"]
        _, t = self.p.call("task.update_status", {"id": tid, "status": "cancelled"})
        check(t["status"] == "cancelled" and t["finished_at"] is not None, f"cancelled {t}")
        r = self.p.request("task.set_progress", {"id": tid, "percent": 50})
        self.p.expect_error(r, "conflict")
        _, d = self.p.call("task.delete", {"id": tid})
        check(d["id"] == tid, "deleted id")
        _, g = self.p.call("task.update_status", {"id": self.gate["id"], "status": "cancelled"})
        check(g["status"] == "cancelled", "gate cancelled")
        self.task = t

    def events_arrive(self):
        """Every write's event arrives on SUB in increasing seq order, and
        SUB agrees with the events table."""
        p = self.p
        # Wait (bounded) for the events of our writes and for a heartbeat
        # that covers them (its last_seq tells whether a tail was lost).
        last = max(e["seq"] for _, e in p.read_events(0))
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            got = [(t, e["data"][t]) for t, e in p.events if e["seq"] > 0]
            hb_ok = any(
                t == "instance.heartbeat" and e["data"][t]["last_seq"] >= last
                for t, e in p.events
            )
            if hb_ok and all(x in got for x in p.expected):
                break
            if time.monotonic() > deadline:
                break  # what SUB lost must be repaired from the table below
            p.pump(0.05)
        for t, e in p.events:
            durable = self.s.doc["topics"][t]["durable"]
            check((e["seq"] > 0) == durable, f"{t}: seq {e['seq']} vs durable {durable}")
        seen = [(t, e) for t, e in p.events if e["seq"] > 0]
        seqs = [e["seq"] for _, e in seen]
        check(seqs == sorted(set(seqs)), f"SUB delivers durable events in increasing seq order: {seqs}")

        floor = self.first_seq_seen
        rows = p.read_events(floor)
        by_seq = {e["seq"]: (t, e) for t, e in rows}
        check(sorted(by_seq) == list(range(floor + 1, floor + 1 + len(rows))),
              f"the events table has no holes after {floor}: {sorted(by_seq)}")
        for t, e in seen:
            if e["seq"] > floor:
                check(by_seq.get(e["seq"]) == (t, e), f"SUB and table agree on seq {e['seq']}: {e}")

        stream = in_order(p, p.events, floor)
        check(stream == rows, "the repaired stream is exactly the events table")
        all_events = [(t, e["data"][t]) for t, e in stream]
        for topic, body in p.expected:
            check((topic, body) in all_events, f"missing event {topic} {body}")
        created = [b for t, b in all_events if t == "task.created" and b["task"]["id"] == self.task["id"]]
        check(len(created) == 1, f"the retried create was applied once, got {len(created)} task.created")
        joined = [e for t, e in stream if t == "instance.joined"
                  and e["data"][t]["member"]["instance_id"] == PEER_NAME]
        check(len(joined) == 1 and joined[0]["seq"] == self.joined_seq,
              "welcome.last_seq is the seq of our instance.joined")
        on_sub = len([1 for s in seqs if s > floor])
        print(f"  (events since seq {floor}: {on_sub} durable on SUB, {len(rows)} in the table)")

    def gap_repair(self):
        """README §6 on a lossy copy of what SUB delivered: every other
        durable event dropped, and the tail lost (only heartbeats remain)."""
        p = self.p
        floor = self.first_seq_seen
        rows = p.read_events(floor)
        durable = [i for i, (_, e) in enumerate(p.events) if e["seq"] > 0]
        check(len(durable) >= 4, "enough events to drop some")
        tail_from = durable[len(durable) // 2]
        lossy = [
            (t, e)
            for i, (t, e) in enumerate(p.events)
            if e["seq"] == 0 or (i < tail_from and durable.index(i) % 2 == 0)
        ]
        check(len([1 for _, e in lossy if e["seq"] > 0]) < len(durable), "events were dropped")
        check(in_order(p, lossy, floor) == rows, "gaps and a lost tail are repaired from the table")

    def read_only_store(self):
        db = self.p.ws / ".grove" / "grove.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            try:
                conn.execute("INSERT INTO events (epoch, at, topic, payload) VALUES (0, 0, 'x', x'80')")
                conn.commit()
            except sqlite3.OperationalError as e:
                check("readonly" in str(e).replace(" ", "").lower(), f"unexpected error {e}")
            else:
                raise CheckFailed("a mode=ro connection could write")
        finally:
            conn.close()

    def golden_vectors(self):
        vdir = self.s.dir / "vectors"
        files = sorted(vdir.glob("*.json"))
        check(len(files) > 0, "there are vectors")
        kinds = {
            "Request": "record<Request>",
            "Reply": "record<Reply>",
            "Event": "record<Event>",
            "EventData": "variant<topics>",
        }
        for path in files:
            with open(path) as f:
                v = json.load(f)
            raw = bytes.fromhex(v["msgpack_hex"])
            value = unpack(raw)
            check(value == v["value"], f"{path.name}: decodes to its JSON view")
            check(pack(value) == raw, f"{path.name}: msgpack re-encodes to the same bytes")
            self.s.validate(kinds[v["kind"]], value, path.name)
            if "topic" in v:
                data = value["data"] if v["kind"] == "Event" else value
                check(list(data) == [v["topic"]], f"{path.name}: data key is the topic")

    def still_serving(self):
        self.p.call("ping", {}, fresh=False)


ORDER = [
    "primary_json",
    "subscription_is_live",
    "ping",
    "req_socket_ping",
    "hello",
    "task_create",
    "retry_same_id",
    "resend_in_flight",
    "set_progress",
    "tasks_table_snapshot",
    "invalid_params",
    "not_found",
    "conflict",
    "engine_checks",
    "session_create",
    "pause_resume_waiting",
    "env_and_extra_args",
    "cancel_running",
    "finished_is_idempotent",
    "retry",
    "relaunch",
    "purge",
    "delete_force",
    "malformed",
    "wire_forms",
    "unknown_method",
    "wrong_shape",
    "frame_limit",
    "stale_epoch",
    "unsupported_version",
    "refusal_order",
    "request_ids",
    "update_and_delete",
    "events_arrive",
    "gap_repair",
    "read_only_store",
    "golden_vectors",
    "still_serving",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace")
    ap.add_argument(
        "--schema-dir",
        default=str(Path(__file__).resolve().parents[2] / "ipc-schema"),
    )
    args = ap.parse_args()
    schema = Schema(args.schema_dir)
    peer = Peer(args.workspace, schema)
    checks = Checks(peer, schema)
    passed = failed = 0
    try:
        for name in ORDER:
            started = time.monotonic()
            try:
                getattr(checks, name)()
            except Exception as e:  # noqa: BLE001 - report every failure
                failed += 1
                print(f"FAIL {name}: {e}")
                if not isinstance(e, CheckFailed):
                    traceback.print_exc(file=sys.stdout)
            else:
                passed += 1
                print(f"ok   {name} ({(time.monotonic() - started) * 1000:.0f} ms)")
            sys.stdout.flush()
    finally:
        peer.close()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
