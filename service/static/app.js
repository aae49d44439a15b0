// glimpse's web page: plain JavaScript against the HTTP API, no build step, nothing
// loaded from elsewhere. Every request goes to this server; its JSON errors are shown as
// they come ({"error": {"type", "message", "request_id"}}).
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324"];

const state = {
  image: null,      // Blob of the image the image panels send
  models: [],       // GET /v1/models
};

// ------------------------------------------------------------------ the API

class ApiError extends Error {}

function apiKey() {
  return $("#api-key").value.trim();
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error;
    throw new ApiError(error ? `${response.status} ${error.type}: ${error.message}`
                             : `${response.status} ${response.statusText}`);
  }
  return body;
}

function formOf(form, extra = {}) {
  // The form's visible, non-empty fields (a hidden knob belongs to the other decoding).
  const data = new FormData();
  for (const element of form.elements) {
    if (!element.name || element.value === "" || element.closest("[hidden]")) continue;
    data.append(element.name, element.value);
  }
  for (const [name, value] of Object.entries(extra)) data.append(name, value);
  return data;
}

// ------------------------------------------------------------------ status and errors

function setStatus(text) {
  $("#status").textContent = text;
}

function showError(target, error) {
  target.replaceChildren(element("p", { className: "error", role: "alert" }, error.message));
}

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ models

async function loadModels() {
  try {
    const listing = await api("/v1/models");
    state.models = listing.models;
  } catch (error) {
    setStatus(error.message);
    return;
  }
  for (const select of document.querySelectorAll("select[data-task]")) {
    const served = state.models.filter((m) => m.task === select.dataset.task);
    select.replaceChildren(...served.map((m) => element(
      "option", { value: m.id, selected: m.default }, m.default ? `${m.id} (default)` : m.id)));
    select.closest("section").hidden = served.length === 0;
  }
  setStatus(`${state.models.length} models served`);
}

function modelInfo(select) {
  return state.models.find((m) => m.id === select.value);
}

// ------------------------------------------------------------------ the image

function setImage(blob, label) {
  state.image = blob;
  const picture = $("#picture");
  if (picture.src) URL.revokeObjectURL(picture.src);
  picture.src = URL.createObjectURL(blob);
  picture.alt = `the image the models look at: ${label}`;
  $("#domain").hidden = true;
  setStatus(`image: ${label}`);
}

async function loadSamples() {
  const samples = await fetch("/static/samples/samples.json").then((r) => r.json());
  const box = $("#samples");
  for (const sample of samples) {
    const url = `/static/samples/${sample.file}`;
    const button = element("button", { type: "button", title: sample.caption },
                           element("img", { src: url, alt: sample.caption }));
    button.addEventListener("click", async () => {
      setImage(await fetch(url).then((r) => r.blob()), `sample: ${sample.caption}`);
    });
    box.append(button);
  }
  if (!state.image && samples.length) box.querySelector("button").click();
}

function wireImageInputs() {
  const zone = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    if (input.files[0]) setImage(input.files[0], input.files[0].name);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
}

function showDomain(domain) {
  // The distance of the image from the model's training images, with its threshold.
  const box = $("#domain");
  if (!domain) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.classList.toggle("ok", domain.in_domain);
  box.textContent = domain.in_domain
    ? `In domain: distance ${domain.score.toFixed(2)} from the training images ` +
      `(threshold ${domain.threshold.toFixed(2)}).`
    : `Warning: this image is unlike the images the model was trained on (distance ` +
      `${domain.score.toFixed(2)}, threshold ${domain.threshold.toFixed(2)}); ` +
      `its answers may be meaningless.`;
}

// ------------------------------------------------------------------ what the models see

const FIGURE_SIDE = 224;

function figure() {
  // A copy of the image, stretched square as the models see it, to draw on.
  const canvas = element("canvas", { className: "figure", width: FIGURE_SIDE,
                                     height: FIGURE_SIDE });
  canvas.setAttribute("role", "img");
  repaint(canvas);
  return canvas;
}

function repaint(canvas) {
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage($("#picture"), 0, 0, canvas.width, canvas.height);
  canvas.dataset.marks = "0";
  return context;
}

function drawHeatmap(canvas, weights, label) {
  const context = repaint(canvas);
  const rows = weights.length;
  const cols = weights[0].length;
  const top = Math.max(...weights.flat());
  const side = canvas.width;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      context.fillStyle = `rgba(255, 40, 0, ${0.7 * weights[r][c] / top})`;
      context.fillRect(c * side / cols, r * side / rows, side / cols, side / rows);
    }
  }
  canvas.dataset.marks = String(rows * cols);
  canvas.setAttribute("aria-label", `where the model looked for “${label}”`);
}

function drawBoxes(canvas, boxes, label) {
  // boxes come in pixels of the image as sent; the figure shows it stretched square
  const context = repaint(canvas);
  const picture = $("#picture");
  const sx = canvas.width / picture.naturalWidth;
  const sy = canvas.height / picture.naturalHeight;
  context.lineWidth = 3;
  for (const { box, color, alpha = 1 } of boxes) {
    const [x0, y0, x1, y1] = box;
    context.globalAlpha = alpha;
    context.strokeStyle = color;
    context.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  }
  context.globalAlpha = 1;
  canvas.dataset.marks = String(boxes.length);
  canvas.setAttribute("aria-label", label);
}

// ------------------------------------------------------------------ panels

function imagePanel(formId, resultId, path, extra, render) {
  const form = $(formId);
  const result = $(resultId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!state.image) {
      showError(result, new Error("choose an image first"));
      return;
    }
    result.replaceChildren(element("p", { className: "muted" }, "working…"));
    try {
      const answer = await api(path, { method: "POST",
                                       body: formOf(form, { ...extra(form), file: state.image }) });
      showDomain(answer.domain);
      render(answer, result);
    } catch (error) {
      showError(result, error);
    }
  });
}

