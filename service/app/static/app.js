// The page's behaviour: three panels, each a client of the public API (/predict, /gradcheck, /explain, /models).
import { FIELD, strokesToMnist } from "./drawing.js";

export const PEN_WIDTH = 18; // canvas pixels on the 280 x 280 drawing canvas
const PREDICT_EVERY_MS = 120; // while a stroke is drawn, predict at most this often

// -- the API, called as any client would ------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  describe() {
    return this.status === 0 ? this.message : `${this.status} ${this.code}: ${this.message}`;
  }
}

async function call(method, path, body) {
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", `The server could not be reached (${e.message}).`);
  }
  const ms = performance.now() - started;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null; // e.g. a proxy's HTML error page: reported by status below
  }
  if (!response.ok) {
    const error = data && data.error;
    if (error && typeof error === "object") throw new ApiError(response.status, error.code, error.message);
    throw new ApiError(response.status, "http_error", `HTTP ${response.status} ${response.statusText}`.trim());
  }
  return { data, ms, requestId: response.headers.get("X-Request-ID") };
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const percent = (p, digits = 1) => `${(100 * p).toFixed(digits)} %`;

// The diverging colour map of attributions: t in [-1, 1] from blue through white to red (ColorBrewer RdBu's ends).
const NEGATIVE = [33, 102, 172];
const POSITIVE = [178, 24, 43];
export function heat(t) {
  const end = t < 0 ? NEGATIVE : POSITIVE;
  const a = Math.min(1, Math.abs(t));
  return end.map((c) => Math.round(255 + (c - 255) * a));
}
const METHOD_NAMES = { integrated_gradients: "Integrated gradients", saliency: "Saliency |df/dx|",
                       gradient: "Gradient df/dx", gradient_x_input: "Gradient x input", smoothgrad: "SmoothGrad" };
const signed = (v) => (v >= 0 ? "+" : "−") + Math.abs(v).toPrecision(3);

// -- what every panel has: a prediction, its bars, an error line and the model's card --------------
class Panel {
  constructor(section) {
    this.section = section;
    this.model = section.dataset.model;
    this.labelOut = section.querySelector("[data-testid=label]");
    this.latency = section.querySelector(".latency");
    this.bars = section.querySelector(".bars");
    this.errorLine = section.querySelector(".error");
    this.card = section.querySelector(".model-card");
    this.info = null; // GET /models/<name>
    this.input = null; // the last input sent
    this.prediction = null; // its predicted label
    this.sequence = 0; // answers to older requests are dropped
    this.buildCard();
  }

  version() {
    const raw = this.versionInput.value.trim();
    return raw === "" ? null : Number(raw);
  }

  // A request body for this panel's model and chosen version (none chosen: the server's latest).
  requestBody(fields) {
    const version = this.version();
    return { model: this.model, ...(version === null ? {} : { version }), ...fields };
  }

  async predict(input) {
    this.input = input;
    this.clearExplanation();
    const sequence = ++this.sequence;
    const body = this.requestBody({ inputs: [input] });
    try {
      const { data, ms, requestId } = await call("POST", "/predict", body);
      if (sequence !== this.sequence) return;
      this.showPrediction(data, ms);
      this.offerFeedback(requestId, data.version);
      this.showError(null);
    } catch (e) {
      if (sequence !== this.sequence) return;
      this.clearPrediction();
      this.showError(e);
    }
  }

  showPrediction(data, ms) {
    const { label, probabilities } = data.predictions[0];
    this.prediction = label;
    this.labelOut.textContent = label;
    this.latency.textContent = `(v${data.version}, ${ms.toFixed(0)} ms)`;
    this.bars.replaceChildren(...data.labels.map((name, i) => {
      const bar = element("span", { class: "bar", "aria-hidden": "true" });
      bar.style.setProperty("--p", probabilities[i].toFixed(4));
      return element("li", { class: name === label ? "top" : "" },
        element("span", { class: "name", text: name }), bar,
        element("span", { class: "value", text: percent(probabilities[i]) }));
    }));
    this.renderFacts(data.version);
  }

