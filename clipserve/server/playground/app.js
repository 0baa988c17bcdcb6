// clipserve playground: every panel calls the public API (/readyz, /encode, /rank, /search) of this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, info: null, model: null, gallery: [], index: null };

// -- API ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && (body.detail || (body.error && body.error.message) || body.error);
    super(`${status} ${(body && body.error && typeof body.error === "string") ? body.error + ": " : ""}${detail || "request failed"}`);
    this.status = status;
    this.index = body ? body.index : null;
  }
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined && state.model) body = { ...body, model: state.model };
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json().catch(() => null);
  if (response.status === 401) {
    showKeyForm(state.key ? "That key was refused: enter the server's API key." : null);
  }
  if (!response.ok) throw new ApiError(response.status, answer);
  if (body !== undefined && state.info && state.info.state && state.info.state !== "ready") {
    loadInfo();  // the model was loaded for this request: show it as it now runs
  }
  return answer;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function fileInput(file) {
  const uri = await readAsDataURL(file);
  return file.type.startsWith("audio/") ? { audio: uri } : { image: uri };
}

const unit = (v) => { const n = Math.hypot(...v); return v.map((x) => x / n); };
const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);

// -- states: errors, busy buttons -----------------------------------------------------------------

function showError(error, names) {
  const box = $("error");
  let message = error.message || String(error);
  if (error.index !== null && error.index !== undefined && names && names[error.index] !== undefined) {
    message += ` (item: ${names[error.index]})`;
  }
  box.textContent = message;
  box.hidden = false;
}

async function busy(button, work) {
  $("error").hidden = true;
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = "Working…";
  try {
    await work();
  } catch (error) {
    showError(error, error.names);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = label;
  }
}

function withNames(names, promise) {
  return promise.catch((error) => { error.names = names; throw error; });
}

// -- model info and the API key -------------------------------------------------------------------

function showKeyForm(message) {
  $("key-form").hidden = false;
  $("model-info").textContent = message || "This server needs its API key.";
  $("api-key").focus();
}

async function loadInfo() {
  try {
    const ready = await api("readyz");
    $("key-form").hidden = true;
    const names = Object.keys(ready.models || {});
    $("model-picker").hidden = names.length < 2;
    if (names.length > 1 && !$("model-choice").options.length) {
      for (const name of names) $("model-choice").add(new Option(name, name));
    }
    showModel(ready.models && state.model ? ready.models[state.model] : ready);
    showIndex(ready.index);
  } catch (error) {
    if (error.status !== 401) $("model-info").textContent = `not ready: ${error.message}`;
  }
}

function showModel(info) {
  state.info = info;
  const parts = [info.model, info.family, `${info.dim}-d`, info.backend, info.device, info.precision];
  const unloaded = info.state && info.state !== "ready" ? `${info.state}: loads on first use` : null;
  $("model-info").textContent = [...parts, unloaded].filter(Boolean).join(" · ");
  const hears = (info.modalities || []).includes("audio");
  for (const id of ["embed-file", "rank-query-file"]) $(id).accept = hears ? "image/*,audio/*" : "image/*";
}

$("model-choice").addEventListener("change", () => {
  state.model = $("model-choice").value;
  state.gallery = [];  // vectors of one model do not compare with another's
  loadInfo();
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim() || null;  // kept in this page only
  loadInfo();
});

// -- tabs -----------------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];
function select(tab) {
  for (const other of tabs) {
    const chosen = other === tab;
    other.setAttribute("aria-selected", String(chosen));
    other.tabIndex = chosen ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !chosen;
  }
  tab.focus();
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) select(tabs[(i + step + tabs.length) % tabs.length]);
  });
});

// -- Embed ----------------------------------------------------------------------------------------

function drawStrip(vector) {
  const canvas = $("embed-strip");
  const context = canvas.getContext("2d");
  const scale = Math.max(...vector.map(Math.abs)) || 1;
  const width = canvas.width / vector.length;
  vector.forEach((value, i) => {
    const t = value / scale;  // blue for negative, orange for positive
    context.fillStyle = t < 0 ? `rgba(37, 99, 235, ${-t})` : `rgba(234, 88, 12, ${t})`;
    context.clearRect(i * width, 0, width, canvas.height);
    context.fillRect(i * width, 0, Math.max(width, 1), canvas.height);
  });
}