function renderCaptions(answer, result) {
  const list = element("ol");
  answer.captions.forEach((caption) => list.append(
    element("li", {}, caption.text, element("span", { className: "muted" },
                                            ` (log p ${caption.log_prob.toFixed(2)})`))));
  result.replaceChildren(element("p", { className: "muted" }, `model ${answer.model}`), list);
  if (!answer.attention) return;
  // The first caption's words: each shows where the model looked when it said it.
  const canvas = figure();
  const words = element("div", { className: "words", role: "group",
                                 ariaLabel: "attention of each word" });
  answer.attention[0].forEach((word, index) => {
    const button = element("button", { type: "button" }, word.word);
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => {
      words.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      button.setAttribute("aria-pressed", "true");
      drawHeatmap(canvas, word.weights, word.word);
    });
    words.append(button);
    if (index === 0) queueMicrotask(() => button.click());
  });
  result.append(element("p", { className: "muted" }, "Attention of each word (choose one):"),
                words, canvas);
}

function renderAnswers(answer, result) {
  const list = element("ol");
  for (const a of answer.answers) {
    list.append(element("li", {}, `${a.answer} `,
                        element("span", { className: "muted" }, a.score.toFixed(3)),
                        element("span", { className: "bar",
                                          style: `width:${Math.round(a.score * 80)}px` })));
  }
  result.replaceChildren(element("p", { className: "muted" }, `model ${answer.model}`), list);
  if (answer.attention) {
    const top = Math.max(...answer.attention.map((r) => r.weight));
    const canvas = figure();
    drawBoxes(canvas, answer.attention.map((r) => ({ box: r.box, color: "#ff2a00",
                                                     alpha: Math.max(0.08, r.weight / top) })),
              "the regions the model attended to");
    result.append(element("p", { className: "muted" },
                          "The regions the model attended to (brighter: more):"), canvas);
  }
}

function renderAlignment(answer, result) {
  const list = element("ul");
  const boxes = answer.segments.map((segment, i) => {
    const color = COLORS[i % COLORS.length];
    list.append(element("li", {}, element("span", { className: "swatch",
                                                     style: `background:${color}` }),
                        `“${segment.text}” `,
                        element("span", { className: "muted" },
                                `score ${segment.score.toFixed(2)}`)));
    return { box: segment.box, color };
  });
  const canvas = figure();
  drawBoxes(canvas, boxes, "the region of each phrase, in its colour");
  result.replaceChildren(element("p", { className: "muted" },
                                 `model ${answer.model}, sentence score ` +
                                 `${answer.score.toFixed(2)}`), list, canvas);
}

function renderNeighbours(answer, result) {
  const list = element("ol");
  for (const hit of answer.results) {
    list.append(element("li", {}, `${hit.text} `,
                        element("span", { className: "muted" }, hit.score.toFixed(3))));
  }
  result.replaceChildren(element("p", { className: "muted" }, `model ${answer.model}`), list);
}

function wireCaptionKnobs() {
  const form = $("#caption-form");
  const decoding = form.elements.decoding;
  decoding.addEventListener("change", () => {
    for (const label of form.querySelectorAll("[data-decoding]")) {
      label.hidden = label.dataset.decoding !== decoding.value;
    }
  });
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function wireGeneration() {
  const form = $("#generation-form");
  const result = $("#generation-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(formOf(form));
    const body = { prompt: fields.prompt, n: Number(fields.n || 1) };
    if (fields.model) body.model = fields.model;
    if (fields.seed) body.seed = Number(fields.seed);
    result.replaceChildren(element("p", { className: "muted" }, "drawing…"));
    try {
      const answer = await api("/v1/images/generations", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body) });
      const grid = element("div", { className: "grid" });
      answer.data.forEach((item, index) => {
        const src = `data:image/png;base64,${item.b64_json}`;
        const label = `seed ${answer.seed}, image ${index + 1}`;
        const use = element("button", { type: "button", className: "thumb-button",
                                        title: `use ${label} as the image` },
                            element("img", { src, alt: `${body.prompt}, ${label}` }));
        use.addEventListener("click", () => {
          setImage(pngBlob(item.b64_json), `generated: ${body.prompt}, ${label}`);
        });
        grid.append(element("figure", {}, use, element("figcaption", {}, label)));
      });
      result.replaceChildren(
        element("p", { className: "muted" },
                `model ${answer.model}, seed ${answer.seed} (same seed, same images); ` +
                "choose one to use it as the image"), grid);
    } catch (error) {
      showError(result, error);
    }
  });
}

// ------------------------------------------------------------------ start

function wireKey() {
  const input = $("#api-key");
  input.value = localStorage.getItem("glimpse-api-key") || "";
  input.addEventListener("change", () => {
    localStorage.setItem("glimpse-api-key", input.value.trim());
    loadModels();
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  wireKey();
  wireImageInputs();
  wireCaptionKnobs();
  imagePanel("#caption-form", "#caption-result", "/v1/captions",
             (form) => ({ return_attention: modelInfo(form.elements.model)?.defaults.attention
                                            ? "true" : "false" }),
             renderCaptions);
  imagePanel("#vqa-form", "#vqa-result", "/v1/vqa", () => ({ return_attention: "true" }),
             renderAnswers);
  imagePanel("#alignment-form", "#alignment-result", "/v1/alignments", () => ({}),
             renderAlignment);
  imagePanel("#retrieval-form", "#retrieval-result", "/v1/retrieval/captions", () => ({}),
             renderNeighbours);
  wireGeneration();
  await loadModels();
  await loadSamples();
  document.body.dataset.ready = "true";  // for the browser tests
});
