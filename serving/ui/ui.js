// The /ui page: upload one chest X-ray to /predict, show the model's view, the attention
// heatmap and the 14 probabilities. Plain browser JavaScript, no dependencies (offline).
"use strict";

// The same dark-red-yellow-white anchors as serving/overlay.py. The page stretches the map to
// its own range and lets the slider set the opacity, so it is more contrasted than the PNGs.
const ANCHORS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
let modelCard = null;
let modelCardLoaded = null;
let lastUpload = null;
let uploads = 0; // only the newest upload's answer is shown

const $ = (id) => document.getElementById(id);

function colourAt(value) {
  const position = Math.min(Math.max(value, 0), 1) * (ANCHORS.length - 1);
  const low = Math.min(Math.floor(position), ANCHORS.length - 2);
  const fraction = position - low;
  return ANCHORS[low].map((c, i) => c + (ANCHORS[low + 1][i] - c) * fraction);
}

async function loadModelCard() {
  try {
    const response = await fetch("/model");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    modelCard = await response.json();
    $("model-line").textContent =
      `${modelCard.name} ${modelCard.version} · ${modelCard.architecture} · ${modelCard.variant} · ${modelCard.backend}`;
    $("intended-use").textContent = modelCard.intended_use;
    document.body.dataset.model = "ready";
  } catch (error) {
    $("model-line").textContent = "model information unavailable";
    document.body.dataset.model = "unavailable";
  }
}

function showError(status, body) {
  const box = $("error");
  box.replaceChildren();
  const code = document.createElement("code");
  code.textContent = body && body.error ? body.error : `HTTP ${status}`;
  const detail = document.createElement("span");
  detail.className = "detail";
  detail.textContent = body && body.detail ? body.detail : "the server gave no explanation";
  box.dataset.code = body && body.error ? body.error : "";
  if (body && body.error === "not_a_chest_radiograph") { // the out-of-distribution guard refused it
    const heading = document.createElement("strong");
    heading.className = "refusal";
    heading.textContent = "Not analysed: this does not look like a chest radiograph the model was trained on.";
    box.append(heading, document.createElement("br"));
  }
  box.append(code, ": ", detail, ` (HTTP ${status})`);
  box.hidden = false;
  document.body.dataset.state = "error";
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (error) {
    return null;
  }
}

async function analyse(file) {
  const upload = ++uploads;
  lastUpload = file;
  document.body.dataset.state = "busy";
  $("error").hidden = true;
  $("result").hidden = true;
  $("status").textContent = "Analysing…";
  const form = new FormData();
  form.append("file", file);
  form.append("image", "true");
  let response;
  try {
    response = await fetch("/predict", { method: "POST", body: form });
  } catch (error) {
    if (upload !== uploads) return;
    $("status").textContent = "";
    showError(0, { error: "network_error", detail: "the server could not be reached" });
    return;
  }
  const body = await readJson(response);
  await modelCardLoaded;
  if (upload !== uploads) return; // a newer file was dropped meanwhile
  $("status").textContent = "";
  if (!response.ok || !body || !body.probabilities) {
    showError(response.status, body);
    return;
  }
  render(body);
}

function render(result) {
  $("view").src = `data:image/png;base64,${result.image_png_base64}`;
  $("view-size").textContent = viewSize(result.attention.shape);
  drawHeatmap(result.attention);
  renderFindings(result);
  renderFacts(result.input, result.warnings, result.ood);
  $("dicom-output").hidden = result.input.format !== "dicom";
  $("result").hidden = false;
  $("status").textContent = "Done.";
  document.body.dataset.state = "done";
}

// The model's input size comes from the repository's preprocessing (GET /model), the grid from
// the answer itself: e.g. " (its 64 × 64 px input; attention on its 8 × 8 patch grid)".
function viewSize([rows, columns]) {
  const crop = modelCard && modelCard.preprocessing ? modelCard.preprocessing.crop : null;
  const input = crop ? `its ${crop} × ${crop} px input; ` : "";
  return ` (${input}attention on its ${rows} × ${columns} patch grid)`;
}

// The attention grid (any shape) is stretched over the whole view: the patch grid covers the crop.
function drawHeatmap(attention) {
  const [rows, columns] = attention.shape;
  // Stretched to the map's own range: a near-uniform map would otherwise paint one flat colour.
  const values = attention.values.flat();
  const low = Math.min(...values);
  const range = Math.max(...values) - low || 1;
  const grid = document.createElement("canvas");
  grid.width = columns;
  grid.height = rows;
  const context = grid.getContext("2d");
  const pixels = context.createImageData(columns, rows);
  values.forEach((value, index) => {
    const heat = (value - low) / range;
    const [r, g, b] = colourAt(heat);
    pixels.data.set([r, g, b, Math.round(255 * (0.3 + 0.7 * heat))], index * 4);
  });
  context.putImageData(pixels, 0, 0);
  const canvas = $("heatmap");
  const target = canvas.getContext("2d");
  target.clearRect(0, 0, canvas.width, canvas.height);
  target.imageSmoothingEnabled = true;
  target.imageSmoothingQuality = "high";
  target.drawImage(grid, 0, 0, canvas.width, canvas.height);
  setOpacity();
}

