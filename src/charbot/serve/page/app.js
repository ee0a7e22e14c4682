// The charbot page: pick a character, talk to it with streamed replies, reset, read its card.
// A plain script served by `charbot serve` itself: no build step, nothing fetched from anywhere else.
// Card text is always set as text, never as markup.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "charbot.apiKey";
  const CARD_LABELS = {
    description: "Description", personality: "Personality", scenario: "Scenario", mes_example: "Example dialogue",
    tags: "Tags", creator_notes: "Creator's notes", creator: "Creator", character_version: "Version",
  };
  const state = { characters: [], current: null, conversation: "", busy: false, key: localStorage.getItem(KEY_STORE) || "" };

  // A conversation id of our own: charbot's memory keeps the history under it, so each message sends only itself.
  // (crypto.randomUUID needs a secure context; getRandomValues works over plain http on a LAN too.)
  function newConversation() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    state.conversation = "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    document.body.dataset.conversation = state.conversation;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function status(text) {
    $("status").textContent = text || "";
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (state.key) headers.Authorization = "Bearer " + state.key;
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      $("key-form").hidden = false;
      throw new Error("this server asks for an API key");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON: keep the status line */ }
      throw new Error(message);
    }
    return response;
  }

  function avatar(character) {
    if (character.avatar) {
      const img = el("img", "avatar");
      img.src = character.avatar;
      img.alt = "";
      return img;
    }
    return el("span", "avatar initials", character.initials);
  }

  function renderPicker() {
    $("characters").replaceChildren(...state.characters.map((c) => {
      const button = el("button", "character");
      button.type = "button";
      button.dataset.id = c.id;
      button.setAttribute("aria-pressed", String(state.current && c.id === state.current.id));
      button.append(avatar(c), el("span", "name", c.name));
      button.addEventListener("click", () => { if (!state.busy) choose(c.id); });
      return button;
    }));
  }

  function renderCard(c) {
    const fields = $("card-fields");
    fields.replaceChildren();
    for (const [field, label] of Object.entries(CARD_LABELS)) {
      const value = Array.isArray(c.card[field]) ? c.card[field].join(", ") : c.card[field];
      if (!value) continue;
      fields.append(el("dt", "", label), el("dd", field === "mes_example" ? "example" : "", value));
    }
  }

  // The lorebook entries that the last reply's prompt held, and why each fired.
  function showLore(entries) {
    $("lorebook-entries").replaceChildren(...entries.map((text) => el("li", "", text)));
    $("lorebook").hidden = entries.length === 0;
  }

  function addMessage(role, name, text) {
    const item = el("li", role);
    item.append(el("b", "speaker", name), el("div", "text", text));
    $("log").append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function showGreeting() {
    $("log").replaceChildren();
    showLore([]);
    if (state.current.greeting) addMessage("assistant greeting", state.current.name, state.current.greeting);
  }

  function choose(id) {
    state.current = state.characters.find((c) => c.id === id);
    newConversation();
    renderPicker();
    const who = $("who");
    who.replaceChildren(avatar(state.current), el("span", "name", state.current.name));
    renderCard(state.current);
    showGreeting();
    status("");
    $("message").focus();
  }

  // Server-sent events from a fetch body: "data: {...}" blocks separated by a blank line, ending with [DONE].
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data === "[DONE]") return;
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    for (const id of ["send", "reset"]) $(id).disabled = busy;
    document.body.classList.toggle("busy", busy);
  }

  async function send(text) {
    const c = state.current;
    setBusy(true);
    addMessage("user", "You", text);
    const item = addMessage("assistant streaming", c.name, "");
    const shown = item.querySelector(".text");
    let reply = "";
    let chunks = 0;
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Conversation-Id": state.conversation },
        body: JSON.stringify({ model: c.id, stream: true, messages: [{ role: "user", content: text }] }),
      });
      await readEvents(response.body, (event) => {
        if (event.error) throw new Error(event.error.message);
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        if (delta && delta.content) {
          reply += delta.content;
          chunks += 1;
        }
        // clean-up changed what was streamed (a reply cut at the token cap ends at its last full sentence)
        if (event.charbot && typeof event.charbot.replaced === "string") reply = event.charbot.replaced;
        if (event.choices && event.choices[0] && event.choices[0].finish_reason) showLore((event.charbot && event.charbot.lorebook) || []);
        shown.textContent = reply;
        item.dataset.chunks = String(chunks);
        item.scrollIntoView({ block: "end" });
      });
      status("");
    } catch (error) {
      item.classList.add("error");
      shown.textContent = reply || "(no reply)";
      status("Error: " + error.message);
    } finally {
      item.classList.remove("streaming");
      item.dataset.done = "true";
      setBusy(false);
      $("message").focus();
    }
  }

  async function reset() {
    setBusy(true);
    try {
      await api("/v1/conversations/" + encodeURIComponent(state.conversation), { method: "DELETE" });
      showGreeting();
      status("Conversation forgotten.");
    } catch (error) {
      status("Error: " + error.message);
    } finally {
      setBusy(false);
    }
  }

  async function start() {
    try {
      const response = await api("/v1/characters");
      state.characters = (await response.json()).data;
      $("key-form").hidden = true;
      choose(state.characters[0].id);
      document.body.dataset.ready = "true";
    } catch (error) {
      status("Error: " + error.message);
    }
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message").value.trim();
    if (!text || state.busy || !state.current) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("reset").addEventListener("click", () => { if (!state.busy) reset(); });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    localStorage.setItem(KEY_STORE, state.key);
    start();
  });
  start();
})();
