// The w2s playground: one prompt, three methods streaming side by side through the server's own
// OpenAI-compatible endpoints (/v1/models, /v1/chat/completions, /v1/completions).  No library, no CDN.
"use strict";

const ABOUT = {
  sampling: "The large model alone: plain sampling, the baseline.",
  cbs: "Weak-to-strong search: chunk-level beam search over the large model's samples, scored by the small " +
       "tuned and untuned models' log-likelihood difference.",
  bon: "Best-of-N: N whole samples of the large model, the best by the small models' score.",
  eft: "Emulated fine-tuning: the large model's logits shifted by the small models' difference, token by token.",
  adaptive: "Weak-to-strong search with a schedule of widths.",
  pruned_bon: "Best-of-N whose samples are pruned by their score part-way.",
  stream_aligner: "Stream Aligner: a small aligner corrects the large model's answer sentence by sentence as " +
                  "it streams.",
  aligner: "Aligner: a small aligner corrects the large model's whole answer.",
};
const DEFAULTS = ["sampling", "cbs", "stream_aligner"];
const $ = (selector, root = document) => root.querySelector(selector);
const state = { model: null, methods: [], parameters: {}, key: sessionStorage.getItem("w2s-key") || "", runs: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

function notice(text) {
  $("#notice").textContent = text || "";
  $("#notice").hidden = !text;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("#auth").hidden = false;
    notice(state.key ? "The API key was refused: " + await errorText(response) : "");
    $("#run").disabled = true;
    return;
  }
  if (!response.ok) {
    notice("/v1/models answered " + response.status + ": " + await errorText(response));
    return;
  }
  const model = (await response.json()).data[0];
  state.model = model.id;
  state.methods = model.w2s.methods;
  state.parameters = model.w2s.parameters;
  $("#model").textContent = model.id;
  notice("");
  $("#run").disabled = false;
  const columns = document.querySelectorAll(".column");
  const unused = state.methods.filter((m) => !DEFAULTS.includes(m));
  columns.forEach((column, i) => {
    const select = $(".method", column);
    select.replaceChildren(...state.methods.map((m) => new Option(m, m)));
    let wanted = DEFAULTS[i];
    if (!state.methods.includes(wanted)) wanted = unused.shift() || state.methods[0];
    select.value = wanted;
    describe(column);
  });
}

function describe(column) {
  const method = $(".method", column).value;
  $(".about", column).textContent = ABOUT[method] || "";
  $(".params", column).title = "its parameters: " + (state.parameters[method] || []).join(", ");
}

function set(column, field, value) {
  $("." + field, column).textContent = value === null || value === undefined ? "–" : value;
}

function reset(column) {
  column.dataset.state = "running";
  set(column, "status", "waiting");
  $(".text", column).textContent = "";
  for (const field of ["score", "sampled", "small", "tokens", "first", "total"]) set(column, field, null);
}

function request(column) {
  const prompt = $("#prompt").value;
  const w2s = { method: $(".method", column).value };
  const extra = $(".params", column).value.trim();
  if (extra) Object.assign(w2s, JSON.parse(extra));  // a SyntaxError is shown in the column
  const body = { model: state.model, stream: true, stream_options: { include_usage: true },
                 seed: Number($("#seed").value), w2s };
  const takes = state.parameters[w2s.method] || [];
  // the aligners' lengths are the server's (sentences, and tokens per sentence and per correction)
  if (takes.includes("max_new_tokens")) body.max_tokens = Number($("#max-tokens").value);
  const temperature = $("#temperature").value;
  if (temperature !== "" && takes.includes("temperature")) body.temperature = Number(temperature);
  const chat = $("#chat").checked;
  if (chat) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  return { url: chat ? "/v1/chat/completions" : "/v1/completions", body, chat };
}

// Server-sent events: "data: {...}" blocks separated by a blank line, ending with "data: [DONE]".
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function run(column, signal) {
  reset(column);
  const started = performance.now();
  const seconds = () => ((performance.now() - started) / 1000).toFixed(2) + " s";
  try {
    const { url, body, chat } = request(column);
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
    if (!response.ok) throw new Error(response.status + ": " + await errorText(response));
    set(column, "status", "streaming");
    for await (const data of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) set(column, "tokens", chunk.usage.completion_tokens);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const text = chat ? choice.delta && choice.delta.content : choice.text;
      if (text) {
        if (!$(".text", column).textContent) set(column, "first", seconds());
        $(".text", column).textContent += text;
      }
      if (choice.finish_reason) {
        const costs = choice.w2s || {};
        set(column, "score", costs.score === null || costs.score === undefined ? null : costs.score.toFixed(3));
        set(column, "sampled", costs.sampled_tokens);
        set(column, "small", costs.small_tokens);
        set(column, "status", choice.finish_reason === "stop" ? "done" : "done (length)");
      }
    }
    set(column, "total", seconds());
    column.dataset.state = "done";
  } catch (err) {
    column.dataset.state = "error";
    set(column, "status", err.name === "AbortError" ? "stopped" : "error");
    if (err.name !== "AbortError") $(".text", column).textContent = err.message;
  }
}

async function runAll(event) {
  event.preventDefault();
  const controller = new AbortController();
  state.runs.push(controller);
  $("#run").disabled = true;
  $("#stop").disabled = false;
  await Promise.all([...document.querySelectorAll(".column")].map((c) => run(c, controller.signal)));
  state.runs = state.runs.filter((c) => c !== controller);
  $("#run").disabled = false;
  $("#stop").disabled = state.runs.length === 0;
}

function init() {
  const template = $("#column");
  for (let i = 0; i < 3; i++) {
    const column = template.content.firstElementChild.cloneNode(true);
    $(".method", column).addEventListener("change", () => describe(column));
    $("#columns").appendChild(column);
  }
  $("#ask").addEventListener("submit", runAll);
  $("#stop").addEventListener("click", () => state.runs.forEach((c) => c.abort()));
  $("#use-key").addEventListener("click", () => {
    state.key = $("#key").value.trim();
    sessionStorage.setItem("w2s-key", state.key);
    loadModels();
  });
  const query = new URLSearchParams(location.search);
  if (query.has("prompt")) $("#prompt").value = query.get("prompt");
  loadModels();
}

init();
