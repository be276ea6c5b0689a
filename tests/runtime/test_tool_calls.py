"""Plugins as OpenAI tools in chat: the model's tool calls are run and their results fed back, in bounded rounds.

The default chat model's text is meaningless, so the model side is a scripted OpenAI-compatible upstream (a
`service` model) that asks for a tool and then answers with what the tool returned: this tests the wiring."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai

from moltbot.engine.tool_calls import FORMATS

ECHO_PLUGIN = {
    "config.json": json.dumps({"name": "echo", "version": "1.0.0", "description": "Echoes a word back.",
                               "input_schema": {"type": "object", "properties": {"word": {"type": "string"}},
                                                "required": ["word"]}}),
    "__init__.py": "",
    "plugin.py": ("from moltbot.plugins import BasePlugin\n\n"
                  "class EchoPlugin(BasePlugin):\n"
                  "    def execute(self, context):\n"
                  "        return {'echoed': context.input['word'].upper()}\n"),
}


class ScriptedUpstream:
    """Asks for `echo` while the conversation has no tool result; then answers with the result it was given."""

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                tool_messages = [m for m in body["messages"] if m["role"] == "tool"]
                if not tool_messages:
                    message = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": "call_1", "type": "function",
                        "function": {"name": "echo", "arguments": json.dumps({"word": "moltbot"})}}]}
                    finish = "tool_calls"
                else:
                    message = {"role": "assistant", "content": f"The tool said {tool_messages[-1]['content']}"}
                    finish = "stop"
                reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_parse_tool_calls_from_model_text():
    text = 'Let me check. <tool_call>{"name": "echo", "arguments": {"word": "hi"}}</tool_call>'
    content, calls = FORMATS["hermes"].parse(text)
    assert content == "Let me check."
    assert calls[0].as_openai()["function"] == {"name": "echo", "arguments": '{"word": "hi"}'}
    malformed = '<tool_call>{"name": }</tool_call> plain'
    assert FORMATS["hermes"].parse(malformed) == (malformed, [])


def test_plugin_tools_are_run_and_their_results_fed_back(server_factory, tmp_path):
    upstream = ScriptedUpstream()
    try:
        home = tmp_path / "srv"
        (home / "models").mkdir(parents=True)
        (home / "models" / "scripted.json").write_text(json.dumps(
            {"name": "scripted", "type": "service", "base_url": upstream.url, "model": "scripted"}))
        plugin_dir = home / "plugins" / "echo"
        plugin_dir.mkdir(parents=True)
        for name, text in ECHO_PLUGIN.items():
            (plugin_dir / name).write_text(text)
        srv = server_factory("srv", env={"MOLTBOT_DEFAULT_MODELS": "on"})
        tools = [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]
        with openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0) as oai:
            reply = oai.chat.completions.create(model="scripted", tools=tools,
                                                messages=[{"role": "user", "content": "Echo moltbot"}])
            assert reply.choices[0].finish_reason == "stop"
            assert reply.choices[0].message.content == 'The tool said {"echoed": "MOLTBOT"}'
            assert reply.usage.total_tokens == 16  # both rounds
            assert reply.model_extra["plugin_calls"][0]["result"] == {"echoed": "MOLTBOT"}
            for sent in upstream.requests:  # only OpenAI's fields reach the upstream, not our extensions
                assert "ignore_eos" not in sent and "max_tool_rounds" not in sent, sent
                assert sent["model"] == "scripted"
            second = upstream.requests[1]["messages"]
            assert second[1]["tool_calls"][0]["function"]["name"] == "echo"
            assert second[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"echoed": "MOLTBOT"}'}
            # A local model given the same tools answers normally when it calls none.
            local = oai.chat.completions.create(model="tiny-chat", tools=tools, max_tokens=4,
                                                messages=[{"role": "user", "content": "hi"}])
            assert local.choices[0].message.content is not None
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'moltbot_plugin_calls_total{outcome="ok",plugin="echo"} 1.0' in metrics
    finally:
        upstream.close()


def test_plugins_are_callable_over_the_websocket(server_factory, tmp_path):
    import asyncio

    import websockets

    plugin_dir = tmp_path / "srv" / "plugins" / "echo"
    plugin_dir.mkdir(parents=True)
    for name, text in ECHO_PLUGIN.items():
        (plugin_dir / name).write_text(text)
    srv = server_factory("srv")

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/v1/ws") as ws:
            await ws.send(json.dumps({"type": "plugin", "name": "echo", "input": {"word": "hi"}}))
            result = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "plugin", "name": "echo", "input": {}}))
            invalid = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "plugin", "name": "nope", "input": {}}))
            missing = json.loads(await ws.recv())
            return result, invalid, missing

    result, invalid, missing = asyncio.run(scenario())
    assert result["type"] == "plugin_result" and result["result"] == {"echoed": "HI"}
    assert invalid["type"] == "error" and invalid["status"] == 400 and invalid["error"]["param"] == "word"
    assert missing["status"] == 404 and missing["error"]["code"] == "plugin_not_found"
