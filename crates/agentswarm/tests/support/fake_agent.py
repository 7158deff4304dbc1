"""A stand-in outside coding agent for the tests of `acp` and `command` agents.

    python3 fake_agent.py acp --speaks anthropic|openai_chat
    python3 fake_agent.py command --speaks anthropic|openai_chat --prompt TEXT

It behaves as the real ones do where AgentSwarm can see it: it talks to its
model endpoint ($FAKE_AGENT_URL, key $FAKE_AGENT_KEY) over HTTP, in Anthropic
Messages or Chat Completions, always streamed (server-sent events, parsed
strictly: a stream without its end event is an error); it declares its own
tools (`write_file`, `run`), runs the tool calls the model asks for in its
working directory, and stops when the model answers without one. In `acp`
mode it speaks ACP v1 (JSON-RPC lines on stdio): before each tool call it
sends a `tool_call` update and asks `session/request_permission`, and runs
the call only if allowed. Diagnostics go to stderr.
"""

import json
import os
import time
import subprocess
import sys
import urllib.request

URL = os.environ.get("FAKE_AGENT_URL", "")
KEY = os.environ.get("FAKE_AGENT_KEY", "")

WRITE = {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
         "required": ["path", "content"]}
RUN = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}


def tools(anthropic):
    if anthropic:
        return [{"name": "write_file", "description": "Write a file.", "input_schema": WRITE},
                {"name": "run", "description": "Run a shell command.", "input_schema": RUN}]
    return [{"type": "function", "function": {"name": "write_file", "description": "Write a file.", "parameters": WRITE}},
            {"type": "function", "function": {"name": "run", "description": "Run a shell command.", "parameters": RUN}}]


def post(path, body, headers):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            if "text/event-stream" not in r.headers.get("content-type", ""):
                raise SystemExit("fake-agent: a streamed request got no event stream")
            return r.read().decode()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"fake-agent: the model endpoint answered {e.code}: {e.read().decode()}")


def events(text):
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def ask(anthropic, conversation):
    """One streamed model call: (text, [(id, name, input)])."""
    if anthropic:
        body = {"model": "fake-model", "max_tokens": 1024, "stream": True, "system": "You are a fake agent.",
                "tools": tools(True), "messages": conversation}
        evs = events(post("/v1/messages", body, {"x-api-key": KEY, "anthropic-version": "2023-06-01"}))
        blocks, stopped = [], False
        for e in evs:
            if e["type"] == "content_block_start":
                b = e["content_block"]
                blocks.append({"type": b["type"], "id": b.get("id"), "name": b.get("name"), "acc": ""})
            elif e["type"] == "content_block_delta":
                d = e["delta"]
                blocks[e["index"]]["acc"] += d.get("text", d.get("partial_json", ""))
            elif e["type"] == "message_stop":
                stopped = True
        if not stopped:
            raise SystemExit("fake-agent: the stream ended without message_stop")
        text = "".join(b["acc"] for b in blocks if b["type"] == "text")
        calls = [(b["id"], b["name"], json.loads(b["acc"])) for b in blocks if b["type"] == "tool_use"]
        return text, calls
    body = {"model": "fake-model", "stream": True, "stream_options": {"include_usage": True},
            "tools": tools(False), "messages": [{"role": "system", "content": "You are a fake agent."}] + conversation}
    raw = post("/v1/chat/completions", body, {"authorization": "Bearer " + KEY})
    if "data: [DONE]" not in raw:
        raise SystemExit("fake-agent: the stream ended without [DONE]")
    text, calls, finished = "", [], False
    for e in events(raw):
        for c in e["choices"]:
            text += c["delta"].get("content") or ""
            for t in c["delta"].get("tool_calls") or []:
                calls.append((t["id"], t["function"]["name"], json.loads(t["function"]["arguments"])))
            finished = finished or c.get("finish_reason") is not None
    if not finished:
        raise SystemExit("fake-agent: the stream had no finish_reason")
    return text, calls


def execute(name, args):
    if name == "write_file":
        path = args["path"]
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(args["content"])
        return "wrote " + path
    if name == "run":
        p = subprocess.run(["/bin/sh", "-c", args["command"]], capture_output=True, text=True)
        return f"exit {p.returncode}\n{p.stdout}{p.stderr}"
    return "error: no tool " + name


def work(anthropic, prompt, allowed):
    if anthropic:
        conversation = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    else:
        conversation = [{"role": "user", "content": prompt}]
    for _ in range(50):
        text, calls = ask(anthropic, conversation)
        if anthropic:
            content = ([{"type": "text", "text": text}] if text else []) + [
                {"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
            conversation.append({"role": "assistant", "content": content})
        else:
            m = {"role": "assistant", "content": text or None}
            if calls:
                m["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                                   for i, n, a in calls]
            conversation.append(m)
        if not calls:
            return text
        results = [(i, execute(n, a) if allowed(n, a) else "error: permission refused") for i, n, a in calls]
        if anthropic:
            conversation.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": i, "content": out} for i, out in results]})
        else:
            conversation.extend({"role": "tool", "tool_call_id": i, "content": out} for i, out in results)
    raise SystemExit("fake-agent: 50 turns without an answer")


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def acp(anthropic):
    counter = [1000]

    def allowed(name, args):
        counter[0] += 1
        rid, call = counter[0], f"call-{counter[0]}"
        send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "fake-1", "update": {
            "sessionUpdate": "tool_call", "toolCallId": call, "title": f"{name} {json.dumps(args)}",
            "kind": "execute" if name == "run" else "edit", "status": "pending"}}})
        send({"jsonrpc": "2.0", "id": rid, "method": "session/request_permission", "params": {
            "sessionId": "fake-1", "toolCall": {"toolCallId": call, "title": name},
            "options": [{"optionId": "yes", "name": "Allow", "kind": "allow_once"},
                        {"optionId": "no", "name": "Reject", "kind": "reject_once"}]}})
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("id") == rid:
                return msg.get("result", {}).get("outcome", {}).get("optionId") == "yes"
        return False

    for line in sys.stdin:
        msg = json.loads(line)
        mid, method = msg.get("id"), msg.get("method")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": 1, "agentCapabilities": {}, "authMethods": []}})
        elif method == "session/new":
            send({"jsonrpc": "2.0", "id": mid, "result": {"sessionId": "fake-1"}})
        elif method == "session/prompt":
            text = work(anthropic, msg["params"]["prompt"][0]["text"], allowed)
            send({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "fake-1", "update": {
                "sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}}})
            send({"jsonrpc": "2.0", "id": mid, "result": {"stopReason": "end_turn"}})
        elif mid is not None:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "method not found"}})


def main():
    # Until FAKE_AGENT_LIMIT_UNTIL (unix seconds), say the vendor's usage
    # limit is reached, as Claude Code words it, and fail.
    until = os.environ.get("FAKE_AGENT_LIMIT_UNTIL")
    if until and time.time() < int(until):
        print(f"Claude AI usage limit reached|{until}", file=sys.stderr)
        raise SystemExit(1)
    args = sys.argv[1:]
    anthropic = not ("--speaks" in args and args[args.index("--speaks") + 1] == "openai_chat")
    if args and args[0] == "acp":
        acp(anthropic)
    elif args and args[0] == "command":
        print(work(anthropic, args[args.index("--prompt") + 1], lambda n, a: True))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