  clearPrediction(message = "-") {
    this.prediction = null;
    this.offerFeedback(null, null);
    this.labelOut.textContent = message;
    this.latency.textContent = "";
    this.bars.replaceChildren();
  }

  showError(error) {
    this.errorLine.hidden = error === null;
    this.errorLine.textContent = error === null ? "" : error.describe();
  }

  // The card: the model's facts from /models, a version to use, and the gradient check.
  buildCard() {
    const id = `${this.model}-version`;
    this.facts = element("dl", { class: "facts" });
    this.versionInput = element("input", { id, type: "number", min: "1", step: "1", inputmode: "numeric",
                                           placeholder: "latest" });
    this.checkButton = element("button", { type: "button", class: "check", text: "Check gradients" });
    this.checkResult = element("div", { class: "gradcheck", "aria-live": "polite" });
    this.card.append(
      element("h3", { text: "About this model" }), this.facts,
      element("div", { class: "actions" },
        element("label", { for: id, text: "Version " }), this.versionInput, this.checkButton),
      this.checkResult);
    this.buildExplain();
    this.buildFeedback();
    this.versionInput.addEventListener("change", () => {
      this.renderFacts(this.version());
      this.refresh();
    });
    this.checkButton.addEventListener("click", () => this.gradcheck());
  }

  // Feedback: "right", or "wrong, it was ..." for the answer shown (POST /feedback with its request id).
  buildFeedback() {
    const correctionId = `${this.model}-correction`;
    this.rightButton = element("button", { type: "button", "data-testid": "right", text: "Right" });
    this.correction = element("select", { id: correctionId, "data-testid": "correction" });
    this.wrongButton = element("button", { type: "button", "data-testid": "wrong", text: "Wrong, it was" });
    this.feedbackResult = element("p", { class: "feedback-result", "aria-live": "polite",
                                         "data-testid": "feedback-result" });
    this.feedbackRow = element("div", { class: "actions feedback", role: "group", "aria-label": "Was it right?" },
      this.rightButton, this.wrongButton,
      element("label", { class: "visually-hidden", for: correctionId, text: "The right class" }), this.correction);
    this.section.querySelector(".answer").after(this.feedbackRow, this.feedbackResult);
    this.feedbackRow.hidden = true;
    this.answered = null; // { requestId, version } of the answer shown
    this.rightButton.addEventListener("click", () => this.sendFeedback(this.prediction));
    this.wrongButton.addEventListener("click", () => this.sendFeedback(this.correction.value));
  }

  offerFeedback(requestId, version) {
    this.answered = requestId ? { requestId, version } : null;
    this.feedbackRow.hidden = this.answered === null;
    this.feedbackResult.textContent = "";
    for (const button of [this.rightButton, this.wrongButton]) button.disabled = false;
  }

  async sendFeedback(label) {
    const answered = this.answered;
    if (answered === null || !label) return;
    for (const button of [this.rightButton, this.wrongButton]) button.disabled = true;
    try {
      const { data } = await call("POST", "/feedback", { id: answered.requestId, label });
      const result = data.results[0];
      this.feedbackResult.textContent = result.correct[0] ? `Thanks: "${label}" was right.`
        : `Thanks: noted as "${label}" (the model said "${result.predicted[0]}").`;
      await this.loadInfo(); // the version's live accuracy, now with this label
    } catch (e) {
      this.feedbackResult.textContent = `Feedback not stored: ${e.describe()}`;
      for (const button of [this.rightButton, this.wrongButton]) button.disabled = false;
    }
  }

