// medsight web page: upload an image, show the label, probabilities and a mask or heatmap overlay, or the boxes
// a detector found with a slider on their score threshold (no new request when it moves).
// Talks to the same server's REST API with fetch; the API key lives in sessionStorage only.
"use strict";

const KEY_STORE = "medsight.apiKey";
const BROWSER_TYPES = ["image/png", "image/jpeg"];
// overlay colours per class index (0 = background, never drawn)
const PALETTE = [[0, 0, 0], [230, 57, 70], [42, 157, 143], [244, 162, 97], [69, 123, 157], [233, 196, 106],
                 [131, 56, 236], [58, 134, 255], [255, 0, 110], [128, 185, 24]];

const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let lastFile = null;
let lastSha = null;
let previewUrl = null;
// the detection answer's score threshold now applied: the bundle's exactly at first (a range input rounds its value,
// and a bundle's threshold is often one of the boxes' own scores), then wherever the slider is moved
let scoreThreshold = null;
let modelThreshold = null;

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("X-API-Key", apiKey());
  return fetch(path, { ...options, headers });
}

async function problemText(response) {
  try {
    const body = await response.json();
    if (body.error) return body.error.message;
    if (body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

// An input outside the model's training domain: a visible warning with each reason (flagged or refused).
function showDomainWarning(body) {
  const box = $("domain-warning");
  const reasons = (body && body.domain_reasons) || [];
  if (!body || body.out_of_domain !== true) {
    box.replaceChildren();
    box.hidden = true;
    return;
  }
  const title = body.label ? "Out of domain: this image is unlike the images the model was trained on, so do not "
    + "trust this answer." : "Out of domain: the model refused this image, which is unlike its training images.";
  box.replaceChildren(element("strong", {}, title), element("ul", {}));
  for (const reason of reasons) box.lastChild.appendChild(element("li", {}, reason));
  box.hidden = false;
}

function showError(text) {
  const box = $("error");
  box.textContent = text || "";
  box.hidden = !text;
}

function element(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be decoded"));
    img.src = src;
  });
}

function clearOverlay() {
  const canvas = $("overlay");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

async function setBaseImage(file, body) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  let src;
  if (BROWSER_TYPES.includes(file.type)) {
    previewUrl = URL.createObjectURL(file);
    src = previewUrl;
  } else {
    src = "data:image/png;base64," + body.preview_png;  // DICOM / NIfTI: the server's preview
  }
  const img = $("preview");
  await new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
    img.src = src;
  });
  $("viewer").hidden = false;
  const canvas = $("overlay");
  canvas.width = img.naturalWidth || 1;
  canvas.height = img.naturalHeight || 1;
  clearOverlay();
}

