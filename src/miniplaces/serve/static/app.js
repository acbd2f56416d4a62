// miniplaces serve: the page. Plain JavaScript, no external assets; every model call goes to /api/*.
"use strict";

const state = { info: null, source: "val", offset: 0, image: null, clean: {}, seq: { predict: 0, attack: 0 },
                saliencySeq: {}, attackTimer: null };
const PAGE = 60;
const METHOD_NAMES = { vanilla: "vanilla gradient", smoothgrad: "SmoothGrad", gradcam: "Grad-CAM" };
const $ = (id) => document.getElementById(id);
// The server's token: every API call must carry it, which a page from another site cannot read.
const TOKEN = document.querySelector('meta[name="miniplaces-token"]').content;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;  // the CSP refuses style attributes, not the CSSOM
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function api(path, body) {
  const headers = { "X-Miniplaces-Token": TOKEN };
  const options = body === undefined ? { headers } : (body instanceof FormData
    ? { method: "POST", headers, body } : { method: "POST", headers: { ...headers, "Content-Type": "application/json" },
                                            body: JSON.stringify(body) });
  const response = await fetch(path, options);
  let payload;
  try { payload = await response.json(); } catch (err) { payload = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(payload.error || `${response.status} ${response.statusText}`);
  return payload;
}

function modelInfo(key) { return state.info.models.find((m) => m.key === key); }
function className(label) { return state.info.categories[label] ?? String(label); }

function topList(top, trueLabel) {
  const list = el("ol", { class: "top5" });
  for (const entry of top) {
    const percent = (100 * entry.probability).toFixed(1);
    const item = el("li", { "data-label": String(entry.label) },
      el("div", { class: "bar", style: `width:${percent}%` }),
      el("span", { text: entry.name }), el("span", { text: `${percent} %` }));
    if (entry.label === trueLabel) item.classList.add("true");
    list.append(item);
  }
  return list;
}

// --- gallery ---------------------------------------------------------------------------------------------------
function fillSources() {
  const select = $("source");
  const names = { val: "val split", folder: "folder", upload: "uploads" };
  select.replaceChildren();
  for (const [source, count] of Object.entries(state.info.sources)) {
    if (count === 0 && source !== state.source && source !== "upload") continue;
    select.append(el("option", { value: source, text: `${names[source]} (${count})` }));
  }
  select.value = state.source;
}

async function loadGallery(reset) {
  if (reset) { state.offset = 0; $("gallery").replaceChildren(); }
  const page = await api(`/api/images?source=${state.source}&offset=${state.offset}&limit=${PAGE}`);
  for (const item of page.items) {
    const button = el("button", { class: "thumb", type: "button", "data-id": item.id,
                                  title: item.label_name ? `${item.name}: ${item.label_name}` : item.name },
      el("img", { src: `/api/thumb/${encodeURIComponent(item.id)}?token=${encodeURIComponent(TOKEN)}`,
                  alt: item.name, loading: "lazy" }),
      el("span", { text: item.label_name ?? item.name }));
    button.addEventListener("click", () => selectImage(item));
    $("gallery").append(button);
  }
  state.offset += page.items.length;
  $("more").hidden = state.offset >= page.total;
  if (page.total === 0) status(state.source === "upload" ? "No uploads yet." : "No images in this source.");
}

// --- one image: prediction, saliency, attack ----------------------------------------------------------------
function modelColumn(info) {
  const methods = el("select", { class: "method", "aria-label": `saliency method of ${info.key}` });
  for (const method of info.methods) methods.append(el("option", { value: method, text: METHOD_NAMES[method] || method }));
  const target = el("select", { class: "target", "aria-label": `class to explain for ${info.key}` });
  const column = el("article", { class: "model", "data-model": info.key },
    el("h4", {}, `${info.key} · ${info.name} `, el("small", { text: `${info.checkpoint}, ${info.image_size}px` })),
    el("div", { class: "pics" },
      el("figure", {}, el("img", { class: "input", alt: `input of ${info.key}` }),
         el("figcaption", { text: "model input" })),
      el("figure", {}, el("img", { class: "saliency", alt: `saliency of ${info.key}` }),
         el("figcaption", { class: "saliency-caption", text: "saliency" }))),
    el("div", { class: "controls" }, el("label", {}, "map ", methods), el("label", {}, "class ", target)),
    el("div", { class: "top" }));
  methods.addEventListener("change", () => runSaliency(info.key));
  target.addEventListener("change", () => runSaliency(info.key));
  return column;
}

function fillTargets(column, top) {
  const select = column.querySelector("select.target");
  select.replaceChildren(el("option", { value: "", text: "predicted" }));
  const ranked = new Set(top.map((t) => t.label));
  for (const entry of top) select.append(el("option", { value: String(entry.label), text: `${entry.name} (top-5)` }));
  state.info.categories.forEach((name, label) => {
    if (!ranked.has(label)) select.append(el("option", { value: String(label), text: name }));
  });
}

async function selectImage(item) {
  state.image = item;
  for (const thumb of document.querySelectorAll(".thumb")) thumb.classList.toggle("active", thumb.dataset.id === item.id);
  $("empty").hidden = true;
  $("selected").hidden = false;
  $("image-name").textContent = item.name;
  $("true-label").textContent = item.label_name ? `true class: ${item.label_name}` : "no label";
  const seq = ++state.seq.predict;
  $("models").classList.add("busy");
  status("predicting…");
  try {
    const result = await api("/api/predict", { image: item.id });
    if (seq !== state.seq.predict) return;
    state.clean = {};
    for (const entry of result.results) {
      const column = $("models").querySelector(`[data-model="${entry.model}"]`);
      column.querySelector("img.input").src = entry.input;
      column.querySelector(".top").replaceChildren(topList(entry.top, item.label));
      column.dataset.top1 = String(entry.top[0].label);
      fillTargets(column, entry.top);
      state.clean[entry.model] = entry.top;
    }
    status("");
  } catch (err) { status(err.message, true); return; } finally { $("models").classList.remove("busy"); }
  await Promise.all(state.info.models.map((m) => runSaliency(m.key)));
  await runAttack();
}

async function runSaliency(key) {
  if (!state.image) return;
  const column = $("models").querySelector(`[data-model="${key}"]`);
  const method = column.querySelector("select.method").value;
  const target = column.querySelector("select.target").value;
  const seq = (state.saliencySeq[key] = (state.saliencySeq[key] || 0) + 1);
  const image = column.querySelector("img.saliency");
  image.classList.add("busy");
  try {
    const result = await api("/api/saliency", { image: state.image.id, model: key, method,
                                                target: target === "" ? null : Number(target) });
    if (seq !== state.saliencySeq[key]) return;
    image.src = result.overlay;
    column.dataset.saliency = `${result.method}:${result.target}`;
    column.querySelector(".saliency-caption").textContent = `${METHOD_NAMES[result.method]} for “${result.target_name}”`;
  } catch (err) { status(err.message, true); } finally { image.classList.remove("busy"); }
}

function epsValue() { return Number($("eps").value); }

async function runAttack() {
  if (!state.image) return;
  clearTimeout(state.attackTimer);
  const seq = ++state.seq.attack;
  const source = $("attack-model").value;
  $("attack-result").classList.add("busy");
  try {
    const result = await api("/api/attack", { image: state.image.id, model: source, attack: $("attack").value,
                                              eps: epsValue(), steps: Number($("steps").value) });
    if (seq !== state.seq.attack) return;
    $("adversarial").src = result.adversarial;
    $("perturbation").src = result.perturbation;
    $("perturbation-caption").textContent = result.linf > 0
      ? `perturbation × ${result.amplification.toFixed(0)} (max ${result.linf.toFixed(1)}/255)` : "no perturbation";
    const columns = [];
    for (const entry of result.results) {
      const info = modelInfo(entry.model);
      const verdict = entry.changed ? (entry.source ? "fooled" : "transfers: fooled") : (entry.source ? "holds" : "does not transfer");
      const column = el("article", { class: "model", "data-model": entry.model, "data-changed": String(entry.changed),
                                     "data-top1": String(entry.adversarial[0].label) },
        el("h4", {}, `${entry.model} · ${info.name} `,
           el("small", { text: entry.source ? "attacked model" : `adversarial image of ${source}` }),
           el("span", { class: entry.changed ? "badge fooled" : "badge", text: verdict })),
        el("div", { class: "top" }, topList(entry.adversarial, state.image.label)),
        el("small", { text: `clean top-1: ${entry.clean[0].name}` }));
      columns.push(column);
    }
    $("attack-models").replaceChildren(...columns);
    $("attack-result").dataset.eps = String(result.eps);
    status(`${$("attack").selectedOptions[0].text} at ε = ${result.eps}/255 on ${source}: ${result.seconds.toFixed(2)} s`);
  } catch (err) { status(err.message, true); } finally {
    if (seq === state.seq.attack) $("attack-result").classList.remove("busy");
  }
}

function scheduleAttack(delay) {
  clearTimeout(state.attackTimer);
  state.attackTimer = setTimeout(runAttack, delay);
}

// --- upload -----------------------------------------------------------------------------------------------------
async function upload(file) {
  if (file.size > state.info.max_upload_bytes) {
    status(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; uploads are limited to ${state.info.max_upload_bytes / 2 ** 20} MB`, true);
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const { item } = await api("/api/upload", form);
    state.info.sources = (await api("/api/info")).sources;
    state.source = "upload";
    fillSources();
    await loadGallery(true);
    await selectImage(item);
  } catch (err) { status(err.message, true); }
}

// --- start ------------------------------------------------------------------------------------------------------
async function start() {
  try { state.info = await api("/api/info"); } catch (err) { status(err.message, true); return; }
  const info = state.info;
  $("model-list").textContent = info.models.map((m) => `${m.key}: ${m.name} (${m.checkpoint})`).join(" · ");
  $("models").replaceChildren(...info.models.map(modelColumn));
  for (const m of info.models) $("attack-model").append(el("option", { value: m.key, text: `${m.key} · ${m.name}` }));
  $("attack-model-label").hidden = info.models.length < 2;
  const params = new URLSearchParams(location.search);
  $("eps").max = String(info.max_eps);
  if (params.has("eps")) $("eps").value = params.get("eps");
  if (params.has("attack")) $("attack").value = params.get("attack");
  $("eps-value").textContent = `${epsValue()}/255`;
  state.source = info.sources.val > 0 ? "val" : (info.sources.folder > 0 ? "folder" : "upload");
  fillSources();
  $("source").addEventListener("change", () => { state.source = $("source").value; loadGallery(true).catch((e) => status(e.message, true)); });
  $("more").addEventListener("click", () => loadGallery(false).catch((e) => status(e.message, true)));
  $("upload").addEventListener("change", (event) => { if (event.target.files[0]) upload(event.target.files[0]); event.target.value = ""; });
  $("eps").addEventListener("input", () => { $("eps-value").textContent = `${epsValue()}/255`; scheduleAttack(300); });
  $("eps").addEventListener("change", () => scheduleAttack(0));
  for (const id of ["attack", "attack-model", "steps"]) $(id).addEventListener("change", () => scheduleAttack(0));
  try { await loadGallery(true); } catch (err) { status(err.message, true); return; }
  document.body.dataset.ready = "true";
  const wanted = params.get("image");
  if (wanted) {
    const thumb = document.querySelector(`.thumb[data-id="${CSS.escape(wanted)}"]`);
    if (thumb) thumb.click(); else status(`no image ${wanted} in this source`, true);
  }
}

start();