  // "Explain": POST /explain with the panel's input; each panel draws the attributions its own way.
  buildExplain() {
    const targetId = `${this.model}-explain-target`, methodId = `${this.model}-explain-method`;
    this.targetSelect = element("select", { id: targetId });
    this.targetSelect.append(element("option", { value: "", text: "the predicted class" }));
    this.methodSelect = element("select", { id: methodId });
    for (const [value, text] of Object.entries(METHOD_NAMES)) this.methodSelect.append(element("option", { value, text }));
    this.explainButton = element("button", { type: "button", class: "check", text: "Explain" });
    this.explainResult = element("div", { class: "explanation", "aria-live": "polite" });
    this.explanation = null; // the last /explain answer shown
    this.section.querySelector(".answer").after(
      element("div", { class: "explain-controls" },
        element("div", { class: "actions" },
          element("label", { for: targetId, text: "Class to explain" }), this.targetSelect,
          element("label", { for: methodId, text: "Method" }), this.methodSelect, this.explainButton),
        this.explainResult));
    this.explainButton.addEventListener("click", () => this.explain());
  }

  setTargets(labels) {
    if (this.correction.options.length === 0) {
      for (const label of labels) this.correction.append(element("option", { value: label, text: label }));
    }
    if (this.targetSelect.options.length > 1) return;
    for (const label of labels) this.targetSelect.append(element("option", { value: label, text: `class ${label}` }));
  }

  async explain() {
    if (this.input === null) return;
    const target = this.targetSelect.value;
    const body = this.requestBody({ inputs: [this.input], method: this.methodSelect.value,
                                    ...(target === "" ? {} : { targets: [target] }) });
    const sequence = this.sequence;
    this.explainButton.disabled = true;
    this.explainResult.replaceChildren(element("p", { text: "Explaining…" }));
    try {
      const { data } = await call("POST", "/explain", body);
      if (sequence !== this.sequence) return; // the input changed meanwhile
      this.showExplanation(data);
    } catch (e) {
      this.explainResult.replaceChildren(element("p", { class: "error-text", role: "alert",
                                                        text: `Explanation failed: ${e.describe()}` }));
    } finally {
      this.explainButton.disabled = false;
    }
  }

  showExplanation(data) {
    const values = data.attributions[0].flat();
    const scale = Math.max(...values.map(Math.abs)) || 1; // the colour map's ends: ±scale
    const sum = values.reduce((a, b) => a + b, 0);
    const parts = [`${METHOD_NAMES[data.method]} of the ${data.output} of class "${data.targets[0]}": `
                   + `attributions sum to ${signed(sum)}`];
    if (data.convergence_delta) parts.push(`convergence delta ${signed(data.convergence_delta[0])}`);
    parts.push(`${data.seconds.toFixed(3)} s.`);
    const legend = element("div", { class: "legend", "data-testid": "legend" },
      element("span", { text: signed(-scale) }), element("span", { class: "ramp", "aria-hidden": "true" }),
      element("span", { text: signed(scale) }));
    const figure = this.drawAttributions(values, scale);
    figure.dataset.testid = "attribution";
    figure.dataset.scale = String(scale);
    figure.dataset.target = data.targets[0];
    this.explainResult.replaceChildren(figure, legend, element("p", { text: parts.join(", ") }));
    this.explanation = data;
  }

  clearExplanation() {
    this.explanation = null;
    if (this.explainResult) this.explainResult.replaceChildren();
    this.undrawAttributions();
  }

  drawAttributions(values, scale) { // the panel's picture of them; returns the element tests look at
    return element("div");
  }

  undrawAttributions() {}

  refresh() {} // predict the panel's current input again (each panel says how)

  async loadInfo() {
    try {
      this.info = (await call("GET", `/models/${this.model}`)).data;
      this.renderFacts(this.version());
      this.setTargets(this.info.versions.find((v) => v.status === "ready")?.labels ?? []);
    } catch (e) {
      this.facts.replaceChildren(element("dd", { class: "error-text", text: `Model facts unavailable: ${e.describe()}` }));
    }
  }