async function drawMask(base64Png) {
  const mask = await loadImage("data:image/png;base64," + base64Png);
  const canvas = $("overlay");
  canvas.width = mask.naturalWidth;
  canvas.height = mask.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const value = data[i];  // grey PNG: class index, or 255 for a binary mask
    if (value === 0) { data[i + 3] = 0; continue; }
    const colour = PALETTE[(value === 255 ? 1 : value) % PALETTE.length];
    data[i] = colour[0]; data[i + 1] = colour[1]; data[i + 2] = colour[2]; data[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
}

async function drawHeatmap(blob) {
  const url = URL.createObjectURL(blob);
  try {
    const heat = await loadImage(url);
    const canvas = $("overlay");
    canvas.width = heat.naturalWidth;
    canvas.height = heat.naturalHeight;
    canvas.getContext("2d").drawImage(heat, 0, 0);
  } finally {
    URL.revokeObjectURL(url);
  }
}

function showClassification(body) {
  showDomainWarning(body);
  const label = $("label");
  label.textContent = "Prediction: ";
  label.appendChild(element("strong", { id: "label-name" }, body.label));
  const list = $("probabilities");
  list.replaceChildren();
  const names = Object.keys(body.probabilities);
  for (const name of names) {
    const p = body.probabilities[name];
    const row = element("div", { class: "prob" + (name === body.label ? " chosen" : ""), "data-class": name });
    row.appendChild(element("span", {}, name));
    const track = element("div", { class: "track", role: "img", "aria-label": `${name} ${(100 * p).toFixed(1)}%` });
    const fill = element("div", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.appendChild(fill);
    if (body.threshold !== null && names.length === 2 && name === names[1]) {
      const mark = element("div", { class: "threshold", title: `threshold ${body.threshold.toFixed(3)}` });
      mark.style.left = `${(100 * body.threshold).toFixed(1)}%`;
      track.appendChild(mark);
    }
    row.appendChild(track);
    row.appendChild(element("span", { class: "value" }, `${(100 * p).toFixed(1)}%`));
    list.appendChild(row);
  }
  const threshold = body.threshold === null ? "argmax" : `threshold ${body.threshold.toFixed(3)} on ${names[1]}`;
  $("details").textContent =
    `${threshold} · ${body.input.type}, ${body.input.shape.join("×")} · ${body.timing_ms.total} ms · ` +
    `model ${body.model.name} ${body.model.hash}`;
  $("caption").textContent = "The image as the model sees it.";
  $("explain").disabled = false;
  showFeedback(body);
}

function showFeedback(body) {
  lastSha = body.input_sha256 || null;
  const select = $("correct-label");
  select.replaceChildren(...Object.keys(body.probabilities)
    .filter((name) => name !== body.label)
    .map((name) => element("option", { value: name }, name)));
  $("correct-form").hidden = true;
  $("feedback-state").textContent = "";
  $("feedback").hidden = !lastSha;
}

async function sendFeedback(verdict, label = null) {
  if (!lastSha) return;
  const state = $("feedback-state");
  state.textContent = "Sending…";
  const payload = { input_sha256: lastSha, verdict };
  if (label) payload.label = label;
  let response;
  try {
    response = await api("/v1/feedback", {
      method: "POST", body: JSON.stringify(payload), headers: { "Content-Type": "application/json" },
    });
  } catch (err) {
    state.textContent = `The server did not answer: ${err.message}`;
    return;
  }
  if (!response.ok) {
    state.textContent = await problemText(response);
    return;
  }
  const stored = await response.json();
  state.textContent = verdict === "agree" ? `Thank you: agreement recorded (#${stored.id}).`
    : `Thank you: correction to "${label}" recorded (#${stored.id}).`;
  $("correct-form").hidden = true;
}

async function showSegmentation(body) {
  const label = $("label");
  label.textContent = "Segmentation: ";
  label.appendChild(element("strong", { id: "label-name" }, "mask"));
  const list = $("probabilities");
  list.replaceChildren();
  body.label_names.forEach((name, index) => {
    if (index === 0) return;
    const row = element("div", { class: "prob", "data-class": name });
    const swatch = element("span", { class: "swatch" });
    const colour = PALETTE[index % PALETTE.length];
    swatch.style.background = `rgb(${colour.join(",")})`;
    const title = element("span", {});
    title.append(swatch, name);
    row.append(title, element("span", {}, `${body.voxel_counts[name]} voxels`));
    list.appendChild(row);
  });
  await drawMask(body.mask_png);
  $("caption").textContent = body.mask_slice === null ? "Mask over the image."
    : `Middle slice (${body.mask_slice + 1} of ${body.mask_shape[0]}) with its mask.`;
  $("details").textContent = `${body.input.type}, ${body.input.shape.join("×")} · ${body.timing_ms.total} ms · ` +
    `model ${body.model.name} ${body.model.hash}`;
}

// A volume's boxes on the page: those that cross the middle slice (box_slice along voxel axis 0) the preview shows.
function boxesOnPicture(body) {
  if (body.box_slice === null) return body.boxes;
  return body.boxes.filter((box) => box.z1 < body.box_slice + 1 && box.z2 > body.box_slice);
}

function boxGroup(box, colour, fontSize) {
  const group = document.createElementNS(SVG_NS, "g");
  group.setAttribute("class", "det-box");
  group.setAttribute("data-score", String(box.score));
  group.setAttribute("data-label", box.label);
  const rect = document.createElementNS(SVG_NS, "rect");
  const geometry = { x: box.x1, y: box.y1, width: box.x2 - box.x1, height: box.y2 - box.y1 };
  for (const [name, value] of Object.entries(geometry)) rect.setAttribute(name, String(value));
  rect.setAttribute("stroke", `rgb(${colour.join(",")})`);
  const text = document.createElementNS(SVG_NS, "text");
  text.setAttribute("x", String(box.x1));
  text.setAttribute("y", String(box.y1 > fontSize ? box.y1 - fontSize / 4 : box.y2 + fontSize));
  text.setAttribute("font-size", String(fontSize));
  text.setAttribute("fill", `rgb(${colour.join(",")})`);
  text.textContent = `${box.label} ${box.score.toFixed(2)}`;
  group.append(rect, text);
  return group;
}

function boxRow(box, colour) {
  const row = element("div", { class: "prob box-row", "data-score": String(box.score), "data-class": box.label });
  const swatch = element("span", { class: "swatch" });
  swatch.style.background = `rgb(${colour.join(",")})`;
  const title = element("span", {});
  title.append(swatch, box.label);
  const where = `x ${box.x1.toFixed(1)}–${box.x2.toFixed(1)}, y ${box.y1.toFixed(1)}–${box.y2.toFixed(1)}` +
    ("z1" in box ? `, z ${box.z1.toFixed(1)}–${box.z2.toFixed(1)}` : "");
  row.append(title, element("span", { class: "where" }, where), element("span", { class: "value" },
    box.score.toFixed(3)));
  return row;
}

// Show the boxes (and list rows) scored at or above the threshold; hide the others.
function applyScoreThreshold() {
  const threshold = scoreThreshold;
  let shown = 0;
  const groups = $("boxes").querySelectorAll(".det-box");
  for (const group of groups) {
    const keep = Number(group.getAttribute("data-score")) >= threshold;
    group.classList.toggle("off", !keep);
    if (keep) shown++;
  }
  for (const row of $("probabilities").querySelectorAll(".box-row")) {
    row.classList.toggle("off", Number(row.getAttribute("data-score")) < threshold);
  }
  $("score-value").textContent = threshold.toFixed(3);
  $("box-count").textContent = `${shown} of ${groups.length} box${groups.length === 1 ? "" : "es"} shown`;
}

function resetScoreThreshold() {
  scoreThreshold = modelThreshold;
  $("score-threshold").value = String(modelThreshold);
  applyScoreThreshold();
}

function resetBoxes() {
  $("boxes").replaceChildren();
  $("boxes").setAttribute("hidden", "");  // an SVG element has no .hidden property
  $("box-controls").hidden = true;
}

function showDetection(body) {
  showDomainWarning(body);
  const width = body.image_size.width;
  const height = body.image_size.height;
  const svg = $("boxes");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.removeAttribute("hidden");
  // labels about 12 screen pixels high, whatever the image's size on the screen
  const fontSize = 12 * width / (svg.getBoundingClientRect().width || width);
  const list = $("probabilities");
  list.replaceChildren();
  const drawn = boxesOnPicture(body);
  for (const box of drawn) {
    const colour = PALETTE[(body.label_names.indexOf(box.label) + 1) % PALETTE.length];
    svg.appendChild(boxGroup(box, colour, fontSize));
    list.appendChild(boxRow(box, colour));
  }
  modelThreshold = body.threshold;
  resetScoreThreshold();
  $("box-controls").hidden = false;
  const label = $("label");
  label.textContent = "Detection: ";
  label.appendChild(element("strong", { id: "label-name" },
    `${body.n_findings} finding${body.n_findings === 1 ? "" : "s"}`));
  label.append(` at the model's threshold ${body.threshold.toFixed(3)}`);
  $("caption").textContent = body.box_slice === null
    ? "The boxes the detector found; the slider hides those scored below it."
    : `Middle slice (${body.box_slice + 1} of ${body.image_size.depth}) with the ${drawn.length} of ` +
      `${body.n_boxes} boxes that cross it.`;
  $("details").textContent = `threshold ${body.threshold.toFixed(3)}: ${body.threshold_note} · ` +
    `${body.input.type}, ${body.input.shape.join("×")} · ${body.timing_ms.total} ms · ` +
    `model ${body.model.name} ${body.model.hash}`;
}

async function analyse(file) {
  lastFile = file;
  showError(null);
  resetBoxes();
  $("explain-note").hidden = true;
  $("explain").disabled = true;
  $("feedback").hidden = true;
  showDomainWarning(null);
  $("label").textContent = "Analysing…";
  $("probabilities").replaceChildren();
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await api("/v1/predict?preview=1", { method: "POST", body: form, headers: { Accept: "application/json" } });
  } catch (err) {
    showError(`The server did not answer: ${err.message}`);
    $("label").textContent = "No result.";
    return;
  }
  if (!response.ok) {
    const refused = response.status === 422 ? await response.clone().json().catch(() => null) : null;
    showDomainWarning(refused);
    showError(await problemText(response));
    $("label").textContent = "No result.";
    return;
  }
  const body = await response.json();
  await setBaseImage(file, body);
  if (body.task === "segmentation") await showSegmentation(body);
  else if (body.task === "detection") showDetection(body);
  else showClassification(body);
}

async function explain() {
  if (!lastFile) return;
  const note = $("explain-note");
  const form = new FormData();
  form.append("file", lastFile, lastFile.name);
  const response = await api("/v1/explain", { method: "POST", body: form });
  if (!response.ok) {
    note.textContent = await problemText(response);
    note.hidden = false;
    return;
  }
  note.hidden = true;
  await drawHeatmap(await response.blob());
  $("caption").textContent = "Heatmap: where the model looked.";
}

function dl(entries) {
  const list = element("dl", { class: "card" });
  for (const [name, value] of entries) {
    list.appendChild(element("dt", {}, name));
    list.appendChild(element("dd", {}, value));
  }
  return list;
}

function thresholdText(card) {
  const perClass = card.segmentation && card.segmentation.thresholds;
  if (perClass && Object.keys(perClass).length) {
    return Object.entries(perClass).map(([k, v]) => `${card.label_names[Number(k)] || k} ${v}`).join(", ");
  }
  if (card.detection) return `score ${card.threshold} (${card.detection.threshold_note})`;
  return card.threshold === null ? "none (argmax)" : String(card.threshold);
}

async function loadCard() {
  const target = $("card");
  const response = await api("/v1/model");
  if (!response.ok) {
    target.textContent = response.status === 401 ? "Enter the API key above to read the model card."
      : await problemText(response);
    return;
  }
  const card = await response.json();
  $("model-name").textContent = `${card.model.name} · ${card.task} · ${card.version.hash}`;
  const metrics = Object.entries(card.metrics).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(3) : v}`);
  const pre = card.preprocess;
  const details = element("details");
  details.appendChild(element("summary", {}, "Everything in the card (JSON)"));
  details.appendChild(element("pre", {}, JSON.stringify(card, null, 2)));
  target.replaceChildren(dl([
    ["Task", card.task],
    ["Model", card.detection ? `${card.model.name} (${card.detection.backbone} FPN)`
      : `${card.model.name} (${card.model.head} head)`],
    ["Classes", card.label_names.join(", ")],
    card.task === "segmentation"
      ? ["Input", `any size, sliding window of ${pre.size.join("×")} px, ${pre.channels} channel(s)`]
      : card.task === "detection"
      ? ["Input", `any size, fitted into ${pre.size.join("×")} px (aspect kept), ${pre.channels} channel(s); ` +
        "boxes in the image's own pixels"]
      : ["Input", `${pre.size.join("×")} px, ${pre.channels} channel(s), ${pre.normalize} normalisation` +
        (pre.window ? `, window ${pre.window}` : "")],
    ["Threshold", thresholdText(card)],
    ["Validation", metrics.join(" · ") || "—"],
    ["Created", card.version.created || "unknown"],
    ["Version", `${card.version.hash} (medsight ${card.version.medsight || "?"})`],
  ]), details);
}

function init() {
  $("api-key").value = apiKey();
  $("key-state").textContent = apiKey() ? "key set for this tab" : "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("key-state").textContent = "key set for this tab";
    loadCard();
  });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) analyse(file);
  });
  $("opacity").addEventListener("input", (event) => { $("overlay").style.opacity = event.target.value; });
  $("score-threshold").addEventListener("input", (event) => {
    scoreThreshold = Number(event.target.value);
    applyScoreThreshold();
  });
  $("score-reset").addEventListener("click", resetScoreThreshold);
  $("overlay").style.opacity = $("opacity").value;
  $("explain").addEventListener("click", explain);
  $("agree").addEventListener("click", () => sendFeedback("agree"));
  $("correct").addEventListener("click", () => { $("correct-form").hidden = false; });
  $("send-correct").addEventListener("click", () => sendFeedback("label", $("correct-label").value));
  loadCard();
}

document.addEventListener("DOMContentLoaded", init);
