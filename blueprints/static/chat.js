// The chat page (index.html): stored conversations, answers streamed through EventSource, Stop, resume.
// Plain JavaScript, no build step. Every URL is relative, so the page works behind a path prefix too.
// Model output is Markdown: marked turns it into HTML and DOMPurify removes anything active before it is
// inserted (the page's Content-Security-Policy also forbids inline scripts). See docs/api.md, "GET /".
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    conversationId: null,   // the open conversation; null: the next message starts one
    conversations: [],      // what the list shows
    cursor: null,           // next_cursor of the list
    stream: null,           // the answer streaming now (one at a time)
    view: 0,                // counts the conversations opened, so a late answer knows it is no longer shown
    contextLength: null,    // from v1/models
  };
  const STORE = {
    get(name, fallback) { try { return localStorage.getItem("llm_api." + name) ?? fallback; } catch { return fallback; } },
    set(name, value) { try { localStorage.setItem("llm_api." + name, value); } catch { /* storage disabled */ } },
    drop(name) { try { localStorage.removeItem("llm_api." + name); } catch { /* storage disabled */ } },
  };
  const FINISH_WORDS = {
    stop: "finished", length: "reached max tokens", cancelled: "stopped", timeout: "timed out on the server",
    error: "failed", content_filter: "cut by the output filter", repetition: "stopped: it started repeating itself",
  };

  // ---- settings, kept in the browser ------------------------------------------------------------------
  function apiKey() { return $("api_key").value.trim(); }

  function loadSettings() {
    $("max_tokens").value = STORE.get("max_tokens", $("max_tokens").value);
    $("temperature").value = STORE.get("temperature", $("temperature").value);
    const remembered = STORE.get("api_key", null);
    $("remember_key").checked = remembered !== null;
    let key = remembered;
    try { key = key ?? sessionStorage.getItem("llm_api.api_key"); } catch { /* storage disabled */ }
    $("api_key").value = key || "";
  }

  function saveKey() {
    const key = apiKey();
    try { sessionStorage.setItem("llm_api.api_key", key); } catch { /* storage disabled */ }
    if ($("remember_key").checked) STORE.set("api_key", key); else STORE.drop("api_key");
  }

  // ---- talking to the API -----------------------------------------------------------------------------
  function authHeaders(extra = {}) {
    const key = apiKey();
    return key ? {...extra, "Authorization": "Bearer " + key} : extra;
  }

  // The service's error envelope in words, with the wait it asks for.
  function describeError(status, body, headers) {
    const error = body && body.error ? body.error : null;
    let text = error && error.message ? error.message : `The server answered ${status}.`;
    const wait = headers ? headers.get("Retry-After") : null;
    if (status === 429 && wait) text += ` Try again in ${wait} s.`;
    else if (status === 503) text += wait ? ` The server is unavailable for now; retry in ${wait} s.` : "";
    if (status === 401) text += " Enter a valid API key below.";
    return text;
  }

  class ApiError extends Error {
    constructor(status, body, headers) {
      super(describeError(status, body, headers));
      this.status = status;
      this.code = body && body.error ? body.error.code : null;
    }
  }

  async function api(path, {method = "GET", json} = {}) {
    const init = {method, headers: authHeaders(json === undefined ? {} : {"Content-Type": "application/json"})};
    if (json !== undefined) init.body = JSON.stringify(json);
    const response = await fetch(path, init);
    const body = (response.headers.get("Content-Type") || "").includes("json") ? await response.json() : null;
    if (!response.ok) throw new ApiError(response.status, body, response.headers);
    return {body, headers: response.headers};
  }

  function showError(text) { $("error").textContent = text || ""; }

  // ---- Markdown, made inert ---------------------------------------------------------------------------
  const PURIFY = {USE_PROFILES: {html: true}, FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
                  FORBID_ATTR: ["style"]};
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.getAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });

  function renderMarkdown(element, text) {
    element.innerHTML = DOMPurify.sanitize(marked.parse(text, {gfm: true, breaks: true, async: false}), PURIFY);
  }

  // ---- the messages -----------------------------------------------------------------------------------
  function addMessage(role, text) {
    $("empty").hidden = true;
    const article = document.createElement("article");
    article.className = `message ${role}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = {user: "You", assistant: "Assistant", system: "System"}[role] || role;
    const body = document.createElement("div");
    body.className = "body";
    if (role === "assistant") renderMarkdown(body, text); else body.textContent = text;
    const note = document.createElement("div");
    note.className = "note";
    const meta = document.createElement("div");
    meta.className = "meta";
    article.append(who, body, note, meta);
    article.setAttribute("aria-label", who.textContent);
    $("messages").append(article);
    return {article, body, note, meta};
  }

  function clearMessages() {
    for (const article of [...$("messages").querySelectorAll("article")]) article.remove();
    $("empty").hidden = false;
  }

  function scrollToEnd() { $("messages").scrollTop = $("messages").scrollHeight; }

  function rate(tokens, seconds) { return tokens > 0 && seconds > 0 ? (tokens / seconds).toFixed(1) : null; }

  // The line under an answer: tokens, tokens per second, how it ended, which engine or model answered.
  function metaText({tokens, perSecond, finishReason, engine, model, resumes}) {
    const parts = [];
    if (tokens !== null && tokens !== undefined) parts.push(`${tokens} tokens`);
    if (perSecond) parts.push(`${perSecond} tokens/s`);
    if (finishReason) parts.push(`${finishReason} (${FINISH_WORDS[finishReason] || finishReason})`);
    if (engine) parts.push(`engine ${engine}`);
    if (model) parts.push(model);
    if (resumes) parts.push(`resumed ${resumes}× after a dropped connection`);
    return parts.join(" · ");
  }

  function storedAnswerMeta(message) {
    const tokens = message.usage ? message.usage.completion_tokens : null;
    const decoding = message.total_time !== null && message.time_to_first_token !== null
      ? message.total_time - message.time_to_first_token : null;
    return metaText({tokens, perSecond: tokens > 1 && decoding ? rate(tokens - 1, decoding) : null,
                     finishReason: message.finish_reason, model: message.model});
  }

  function showStoredMessages(messages) {
    const answered = new Set(messages.filter((m) => m.reply_to).map((m) => m.reply_to));
    for (const message of messages) {
      const view = addMessage(message.role, message.content);
      if (message.role === "assistant") {
        view.body.dataset.state = "done";
        view.body.dataset.messageId = message.message_id;
        view.meta.textContent = storedAnswerMeta(message);
        view.meta.dataset.finishReason = message.finish_reason || "";
        if (message.error) { view.note.textContent = `The model failed: ${message.error}`; view.note.classList.add("problem"); }
      } else if (message.role === "user" && !answered.has(message.message_id)) {
        view.note.textContent = "No answer is stored for this message: it is still being generated, or it was " +
          "interrupted before it ended.";
      }
    }
  }

  // ---- the conversation list --------------------------------------------------------------------------
  async function loadConversations({more = false} = {}) {
    const query = new URLSearchParams({limit: "50"});
    if (more && state.cursor) query.set("cursor", state.cursor);
    try {
      const {body} = await api("conversations?" + query);
      state.conversations = more ? [...state.conversations, ...body.conversations] : body.conversations;
      state.cursor = body.next_cursor;
      $("conversations_status").textContent = state.conversations.length ? "" : "No conversations yet.";
    } catch (error) {
      state.conversations = [];
      state.cursor = null;
      $("conversations_status").textContent = `The list could not be loaded: ${error.message}`;
    }
    renderConversations();
  }

  function renderConversations() {
    const list = $("conversations");
    list.replaceChildren();
    for (const conversation of state.conversations) {
      const item = document.createElement("li");
      item.dataset.id = conversation.id;
      item.dataset.current = String(conversation.id === state.conversationId);
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = conversation.title;
      open.title = `${conversation.title}\nstarted ${new Date(conversation.created_at).toLocaleString()}`;
      if (conversation.id === state.conversationId) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => navigate(conversation.id));
      const rename = iconButton("✎", `Rename “${conversation.title}”`, "rename", () => startRename(item, conversation));
      const remove = iconButton("×", `Delete “${conversation.title}”`, "delete", () => removeConversation(conversation));
      item.append(open, rename, remove);
      list.append(item);
    }
    $("more_conversations").hidden = !state.cursor;
  }

  function iconButton(symbol, label, kind, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `icon ${kind}`;
    button.textContent = symbol;
    button.setAttribute("aria-label", label);
    button.title = label;
    button.addEventListener("click", onClick);
    return button;
  }

  function startRename(item, conversation) {
    const input = document.createElement("input");
    input.value = conversation.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", `New title for “${conversation.title}”`);
    item.replaceChildren(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        try {
          await api(`conversations/${conversation.id}`, {method: "PATCH", json: {title}});
          showError("");
        } catch (error) { showError(`Not renamed: ${error.message}`); }
      }
      await loadConversations();
      if (conversation.id === state.conversationId) setTitle();
      const renamed = $("conversations").querySelector(`li[data-id="${conversation.id}"] .open`);
      if (renamed) renamed.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") { event.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async function removeConversation(conversation) {
    if (!window.confirm(`Delete “${conversation.title}” and all its messages? This cannot be undone.`)) return;
    try {
      await api(`conversations/${conversation.id}`, {method: "DELETE"});
      showError("");
    } catch (error) {
      if (error.status !== 404) { showError(`Not deleted: ${error.message}`); return; }
    }
    if (conversation.id === state.conversationId) navigate(null);
    await loadConversations();
  }

  function setTitle() {
    const current = state.conversations.find((c) => c.id === state.conversationId);
    $("conversation_title").textContent = state.conversationId ? (current ? current.title : "Conversation")
      : "New conversation";
    document.title = (current ? current.title + " · " : "") + "llm_api chat";
  }

  // ---- opening a conversation (the address keeps it, so a reload or a link reopens it) ------------------
  function navigate(conversationId) {
    closeSidebar();
    if (conversationId && conversationId === state.conversationId && state.stream) return;  // already shown
    const hash = conversationId ? "#" + conversationId : "";
    if (location.hash === hash) { openConversation(conversationId); return; }
    if (conversationId) location.hash = hash;
    else { history.pushState(null, "", location.pathname + location.search); openConversation(null); }
  }

  async function openConversation(conversationId) {
    if (state.stream) stop();  // the answer in progress is stopped and stored with its text so far
    state.view += 1;
    state.conversationId = conversationId;
    clearMessages();
    showError("");
    renderConversations();
    setTitle();
    if (!conversationId) { $("prompt").focus(); return; }
    try {
      const messages = [];
      let cursor = null;
      do {
        const query = new URLSearchParams({limit: "500"});
        if (cursor) query.set("cursor", cursor);
        const {body} = await api(`conversations/${conversationId}?` + query);
        messages.push(...body.messages);
        cursor = body.next_cursor;
      } while (cursor);
      if (state.conversationId !== conversationId) return;  // another one was opened meanwhile
      showStoredMessages(messages);
      scrollToEnd();
    } catch (error) {
      showError(error.status === 404 ? "This conversation no longer exists (it was deleted, or belongs to another " +
                "key)." : `The conversation could not be loaded: ${error.message}`);
      if (error.status === 404) state.conversationId = null;
    }
    setTitle();
    $("prompt").focus();
  }

  function conversationFromAddress() {
    const id = location.hash.slice(1);
    return /^[0-9a-f]{32}$/.test(id) ? id : null;
  }

  // ---- the model ---------------------------------------------------------------------------------------
  async function loadModels() {
    try {
      const {body} = await api("v1/models");
      const chatModels = body.data.filter((m) => !m.kind || m.kind === "chat");
      const first = chatModels[0];
      state.contextLength = first ? first.context_length : null;
      if (chatModels.length > 1) {  // a picker only when the server offers a choice
        const select = $("model");
        select.replaceChildren(...chatModels.map((m) => new Option(m.id, m.id)));
        select.value = STORE.get("model", first.id);
        if (!select.value) select.value = first.id;
        $("model_picker").hidden = false;
        $("model_name").textContent = "";
      } else if (first) {
        $("model_name").textContent = `${first.id}` + (first.context_length ? ` · ${first.context_length} tokens of context` : "");
      }
    } catch { /* no key yet, or still loading: the name is only informative */ }
  }

  // ---- sending and streaming ---------------------------------------------------------------------------
  function readSettings() {
    const maxTokens = $("max_tokens"), temperature = $("temperature");
    for (const field of [maxTokens, temperature]) {
      if (!field.checkValidity() || field.value === "") { field.reportValidity(); return null; }
    }
    if (!Number.isInteger(Number(maxTokens.value))) {
      showError("Max tokens must be a whole number of at least 1.");
      return null;
    }
    return {max_tokens: maxTokens.value, temperature: temperature.value};
  }

  async function streamToken() {
    if (!apiKey()) return null;
    const {body} = await api("auth/stream-token", {method: "POST"});
    return body.token;
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  async function send() {
    const prompt = $("prompt").value;
    if (!prompt.trim() || state.stream) return;
    const settings = readSettings();
    if (!settings) return;
    showError("");
    saveKey();
    const previous = $("answer");
    if (previous) previous.removeAttribute("id");
    const user = addMessage("user", prompt);
    const answer = addMessage("assistant", "");
    answer.body.id = "answer";  // the newest answer, for scripts and tests
    answer.body.dataset.state = "streaming";
    answer.article.setAttribute("aria-busy", "true");  // read out once complete, not token by token
    answer.body.dataset.messageId = "";
    answer.meta.textContent = "waiting for the first token…";
    $("prompt").value = "";
    scrollToEnd();
    const s = {user, answer, prompt, text: "", conversationId: state.conversationId, view: state.view, source: null,
               token: null,
               messageId: null, lastEventId: null, started: performance.now(), firstAt: null, pieces: 0, drops: 0,
               resumes: 0, waitingToResume: false, stopping: false, stopTimer: null, painted: false};
    state.stream = s;
    setBusy(true);
    try {
      s.token = await streamToken();
    } catch (error) {
      refused(s, error.message);
      return;
    }
    if (state.stream !== s) return;  // stopped while the token was on its way
    const params = new URLSearchParams({prompt, ...settings});
    if (s.conversationId) params.set("conversation_id", s.conversationId);
    if (!$("model_picker").hidden && $("model").value) params.set("model", $("model").value);
    if (s.token) params.set("token", s.token);
    s.source = new EventSource("chat/stream?" + params);
    s.source.onmessage = (event) => onText(s, event);
    s.source.addEventListener("finish", (event) => onFinish(s, event));
    s.source.addEventListener("error", (event) => onError(s, event));
  }

  function onText(s, event) {
    const data = JSON.parse(event.data);
    const now = performance.now();
    if (s.firstAt === null) s.firstAt = now;
    s.pieces += 1;
    s.lastEventId = event.lastEventId;
    if (!s.messageId) {
      s.messageId = data.message_id;
      s.answer.body.dataset.messageId = data.message_id;
      if (s.stopping) requestStop(s);  // Stop was pressed before the answer had an id
    }
    if (s.waitingToResume) {  // the reconnect carried Last-Event-ID and the answer goes on where it stopped
      s.waitingToResume = false;
      s.resumes += 1;
      s.answer.body.dataset.resumes = String(s.resumes);
      s.answer.note.textContent = `The connection dropped; resumed after event ${s.resumeFrom} without losing text.`;
    }
    s.text += data.text;
    if (!s.painted) {  // at most one Markdown render per frame
      s.painted = true;
      requestAnimationFrame(() => { s.painted = false; renderMarkdown(s.answer.body, s.text); scrollToEnd(); });
    }
    const seconds = (now - s.firstAt) / 1000;
    s.answer.meta.textContent = `first token ${((s.firstAt - s.started) / 1000).toFixed(2)} s · ` +
      `${s.pieces} tokens · ${rate(s.pieces - 1, seconds) || "…"} tokens/s`;
  }

  function onFinish(s, event) {
    const data = JSON.parse(event.data);
    const seconds = s.firstAt === null ? 0 : (performance.now() - s.firstAt) / 1000;
    const tokens = data.usage.completion_tokens;
    s.answer.body.dataset.messageId = data.message_id;
    s.answer.meta.textContent = metaText({tokens, perSecond: tokens > 1 ? rate(tokens - 1, seconds) : null,
                                          finishReason: data.finish_reason, engine: data.engine, resumes: s.resumes});
    s.answer.meta.dataset.finishReason = data.finish_reason;
    s.answer.meta.dataset.engine = data.engine || "";
    if (data.degraded) {
      s.answer.note.textContent = `Degraded answer: the primary engine could not answer, so “${data.engine}” did.`;
    } else if (data.dropped_turns) {
      s.answer.note.textContent = `The ${data.dropped_turns} oldest turn(s) did not fit the model's context and were ` +
        "left out of the prompt (they stay stored).";
    }
    const adopted = !s.conversationId;
    s.conversationId = data.conversation_id;
    end(s, data.finish_reason === "cancelled" && s.stopping ? "stopped" : "done");
    if (adopted && state.view === s.view) {  // the first answer names the new conversation it started
      state.conversationId = data.conversation_id;
      history.replaceState(null, "", "#" + data.conversation_id);
    }
    loadConversations().then(setTitle);
  }

  function onError(s, event) {
    if (event instanceof MessageEvent && event.data) {  // an error the server sent in the stream
      const error = JSON.parse(event.data).error;
      if (error.code === "resume_unavailable") {
        s.answer.note.textContent = "The connection dropped and this server cannot resume the answer.";
        end(s, "error");
        if (error.details.conversation_id && state.conversationId === error.details.conversation_id) {
          openConversation(error.details.conversation_id);  // the stored answer, once it has ended
        }
        showError(error.message);
        return;
      }
      s.answer.note.textContent = error.message;
      s.answer.note.classList.add("problem");
      showError(error.message);
      end(s, "error");
      return;
    }
    if (!s.source) return;
    if (s.source.readyState === EventSource.CONNECTING) {  // dropped: the browser reconnects with Last-Event-ID
      if (!s.lastEventId) {  // no event yet: a reconnect without Last-Event-ID would start a second answer
        s.answer.note.textContent = "The connection dropped before the answer began; it was not retried, so that " +
          "the question is not answered twice. Send it again to retry.";
        s.answer.note.classList.add("problem");
        end(s, "error");
        return;
      }
      s.drops += 1;
      s.waitingToResume = true;
      s.resumeFrom = s.lastEventId || "the start";
      s.answer.body.dataset.connection = "reconnecting";
      s.answer.note.textContent = `The connection dropped; reconnecting to resume after event ${s.resumeFrom}…`;
      return;
    }
    if (s.pieces === 0) { explainRefusal(s); return; }
    s.answer.note.textContent = "The connection closed before the answer ended; the stored answer is shown once " +
      "it has ended.";
    end(s, "error");
  }

  // An EventSource cannot read a refused answer (a 4xx or 5xx JSON body): ask the server what it would say.
  async function explainRefusal(s) {
    end(s, "error", false);
    let text = null;
    try {
      const ready = await fetch("readyz");
      if (!ready.ok) text = describeError(ready.status, await ready.json(), ready.headers);
      if (!text && s.conversationId) {  // deleted meanwhile, in another tab say: 404
        const conversation = await fetch(`conversations/${s.conversationId}?limit=1`, {headers: authHeaders()});
        if (conversation.status === 404) {
          text = "This conversation no longer exists (it was deleted); start a new one to send the message.";
        }
      }
      if (!text && apiKey()) {
        const {headers} = await api("conversations?limit=1");
        text = limitReached(headers);
      }
      if (!text && state.contextLength && Number($("max_tokens").value) >= state.contextLength) {
        text = `Max tokens must leave room for the prompt in the model's context of ${state.contextLength} tokens.`;
      }
    } catch (error) {
      text = error.message;
    }
    refused(s, text || "The server refused the stream. A browser's EventSource cannot read why; likely causes: the " +
            "key's limit of streams at once, a full queue, or a prompt too long for the model. Try again shortly.");
  }

  function limitReached(headers) {
    const value = (name) => headers.get(`x-ratelimit-${name}`);
    const seconds = (name) => (value(`reset-${name}`) || "").replace(/s$/, "");
    if (value("remaining-requests") === "0") {
      return `Rate limit reached: ${value("limit-requests")} requests per minute for this key. ` +
             `Try again in ${seconds("requests")} s.`;
    }
    const left = value("remaining-tokens");
    if (left !== null && Number(left) < Number($("max_tokens").value)) {
      return `Rate limit reached: ${value("limit-tokens")} tokens per minute for this key, ${left} left. ` +
             `Try again in ${seconds("tokens")} s, or lower max tokens.`;
    }
    return null;
  }

  // A message that never started: nothing was stored for it; its text goes back into the box.
  function refused(s, text) {
    showError(text);
    s.user.article.classList.add("failed");
    s.user.note.textContent = "Not sent.";
    s.answer.article.classList.add("failed");
    s.answer.meta.textContent = "";
    if (!$("prompt").value) $("prompt").value = s.prompt;
    end(s, "error");
  }

  function end(s, outcome, final = true) {
    if (s.source) { s.source.close(); }  // close, or the EventSource reconnects by itself
    clearTimeout(s.stopTimer);
    renderMarkdown(s.answer.body, s.text);
    s.answer.body.dataset.state = outcome;
    s.answer.article.removeAttribute("aria-busy");
    delete s.answer.body.dataset.connection;
    if (!final) return;
    if (state.stream === s) { state.stream = null; setBusy(false); }
  }

  // Stop: the server stops generating at once (it would otherwise wait for a reconnect first); the stream then
  // ends with finish_reason "cancelled", which also names a new conversation.
  function stop() {
    const s = state.stream;
    if (!s || s.stopping) return;
    s.stopping = true;
    $("stop").disabled = true;
    s.answer.meta.textContent = "stopping…";
    if (!s.source) {  // the stream token was still on its way: nothing was sent
      s.user.note.textContent = "Not sent.";
      end(s, "stopped");
      return;
    }
    if (s.messageId) requestStop(s);
  }

  async function requestStop(s) {
    let stopped = false;
    try {
      const query = s.token && !apiKey() ? "?" + new URLSearchParams({token: s.token}) : "";
      const response = await fetch(`chat/stream/${s.messageId}${query}`, {method: "DELETE", headers: authHeaders()});
      stopped = response.status === 204;
    } catch { /* the connection is gone: the server's grace period ends it */ }
    if (!stopped) { end(s, "stopped"); return; }
    s.stopTimer = setTimeout(() => end(s, "stopped"), 5000);  // the finish event normally comes first
  }

  // ---- the page's controls -----------------------------------------------------------------------------
  function closeSidebar() {
    $("sidebar").dataset.open = "false";
    $("toggle_sidebar").setAttribute("aria-expanded", "false");
  }

  function start() {
    loadSettings();
    $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
    $("stop").addEventListener("click", stop);
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key !== "Enter" || event.isComposing || event.keyCode === 229 || event.shiftKey || event.altKey) return;
      event.preventDefault();  // Enter (or Ctrl/Cmd+Enter) sends; Shift+Enter is a new line
      send();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape") return;
      if ($("sidebar").dataset.open === "true") closeSidebar();
      else if (state.stream) stop();
    });
    document.addEventListener("click", (event) => {  // on a phone, a tap beside the open list closes it
      if ($("sidebar").dataset.open === "true" && !$("sidebar").contains(event.target) &&
          !$("toggle_sidebar").contains(event.target)) closeSidebar();
    });
    $("new_chat").addEventListener("click", () => navigate(null));
    $("more_conversations").addEventListener("click", () => loadConversations({more: true}));
    $("toggle_sidebar").addEventListener("click", () => {
      const open = $("sidebar").dataset.open !== "true";
      $("sidebar").dataset.open = String(open);
      $("toggle_sidebar").setAttribute("aria-expanded", String(open));
      if (open) $("new_chat").focus();  // the keyboard goes where the list opened
    });
    for (const id of ["max_tokens", "temperature"]) {
      $(id).addEventListener("change", () => STORE.set(id, $(id).value));
    }
    $("model").addEventListener("change", () => STORE.set("model", $("model").value));
    $("remember_key").addEventListener("change", saveKey);
    $("api_key").addEventListener("change", () => {
      saveKey();
      loadConversations();
      loadModels();
      if (state.conversationId) openConversation(state.conversationId);
    });
    window.addEventListener("hashchange", () => openConversation(conversationFromAddress()));
    window.addEventListener("popstate", () => {
      if (!location.hash && state.conversationId) openConversation(null);
    });
    loadModels();
    loadConversations().then(setTitle);
    openConversation(conversationFromAddress());
  }

  start();
})();