  renderFacts(version) {
    if (!this.info) return;
    const wanted = version ?? this.info.latest_version;
    const v = this.info.versions.find((entry) => entry.version === wanted);
    if (!v || v.status !== "ready") {
      this.facts.replaceChildren(element("dt", { text: "Version" }),
        element("dd", { text: v ? `${wanted}: failed to load (${v.error})` : `${wanted}: not loaded` }));
      return;
    }
    const dense = v.architecture.layers.filter((layer) => layer.type === "dense");
    const shape = [dense[0].in_features, ...dense.map((layer) => layer.out_features)].join(" → ");
    const kinds = [...new Set(v.architecture.layers.map((l) => l.type).filter((t) => t !== "dense"))];
    const rows = [
      ["Version", `${v.version}${v.version === this.info.latest_version ? " (latest)" : ""}`],
      ["Architecture", `${shape}; ${[...kinds, `${v.architecture.head} head`].join(", ")}`],
      ["Parameters", v.parameter_count.toLocaleString("en")],
      ...Object.entries(v.metrics ?? {}).filter(([k]) => k.endsWith("_accuracy"))
        .map(([k, value]) => [`${k.replace("_accuracy", "").replaceAll("_", " ")} accuracy`, percent(value, 2)]),
    ];
    if (v.feedback) {
      rows.push(["Live accuracy", v.feedback.labelled ? `${percent(v.feedback.accuracy)} of ${v.feedback.labelled} `
                 + "labelled" : "no labels yet"]);
    }
    if (v.drift?.score != null) rows.push(["Input drift", `${v.drift.score.toFixed(2)} (1.00: like training)`]);
    this.facts.replaceChildren(...rows.flatMap(([term, value]) => [element("dt", { text: term }),
                                                                    element("dd", { text: value })]));
    this.facts.append(element("dt", { text: "Weights SHA-256" }),
      element("dd", {}, element("code", { title: v.sha256, text: `${v.sha256.slice(0, 16)}…` })));
  }

  async gradcheck() {
    if (this.input === null) return;
    const labels = this.info?.versions.find((v) => v.status === "ready")?.labels ?? [];
    const body = this.requestBody({ inputs: [this.input], labels: [this.prediction ?? labels[0] ?? "0"],
                                    mode: "sampled", samples: 10 });
    this.checkButton.disabled = true;
    this.checkResult.replaceChildren(element("p", { text: "Checking gradients…" }));
    try {
      const { data } = await call("POST", "/gradcheck", body);
      const verdict = element("strong", { class: data.passed ? "passed" : "failed", "data-testid": "verdict",
                                          text: data.passed ? "passed" : "failed" });
      const rows = Object.entries(data.errors).map(([tensor, error]) => element("tr", {},
        element("th", { scope: "row", text: tensor }), element("td", { text: error.toExponential(2) }),
        element("td", { text: String(data.checked[tensor]) }), element("td", { text: String(data.skipped[tensor]) })));
      this.checkResult.replaceChildren(
        element("p", {}, "Gradient check ", verdict,
          `: largest relative error ${data.max_error.toExponential(2)} (tolerance ${data.tolerance}) on label `
          + `"${body.labels[0]}", ${data.seconds.toFixed(3)} s.`),
        element("table", {},
          element("thead", {}, element("tr", {}, ...["tensor", "max relative error", "checked", "skipped at a kink"]
            .map((h) => element("th", { scope: "col", text: h })))),
          element("tbody", {}, ...rows)));
    } catch (e) {
      this.checkResult.replaceChildren(element("p", { class: "error-text", role: "alert",
                                                      text: `Gradient check failed: ${e.describe()}` }));
    } finally {
      this.checkButton.disabled = false;
    }
  }
}