function showVector(what, vector) {
  $("embed-what").textContent = what;
  $("embed-dim").textContent = vector.length;
  $("embed-json").value = JSON.stringify(vector);
  drawStrip(vector);
  $("embed-result").hidden = false;
}

async function embedFile(file) {
  const answer = await withNames([file.name], api("encode", { inputs: [await fileInput(file)] }));
  showVector(file.name, answer.embeddings[0]);
}

$("embed-text-go").addEventListener("click", (event) => busy(event.target, async () => {
  const text = $("embed-text").value;
  const answer = await withNames([text], api("encode", { inputs: [{ text }] }));
  showVector(`“${text.length > 40 ? text.slice(0, 40) + "…" : text}”`, answer.embeddings[0]);
}));
$("embed-file").addEventListener("change", (event) => {
  if (event.target.files[0]) busy($("embed-text-go"), () => embedFile(event.target.files[0]));
});
const drop = $("embed-drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) busy($("embed-text-go"), () => embedFile(event.dataTransfer.files[0]));
});
document.addEventListener("paste", (event) => {
  if ($("panel-embed").hidden) return;
  const item = [...event.clipboardData.items].find((i) => i.kind === "file");
  if (item) busy($("embed-text-go"), () => embedFile(item.getAsFile()));
});
$("embed-copy").addEventListener("click", () => {
  $("embed-json").select();
  navigator.clipboard?.writeText($("embed-json").value).catch(() => document.execCommand("copy"));
});

// -- Zero-shot / rank -----------------------------------------------------------------------------

$("rank-go").addEventListener("click", (event) => busy(event.target, async () => {
  const file = $("rank-query-file").files[0];
  const query = file ? await fileInput(file) : { text: $("rank-query-text").value };
  const labels = $("rank-labels").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const template = $("rank-template").value.includes("{}") ? $("rank-template").value : "{}";
  const prompts = labels.map((label) => template.replace("{}", label));
  const answer = await withNames(prompts, api("rank", { query, candidates: prompts.map((text) => ({ text })) }));
  const bars = $("rank-bars");
  bars.replaceChildren(...answer.matches.map((match) => {
    const item = document.createElement("li");
    item.dataset.index = match.index;
    item.dataset.score = match.clip_score;
    item.dataset.cosine = match.cosine;
    item.innerHTML = `<span class="label"></span><span class="bar"><span></span></span><span class="value"></span>`;
    item.querySelector(".label").textContent = labels[match.index];
    item.querySelector(".bar span").style.width = `${(100 * match.clip_score).toFixed(1)}%`;
    item.querySelector(".value").textContent = `${(100 * match.clip_score).toFixed(1)} % · cos ${match.cosine.toFixed(3)}`;
    return item;
  }));
}));

// -- Similarity matrix ----------------------------------------------------------------------------

