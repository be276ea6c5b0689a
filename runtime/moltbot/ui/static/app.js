// Moltbot chat page. Talks to the runtime's API like any client: GET /v1/models, GET /v1/plugins and the
// /v1/ws WebSocket. The conversation lives in this tab's sessionStorage only; nothing is stored on the server.
// Model text is rendered as Markdown by marked with raw HTML turned into text, then sanitised by DOMPurify
// and inserted as a DOM fragment: no model-made markup reaches the page.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  const KEY = "moltbot.key";
  const CONVERSATION = "moltbot.conversation";
  const MODEL = "moltbot.model";
  const PLUGINS = "moltbot.plugins";

  let apiKey = store.getItem(KEY) || "";
  let conversation = loadConversation();
  let enabledPlugins = new Set(readJSON(PLUGINS, []));
  let socket = null; // an open WebSocket, reused between messages; closed by Stop
  let current = null; // the request being answered: {message, element, socket}
  let renderPending = false;
  let pluginSchemas = {}; // loaded plugins by name, as GET /v1/plugins describes them

  // ---- storage ----------------------------------------------------------------------------------
  function readJSON(name, fallback) {
    try {
      const value = JSON.parse(store.getItem(name));
      return value === null ? fallback : value;
    } catch (err) {
      return fallback;
    }
  }

  function loadConversation() {
    const value = readJSON(CONVERSATION, null);
    return value && Array.isArray(value.messages) ? value : { messages: [] };
  }

  function save() {
    store.setItem(CONVERSATION, JSON.stringify(conversation));
  }

  // ---- HTTP ---------------------------------------------------------------------------------------
  function headers() {
    return apiKey ? { Authorization: "Bearer " + apiKey } : {};
  }

  async function getJSON(path, key) {
    const response = await fetch(path, {
      headers: key === undefined ? headers() : key ? { Authorization: "Bearer " + key } : {},
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    return { status: response.status, ok: response.ok, body: body };
  }

  function errorText(result) {
    const error = result.body && result.body.error;
    return error && error.message ? error.message : "HTTP " + result.status;
  }

  // ---- notices ------------------------------------------------------------------------------------
  function notice(text) {
    const el = $("notice");
    el.textContent = text || "";
    el.classList.toggle("hidden", !text);
  }

  function showKeyForm(message) {
    $("key-form").classList.remove("hidden");
    const error = $("key-error");
    error.textContent = message || "";
    error.classList.toggle("hidden", !message);
    $("key").focus();
  }

  // ---- start-up -----------------------------------------------------------------------------------
  async function connect() {
    let models;
    try {
      models = await getJSON("/v1/models");
    } catch (err) {
      notice("The server cannot be reached: " + err.message);
      setTimeout(connect, 3000);
      return;
    }
    if (models.status === 401) {
      document.body.dataset.state = "key-needed";
      showKeyForm(apiKey ? "The server refused the API key kept in this tab. Enter a valid key." : "");
      return;
    }
    if (models.status === 503) {
      notice("The models are still loading; retrying…");
      setTimeout(connect, 2000);
      return;
    }
    if (!models.ok) {
      notice("Could not list the models: " + errorText(models));
      return;
    }
    notice("");
    $("key-form").classList.add("hidden");
    $("forget-key").classList.toggle("hidden", !apiKey);
    fillModels(models.body.data || []);
    await loadPlugins();
    document.body.dataset.state = "ready";
  }

  function fillModels(cards) {
    const select = $("model");
    const chat = cards.filter((card) => (card.task || "chat") === "chat");
    select.replaceChildren();
    for (const card of chat) {
      const option = document.createElement("option");
      option.value = card.id;
      option.textContent = card.id;
      select.appendChild(option);
    }
    const wanted = store.getItem(MODEL);
    if (wanted && chat.some((card) => card.id === wanted)) select.value = wanted;
    if (!chat.length) notice("The server serves no chat model.");
  }

  async function loadPlugins() {
    const list = $("plugin-list");
    list.replaceChildren();
    let result;
    try {
      result = await getJSON("/v1/plugins");
    } catch (err) {
      result = { ok: false, status: 0, body: null };
    }
    const plugins = result.ok ? (result.body.data || []).filter((p) => p.status === "loaded" && p.enabled !== false) : [];
    $("plugins-empty").classList.toggle("hidden", plugins.length > 0);
    pluginSchemas = {};
    for (const plugin of plugins) {
      pluginSchemas[plugin.name] = plugin;
      const item = document.createElement("li");
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = plugin.name;
      box.dataset.plugin = plugin.name;
      box.checked = enabledPlugins.has(plugin.name);
      box.addEventListener("change", () => {
        if (box.checked) enabledPlugins.add(plugin.name);
        else enabledPlugins.delete(plugin.name);
        store.setItem(PLUGINS, JSON.stringify([...enabledPlugins]));
      });
      const name = document.createElement("span");
      name.textContent = plugin.name;
      const desc = document.createElement("span");
      desc.className = "desc";
      desc.textContent = plugin.description || "";
      label.append(box, " ", name, desc);
      item.appendChild(label);
      list.appendChild(item);
    }
  }

  function tools() {
    const chosen = [...enabledPlugins].filter((name) => pluginSchemas[name]);
    return chosen.map((name) => ({
      type: "function",
      function: {
        name: name,
        description: pluginSchemas[name].description || "",
        parameters: pluginSchemas[name].input_schema || { type: "object" },
      },
    }));
  }

  // ---- rendering ----------------------------------------------------------------------------------
  function escapeHTML(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  window.marked.use({
    gfm: true,
    renderer: {
      // Raw HTML in the model's text is shown as text, never parsed as markup.
      html(token) {
        return escapeHTML(token.raw || token.text || "");
      },
      // Images would load from anywhere (and the CSP forbids other origins): shown as their Markdown text.
      image(token) {
        return escapeHTML(token.raw || "");
      },
    },
  });

  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });

  function markdown(text) {
    const html = window.marked.parse(text || "", { async: false });
    return window.DOMPurify.sanitize(html, {
      RETURN_DOM_FRAGMENT: true,
      FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "svg", "math"],
      FORBID_ATTR: ["style", "srcset"],
    });
  }

  function addCopyButtons(container) {
    for (const pre of container.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(code.textContent);
          button.textContent = "Copied";
        } catch (err) {
          const range = document.createRange();
          range.selectNodeContents(code);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          button.textContent = "Selected: press Ctrl+C";
        }
        setTimeout(() => { button.textContent = "Copy"; }, 1500);
      });
      pre.appendChild(button);
    }
  }

  function toolCallElement(call) {
    const details = document.createElement("details");
    details.className = "tool-call";
    details.open = true;
    const summary = document.createElement("summary");
    const fn = (call.tool_call && call.tool_call.function) || {};
    summary.textContent = "Tool call: " + (fn.name || "?") + "(" + (fn.arguments || "") + ")";
    const result = document.createElement("pre");
    result.textContent = "Result: " + JSON.stringify(call.result, null, 2);
    details.append(summary, result);
    return details;
  }

  const STATUS = {
    streaming: "answering…",
    stopped: "stopped",
    length: "stopped at the token limit",
    error: "failed",
    closed: "the connection closed before the answer ended",
  };

  function messageElement(message) {
    const el = document.createElement("article");
    el.className = "message " + message.role;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = message.role === "error" ? "error" : message.role === "user" ? "you" : message.model || "assistant";
    const tools = document.createElement("div");
    tools.className = "tools";
    const content = document.createElement("div");
    content.className = "content";
    const status = document.createElement("div");
    status.className = "status";
    el.append(role, tools, content, status);
    fillMessage(el, message);
    return el;
  }

  function fillMessage(el, message) {
    const content = el.querySelector(".content");
    if (message.role === "assistant") {
      el.querySelector(".tools").replaceChildren(...(message.plugin_calls || []).map(toolCallElement));
      content.replaceChildren(markdown(message.content));
      addCopyButtons(content);
    } else {
      content.textContent = message.content;
    }
    const status = STATUS[message.status] || "";
    el.querySelector(".status").textContent = status;
    el.dataset.status = message.status || "done";
  }

  function renderConversation() {
    const box = $("messages");
    box.replaceChildren(...conversation.messages.map(messageElement));
    scrollDown(true);
  }

  function scrollDown(force) {
    const main = document.querySelector("main");
    if (force || main.scrollHeight - main.scrollTop - main.clientHeight < 120) main.scrollTop = main.scrollHeight;
  }

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      if (current) {
        fillMessage(current.element, current.message);
        scrollDown(false);
      }
    });
  }

  // ---- the WebSocket ------------------------------------------------------------------------------
  function base64url(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function openSocket() {
    if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
    return new Promise((resolve, reject) => {
      const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
      // A browser cannot set headers on a WebSocket: the key travels as a subprotocol (never in the URL).
      const protocols = ["moltbot"];
      if (apiKey) protocols.push("moltbot.key." + base64url(apiKey));
      const ws = new WebSocket(url, protocols);
      ws.addEventListener("open", () => { socket = ws; resolve(ws); }, { once: true });
      ws.addEventListener("error", () => reject(new Error(
        "The WebSocket could not be opened" + (apiKey ? " (is the API key still valid?)" : ""))), { once: true });
      ws.addEventListener("message", onSocketMessage);
      ws.addEventListener("close", () => {
        if (socket === ws) socket = null;
        if (current && current.socket === ws) finish("closed");
      });
    });
  }

  function onSocketMessage(event) {
    if (!current) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    const answer = current.message;
    if (message.type === "chunk") {
      const data = message.data || {};
      if (Array.isArray(data.plugin_calls)) answer.plugin_calls = (answer.plugin_calls || []).concat(data.plugin_calls);
      for (const choice of data.choices || []) {
        if (choice.index === 0 && choice.delta && choice.delta.content) answer.content += choice.delta.content;
      }
      scheduleRender();
    } else if (message.type === "done") {
      const choice = ((message.data || {}).choices || [])[0] || {};
      if (choice.message && typeof choice.message.content === "string") answer.content = choice.message.content;
      finish(choice.finish_reason === "length" ? "length" : "done");
    } else if (message.type === "error") {
      const error = message.error || {};
      answer.error = (error.message || "The request failed") + (message.status ? " (" + message.status + ")" : "");
      finish("error");
    }
  }

  function finish(status) {
    if (!current) return;
    const { message, element } = current;
    current = null;
    message.status = status;
    if (status === "error") {
      message.role = "error";
      message.content = message.error;
      element.className = "message error";
      element.querySelector(".role").textContent = "error";
    }
    fillMessage(element, message);
    save();
    setBusy(false);
    scrollDown(false);
  }

  function setBusy(busy) {
    $("send").classList.toggle("hidden", busy);
    $("stop").classList.toggle("hidden", !busy);
    $("prompt").disabled = busy;
    if (!busy) $("prompt").focus();
  }

  // ---- actions ------------------------------------------------------------------------------------
  async function send(text) {
    const model = $("model").value;
    if (!model) {
      notice("Pick a model first.");
      return;
    }
    const user = { role: "user", content: text };
    conversation.messages.push(user);
    const history = conversation.messages
      .filter((m) => (m.role === "user" || m.role === "assistant") && m.status !== "streaming")
      .map((m) => ({ role: m.role, content: m.content || "" }));
    const answer = { role: "assistant", content: "", model: model, status: "streaming", plugin_calls: [] };
    conversation.messages.push(answer);
    save();
    const box = $("messages");
    box.appendChild(messageElement(user));
    const element = messageElement(answer);
    box.appendChild(element);
    scrollDown(true);
    current = { message: answer, element: element, socket: null };
    setBusy(true);

    const request = { model: model, messages: history, stream: true };
    const temperature = $("temperature").value;
    const maxTokens = $("max-tokens").value;
    if (temperature !== "") request.temperature = Number(temperature);
    if (maxTokens !== "") request.max_tokens = Number(maxTokens);
    const chosen = tools();
    if (chosen.length) request.tools = chosen;
    try {
      const ws = await openSocket();
      if (current && current.message === answer) {
        current.socket = ws;
        ws.send(JSON.stringify(request));
      }
    } catch (err) {
      if (current && current.message === answer) {
        answer.error = err.message;
        finish("error");
      }
    }
  }

  function stop() {
    if (!current) return;
    // Closing the socket cancels the generation on the server (its sequences are freed); the next message
    // opens a new socket.
    const ws = current.socket;
    finish("stopped");
    if (ws) ws.close(1000, "stopped by the user");
    socket = null;
  }

  function newConversation() {
    if (current) stop();
    conversation = { messages: [] };
    save();
    renderConversation();
    $("prompt").focus();
  }

  async function submitKey(event) {
    event.preventDefault();
    const candidate = $("key").value.trim();
    if (!candidate) return;
    let result;
    try {
      result = await getJSON("/v1/models", candidate);
    } catch (err) {
      showKeyForm("The server cannot be reached: " + err.message);
      return;
    }
    if (result.status === 401) {
      showKeyForm("Wrong API key: the server refused it (401). Check the key and try again.");
      return;
    }
    apiKey = candidate;
    store.setItem(KEY, apiKey);
    $("key").value = "";
    $("key-error").classList.add("hidden");
    if (socket) socket.close();
    socket = null;
    await connect();
  }

  function forgetKey() {
    apiKey = "";
    store.removeItem(KEY);
    if (socket) socket.close();
    socket = null;
    $("forget-key").classList.add("hidden");
    connect();
  }

  // ---- wiring ---------------------------------------------------------------------------------------
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || current) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newConversation);
  $("key-form").addEventListener("submit", submitKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("model").addEventListener("change", () => store.setItem(MODEL, $("model").value));

  // A reload mid-answer leaves a message marked as streaming: it was cut off.
  for (const message of conversation.messages) {
    if (message.status === "streaming") message.status = "closed";
  }
  renderConversation();
  connect();
})();