// -- MNIST: a canvas of pen strokes, preprocessed by drawing.js ------------------------------------
class MnistPanel extends Panel {
  constructor(section) {
    super(section);
    this.canvas = section.querySelector("#mnist-canvas");
    this.preview = section.querySelector("#mnist-input");
    this.strokes = [];
    this.active = null; // the pointer drawing now
    this.timer = null;
    this.bindPointer();
    section.querySelector("#mnist-undo").addEventListener("click", () => { this.strokes.pop(); this.changed(true); });
    section.querySelector("#mnist-clear").addEventListener("click", () => { this.strokes = []; this.changed(true); });
    this.changed(true); // no strokes yet: sets the blank input
  }

  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (this.canvas.width / rect.width),
            (event.clientY - rect.top) * (this.canvas.height / rect.height)];
  }

  bindPointer() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (event) => {
      if (this.active !== null || event.button > 0) return;
      event.preventDefault();
      this.active = event.pointerId;
      c.setPointerCapture(event.pointerId);
      this.strokes.push([this.point(event)]);
      this.changed(false);
    });
    c.addEventListener("pointermove", (event) => {
      if (event.pointerId !== this.active) return;
      const stroke = this.strokes[this.strokes.length - 1];
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const e of events.length ? events : [event]) stroke.push(this.point(e));
      this.changed(false);
    });
    const end = (event) => {
      if (event.pointerId !== this.active) return;
      this.active = null;
      this.changed(true);
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
  }

  // Redraw, and predict: at once when a stroke ends, at most every PREDICT_EVERY_MS while drawing.
  changed(now) {
    this.draw();
    if (now) {
      clearTimeout(this.timer);
      this.timer = null;
      this.refresh();
    } else if (this.timer === null) {
      this.timer = setTimeout(() => { this.timer = null; this.refresh(); }, PREDICT_EVERY_MS);
    }
  }

  refresh() {
    const input = strokesToMnist(this.strokes, PEN_WIDTH);
    this.showInput(input);
    if (this.strokes.length === 0) {
      this.sequence++; // an answer still in flight is for a drawing that no longer exists
      this.input = Array.from(input);
      this.clearPrediction();
      this.showError(null);
      return;
    }
    this.predict(Array.from(input));
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = PEN_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const stroke of this.strokes) {
      ctx.beginPath();
      if (stroke.length === 1) {
        ctx.arc(stroke[0][0], stroke[0][1], PEN_WIDTH / 2, 0, 2 * Math.PI);
        ctx.fill();
        continue;
      }
      ctx.moveTo(...stroke[0]);
      for (const p of stroke.slice(1)) ctx.lineTo(...p);
      ctx.stroke();
    }
  }

  // A diverging heat map of the attributions over the 28x28 input: white at 0, red +, blue −; ink darkens it.
  drawAttributions(values, scale) {
    const canvas = element("canvas", { id: "mnist-heat", width: String(FIELD), height: String(FIELD), role: "img",
                                       "aria-label": "Attribution of each input pixel: red for, blue against" });
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(FIELD, FIELD);
    values.forEach((v, i) => {
      const shade = 1 - 0.45 * this.input[i];
      image.data.set([...heat(v / scale).map((c) => Math.round(c * shade)), 255], 4 * i);
    });
    ctx.putImageData(image, 0, 0);
    return element("figure", { class: "heat" }, canvas,
      element("figcaption", { text: "Attribution per pixel over the input (darker: ink)." }));
  }

  showInput(input) {
    const ctx = this.preview.getContext("2d");
    const image = ctx.createImageData(FIELD, FIELD);
    input.forEach((v, i) => {
      const grey = Math.round(255 * v);
      image.data.set([grey, grey, grey, 255], 4 * i);
    });
    ctx.putImageData(image, 0, 0);
  }
}

// -- Digits 5x5: a grid of toggle buttons, with the training glyphs as presets ---------------------
class DigitsPanel extends Panel {
  constructor(section, glyphs) {
    super(section);
    this.cells = [];
    const grid = section.querySelector("#digits-grid");
    for (let i = 0; i < 25; i++) {
      const cell = element("button", { type: "button", class: "cell", "aria-pressed": "false",
                                       "aria-label": `row ${Math.floor(i / 5) + 1}, column ${(i % 5) + 1}`,
                                       tabindex: i === 0 ? "0" : "-1" });
      cell.addEventListener("click", () => this.set(i, cell.getAttribute("aria-pressed") !== "true", true));
      cell.addEventListener("keydown", (event) => this.move(event, i));
      grid.append(cell);
      this.cells.push(cell);
    }
    const presets = section.querySelector("#digits-presets");
    glyphs.labels.forEach((label, g) => {
      const button = element("button", { type: "button", "aria-label": `Load glyph ${label}`, text: label });
      button.addEventListener("click", () => this.load(glyphs.images[g]));
      presets.append(button);
    });
    section.querySelector("#digits-clear").addEventListener("click", () => this.load(new Array(25).fill(0)));
    this.load(glyphs.images[0]);
  }