function setOpacity() {
  const value = Number($("opacity").value);
  $("heatmap").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value} %`;
}

function renderFindings(result) {
  const thresholds = (modelCard && modelCard.thresholds) || {};
  const gateReasons = (modelCard && modelCard.validity_gate && modelCard.validity_gate.reasons) || {};
  const untrained = new Set(result.model.untrained_labels);
  const notValidated = new Set(result.model.not_validated_labels || []);
  const positive = new Set(result.positive);
  const overruled = result.overruled || {}; // over its threshold, not positive: the No Finding rule
  const status = (label) => positive.has(label) ? "positive"
    : untrained.has(label) ? "untrained" : notValidated.has(label) ? "not-validated"
    : label in overruled ? "overruled" : "";
  const reasons = { ...gateReasons, ...overruled };
  const order = [...result.labels].sort((a, b) => result.probabilities[b] - result.probabilities[a]);
  $("findings").replaceChildren(...order.map((label) =>
    findingRow(label, result.probabilities[label], thresholds[label], status(label), reasons[label])));
}

// status: "positive", "untrained", "not-validated" (failed the validity gate), "overruled" (over
// its threshold, not positive: No Finding while a finding is positive) or "".
function findingRow(label, probability, threshold, status, gateReason) {
  const row = document.createElement("li");
  row.className = "finding" + (status ? ` ${status}` : "");
  const neverPositive = status === "untrained" || status === "not-validated"; // no threshold tick
  row.dataset.label = label;
  row.dataset.probability = String(probability);
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  if (status) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = status.replace("-", " ");
    if ((status === "not-validated" || status === "overruled") && gateReason) badge.title = gateReason;
    name.append(badge);
  }
  const track = document.createElement("span");
  track.className = "track";
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.width = `${(probability * 100).toFixed(1)}%`;
  track.append(bar);
  if (threshold !== undefined && !neverPositive) {
    const tick = document.createElement("span");
    tick.className = "threshold";
    tick.style.left = `${(threshold * 100).toFixed(1)}%`;
    tick.title = `threshold ${threshold.toFixed(3)}`;
    track.append(tick);
  }
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = probability.toFixed(3);
  row.append(name, track, value);
  return row;
}

function oodFact(ood) {
  if (!ood) return null;
  if (ood.status === "no_guard") return "no out-of-distribution guard in this model";
  if (ood.score === null || ood.score === undefined) return null;
  const over = ood.score > ood.threshold;
  const verdict =
    ood.status === "flagged"
      ? `${over ? "over" : "within, but the DICOM header"}: flagged, served because CXR_MSN_OOD=warn`
      : "within";
  return `${ood.score.toFixed(2)} (threshold ${ood.threshold.toFixed(2)}: ${verdict})`;
}

function renderFacts(input, warnings, ood) {
  const facts = [
    ["format", input.format],
    ["size", `${input.width} × ${input.height}, ${input.bits_stored}-bit ${input.photometric}`],
    ["modality", input.modality],
    ["view", input.view_position],
    ["OOD score", oodFact(ood)],
  ].filter(([, value]) => value);
  $("input-facts").replaceChildren(...facts.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }));
  $("warnings").replaceChildren(...warnings.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
}

async function downloadDicom(output, button) {
  if (!lastUpload) return;
  $("error").hidden = true;
  button.disabled = true;
  const form = new FormData();
  form.append("file", lastUpload);
  form.append("output", output);
  try {
    const response = await fetch("/predict_dicom", { method: "POST", body: form });
    if (!response.ok) {
      showError(response.status, await readJson(response));
      return;
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = output === "sr" ? "cxr-msn-report-sr.dcm" : "cxr-msn-heatmap-sc.dcm";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  } catch (error) {
    showError(0, { error: "network_error", detail: "the server could not be reached" });
  } finally {
    button.disabled = false;
  }
}

function wireDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", (event) => {
    // the "choose a file" label opens the picker itself
    if (event.target !== input && !event.target.closest("label")) input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  input.addEventListener("change", () => {
    if (input.files.length) analyse(input.files[0]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) analyse(event.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropZone();
  $("opacity").addEventListener("input", setOpacity);
  $("download-sr").addEventListener("click", (event) => downloadDicom("sr", event.currentTarget));
  $("download-sc").addEventListener("click", (event) => downloadDicom("sc", event.currentTarget));
  modelCardLoaded = loadModelCard();
});