$("matrix-go").addEventListener("click", (event) => busy(event.target, async () => {
  const texts = $("matrix-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const files = [...$("matrix-files").files];
  if (!texts.length || !files.length) throw new Error("give at least one text and one image");
  const inputs = [...texts.map((text) => ({ text })), ...(await Promise.all(files.map(fileInput)))];
  const names = [...texts, ...files.map((f) => f.name)];
  const vectors = (await withNames(names, api("encode", { inputs }))).embeddings.map(unit);
  const values = texts.map((_, t) => files.map((_, f) => dot(vectors[t], vectors[texts.length + f])));
  const flat = values.flat();
  const low = Math.min(...flat), high = Math.max(...flat);
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  for (const file of files) {
    const cell = document.createElement("th");
    cell.scope = "col";
    const image = document.createElement("img");
    image.src = URL.createObjectURL(file);
    image.alt = file.name;
    cell.append(image);
    head.append(cell);
  }
  const body = table.createTBody();
  values.forEach((row, t) => {
    const line = body.insertRow();
    const label = document.createElement("th");
    label.scope = "row";
    label.textContent = texts[t];
    line.append(label);
    row.forEach((value, f) => {
      const cell = line.insertCell();
      const t01 = high > low ? (value - low) / (high - low) : 0.5;
      cell.dataset.value = value;
      cell.tabIndex = 0;
      cell.title = `${texts[t]} × ${files[f].name}: ${value.toFixed(4)}`;
      cell.setAttribute("aria-label", cell.title);
      cell.style.background = `rgba(234, 88, 12, ${0.1 + 0.9 * t01})`;
      cell.textContent = value.toFixed(3);
    });
  });
  $("matrix-out").replaceChildren(table);
}));

// -- Search ---------------------------------------------------------------------------------------

const BATCH = 8;

$("search-index").addEventListener("click", (event) => busy(event.target, async () => {
  const chosen = [...$("search-files").files, ...$("search-folder").files];
  const files = chosen.filter((f) => f.type.startsWith("image/"));
  if (!files.length) throw new Error("choose some images first");
  const progress = $("search-progress");
  progress.hidden = false;
  progress.max = files.length;
  progress.value = 0;
  state.gallery = [];
  for (let start = 0; start < files.length; start += BATCH) {
    const part = files.slice(start, start + BATCH);
    const inputs = await Promise.all(part.map(fileInput));
    const answer = await withNames(part.map((f) => f.name), api("encode", { inputs }));
    part.forEach((file, i) => state.gallery.push({ file, vector: unit(answer.embeddings[i]) }));
    progress.value = state.gallery.length;
    $("search-status").textContent = `${state.gallery.length} of ${files.length} images embedded`;
  }
  progress.hidden = true;
}));

$("search-go").addEventListener("click", (event) => busy(event.target, async () => {
  if (!state.gallery.length) throw new Error("embed some images first");
  const file = $("search-image").files[0];
  const query = file ? await fileInput(file) : { text: $("search-text").value };
  const vector = unit((await api("encode", { inputs: [query] })).embeddings[0]);
  const k = Math.max(1, Number($("search-k").value) || 5);
  const best = state.gallery
    .map((entry) => ({ ...entry, score: dot(entry.vector, vector) }))
    .sort((a, b) => b.score - a.score)
    .slice(0, k);
  $("search-results").replaceChildren(...best.map((entry) => {
    const item = document.createElement("li");
    item.dataset.name = entry.file.name;
    item.dataset.score = entry.score;
    const image = document.createElement("img");
    image.src = URL.createObjectURL(entry.file);
    image.alt = entry.file.name;
    const caption = document.createElement("span");
    caption.textContent = `${entry.file.name} · ${entry.score.toFixed(3)}`;
    item.append(image, caption);
    return item;
  }));
}));

// -- Search the server's index (clipserve serve --index DIR) ------------------------------------------

function showIndex(index) {
  state.index = index || null;
  $("served-search").hidden = !index;
  if (index) $("served-index-info").textContent = `${index.index}: ${index.items} items of ${index.model}, ${index.search} search`;
}

async function thumbnail(path) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const response = await fetch(path, { headers });  // with the key: an <img src> could not send it
  if (!response.ok) return null;
  return URL.createObjectURL(await response.blob());
}

$("served-go").addEventListener("click", (event) => busy(event.target, async () => {
  const file = $("served-image").files[0];
  const query = file ? await fileInput(file) : { text: $("served-text").value };
  const k = Math.max(1, Number($("served-k").value) || 8);
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch("search", { method: "POST", headers, body: JSON.stringify({ query, k }) });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, answer);
  const items = await Promise.all(answer.results.map(async (hit) => {
    const item = document.createElement("li");
    item.dataset.id = hit.id;
    item.dataset.score = hit.score;
    const name = hit.metadata.path ? hit.metadata.path.split("/").pop() : (hit.metadata.caption || hit.id);
    if (hit.thumbnail) {
      const image = document.createElement("img");
      image.alt = name;
      image.src = (await thumbnail(hit.thumbnail)) || "";
      item.append(image);
    }
    const caption = document.createElement("span");
    caption.textContent = `${name} · ${hit.score.toFixed(3)}`;
    item.append(caption);
    return item;
  }));
  $("served-results").replaceChildren(...items);
}));

loadInfo();