  set(i, on, predict) {
    this.cells[i].setAttribute("aria-pressed", String(on));
    if (predict) this.refresh();
  }

  load(pixels) {
    pixels.flat().forEach((v, i) => this.set(i, v > 0.5, false));
    this.refresh();
  }

  // Arrow keys move between cells (one tab stop for the whole grid); space and enter toggle (buttons do).
  move(event, i) {
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -5, ArrowDown: 5 }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    const row = Math.floor(i / 5), col = i % 5;
    const next = Math.abs(step) === 1 ? row * 5 + Math.min(4, Math.max(0, col + step)) : i + step;
    if (next < 0 || next > 24) return;
    this.cells[i].setAttribute("tabindex", "-1");
    this.cells[next].setAttribute("tabindex", "0");
    this.cells[next].focus();
  }

  refresh() {
    this.predict(this.cells.map((c) => (c.getAttribute("aria-pressed") === "true" ? 1 : 0)));
  }

  // Each cell takes its attribution's colour (a pressed cell keeps a dark ring).
  drawAttributions(values, scale) {
    this.cells.forEach((cell, i) => {
      cell.classList.add("explained");
      cell.style.setProperty("--heat", `rgb(${heat(values[i] / scale).join(", ")})`);
      cell.dataset.attribution = String(values[i]);
      cell.title = `attribution ${signed(values[i])}`;
    });
    return element("p", { class: "hint", text: "The grid's cells show each pixel's attribution." });
  }

  undrawAttributions() {
    for (const cell of this.cells ?? []) {
      cell.classList.remove("explained");
      cell.style.removeProperty("--heat");
      delete cell.dataset.attribution;
      cell.removeAttribute("title");
    }
  }
}

// -- XOR: two switches ------------------------------------------------------------------------------
class XorPanel extends Panel {
  constructor(section) {
    super(section);
    this.switches = [section.querySelector("#xor-a"), section.querySelector("#xor-b")];
    for (const s of this.switches) s.addEventListener("change", () => this.refresh());
    this.refresh();
  }

  refresh() {
    this.predict(this.switches.map((s) => (s.checked ? 1 : 0)));
  }

  // One signed bar per input: right and red for, left and blue against.
  drawAttributions(values, scale) {
    return element("ol", { class: "bars attribution", "aria-label": "Attribution of each input" },
      ...["a", "b"].map((name, i) => {
        const bar = element("span", { class: `bar signed ${values[i] < 0 ? "negative" : "positive"}`,
                                      "aria-hidden": "true" });
        bar.style.setProperty("--p", (Math.abs(values[i]) / scale).toFixed(4));
        return element("li", {}, element("span", { class: "name", text: name }), bar,
          element("span", { class: "value", "data-testid": "attribution-value", text: signed(values[i]) }));
      }));
  }
}

async function start() {
  const panels = [new MnistPanel(document.getElementById("mnist")), new XorPanel(document.getElementById("xor"))];
  const digits = document.getElementById("digits");
  try {
    const { data } = await call("GET", "/ui/glyphs.json");
    panels.push(new DigitsPanel(digits, data));
  } catch (e) {
    digits.querySelector(".error").hidden = false;
    digits.querySelector(".error").textContent = `The glyphs could not be loaded: ${e.describe()}`;
  }
  await Promise.all(panels.map((p) => p.loadInfo()));
  window.numpyNets = { panels: Object.fromEntries(panels.map((p) => [p.model, p])) }; // for tests and the console
  document.body.dataset.ready = "true";
}

start();
