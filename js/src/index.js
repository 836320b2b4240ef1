// attn_widget front end: one anywidget ESM module. Host contract: PROTOCOL.md.

import css from "./style.css";
import { loadBokeh } from "./bokeh.js";
import { LOG_LOW, bitsLUT, colorize, paletteLUT, poolDiff, scaleMapping } from "./colour.js";
import { poolColourFast, poolRelativeFast, wasmEngine } from "./fastpool.js";
import { asBytes, column, decodeHeader, decodePayload, matrixShape, row, valueAt } from "./payload.js";
import { ImageCache, SectionStore, matrixKey, neighbourKeys } from "./store.js";
import { axisTicks, quoted, tokenLabel } from "./tokens.js";

const MEAN = -1;
const CAVEAT =
  "Attention is a debugging signal, not an explanation: it shows where the model looked, not why.";
const MEAN_CAVEAT = "Averaging over heads hides per-head behaviour: check single heads before concluding.";
const BLOCK_NAMES = {
  encoder: "encoder self-attention",
  decoder: "decoder self-attention",
  cross: "cross-attention (decoder → encoder)",
  self: "self-attention",
};
const SCALE_NAMES = { linear: "linear 0…1", log: "log 1e-4…1", row: "row-relative (÷ row max)" };
const THEME = {
  light: { bg: "#ffffff", fg: "#1f2328", muted: "#59636e", line: "#d1d9e0" },
  dark: { bg: "#1b1d21", fg: "#e6e8eb", muted: "#a3abb5", line: "#3b4048" },
};
const COLOURS = { prompt: "#4c78a8", generated: "#e45756", promptDark: "#79a6dc", generatedDark: "#ff8a80" };
let viewCounter = 0;
const IMAGE_CACHE_BYTES = 48 * 2 ** 20; // per view: a dozen 1024² images
const TOOLBAR_PX = 32; // width of Bokeh's vertical toolbar

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

class AttentionView {
  constructor(model, el) {
    this.model = model;
    this.el = el;
    this.viewId = `v${++viewCounter}-${Math.random().toString(36).slice(2, 8)}`;
    this.requestCount = 0;
    this.disposers = [];
    this.hover = null; // {q, k} or {token}
    this.shadeDirection = "from";
    this.shadeSource = 0; // compare: whose attention shades the strip
    this.metric = null;
    this.images = new ImageCache(IMAGE_CACHE_BYTES);
    this.unsaved = new Map(); // traits set here and not yet sent to the kernel
    this.store = new SectionStore({
      send: (msg) => this.send(msg),
      newId: () => this.newId(),
      onData: (source, key) => (key === "grid" ? this.drawGrid() : this.draw()),
      onError: (message) => this.notice(message),
    });
  }

  // ------------------------------------------------------------------ host plumbing
  newId() {
    return `${this.viewId}-${++this.requestCount}`;
  }

  /** Send a request; ids are unique per page, since every view of a model sees every reply. */
  send(msg) {
    const full = { ...msg, id: msg.id ?? this.newId() };
    this.model.send(full);
    return full.id;
  }

  onMessage(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "notice") return this.notice(msg.message);
    if (msg.type === "run") return this.onRun(msg);
    this.store.receive(msg, buffers);
  }

  listen(event, fn) {
    this.model.on(event, fn);
    this.disposers.push(() => this.model.off(event, fn));
  }

  // ------------------------------------------------------------------ lifecycle
  async start() {
    this.el.classList.add("aw-host");
    // Arrow keys on the sliders belong to the widget, not to JupyterLab's notebook shortcuts.
    this.root = h("div", { class: "aw-root", "data-lm-suppress-shortcuts": "true" });
    this.el.replaceChildren(h("style", { text: css }), this.root);
    this.listen("msg:custom", (msg, buffers) => this.onMessage(msg, buffers));
    const follow = (name, fn) => this.listen(`change:${name}`, (m, value) => this.staleEcho(name, m, value) || fn());
    for (const name of ["layer", "head", "scale"]) follow(name, () => this.onViewChange());
    follow("selected_token", () => this.updateHighlights());
    follow("step", () => this.updateStep());
    this.listen("change:theme", () => this.applyTheme());
    this.listen("change:prompt", () => this.promptBox && (this.promptBox.value = this.model.get("prompt")));
    let reloadQueued = false;
    const reload = () => {
      if (reloadQueued) return;
      reloadQueued = true;
      queueMicrotask(() => {
        reloadQueued = false;
        this.build().catch((e) => this.fail(e));
      });
    };
    this.listen("change:_payload", reload);
    this.listen("change:_figures", reload);
    this.listen("change:_live", reload);
    this.listen("change:_blocks", reload);
    const themeWatch = new MutationObserver(() => this.applyTheme());
    themeWatch.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-light", "class"] });
    this.disposers.push(() => themeWatch.disconnect());
    if (globalThis.matchMedia) {
      const mq = globalThis.matchMedia("(prefers-color-scheme: dark)");
      const fn = () => this.applyTheme();
      mq.addEventListener?.("change", fn);
      this.disposers.push(() => mq.removeEventListener?.("change", fn));
    }
    await this.build();
  }

  destroy() {
    this.destroyed = true;
    for (const d of this.disposers.splice(0)) d();
    this.removePlots();
    this.images.clear();
    this.el.replaceChildren();
  }

  fail(error) {
    console.error("attn_widget:", error);
    this.notice(`attn_widget could not draw: ${error && error.message ? error.message : error}`);
  }

  removePlots() {
    this.stripTokens = null;
    for (const p of this.panels ?? []) p.views?.forEach((v) => v.remove());
    for (const v of this.barViews ?? []) v.remove();
    this.panels = [];
    this.barViews = [];
    this.bars = null;
  }

  async build() {
    markTime("aw:build");
    const payload = decodePayload(asBytes(this.model.get("_payload")));
    markTime("aw:decoded");
    this.header = payload.header;
    this.store.reset(payload);
    this.images.clear();
    this.sources = this.header.sources;
    this.compare = this.header.mode === "compare";
    this.layers = this.sources[0].layers.filter((l) => this.sources.every((s) => s.layers.includes(l)));
    this.heads = this.sources[0].heads.filter((x) => this.sources.every((s) => s.heads.includes(x)));
    this.tokens = this.sources[0].tokens.text; // the queries' tokens
    // Cross-attention: keys run over the other sequence (the encoder's tokens), so a token of
    // the strip (a query) has no column, and strip shading by attention does not apply.
    this.cross = !!this.sources[0].key_tokens;
    this.keyTokens = this.sources[0].key_tokens?.text ?? this.tokens;
    const version = this.header.bokeh_version;
    this.bokeh = await loadBokeh(version, () => bokehSource(this.model, version));
    markTime("aw:bokeh-ready");
    if (this.destroyed) return;
    this.removePlots();
    this.buildDom();
    const generation = (this.generation = (this.generation ?? 0) + 1);
    const current = () => !this.destroyed && this.generation === generation;
    markTime("aw:dom");
    await this.embedPlots();
    this.root.awHeatmapViews = () => this.panels.map((p) => p.view); // benchmarks hook their paints
    markTime("aw:embedded");
    if (!current()) return;
    this.applyTheme();
    this.onViewChange();
    this.updateStep();
    markTime("aw:first-image");
    requestAnimationFrame(() => markTime("aw:painted")); // after Bokeh's own frame callback
    // The heatmap first; the token strip (a thousand spans to style and lay out), the grid and
    // the bar chart once it is on screen.
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve)));
    if (!current()) return;
    this.buildStrip();
    this.updateHighlights();
    this.showToolbars();
    this.drawGrid();
    await this.embedBars();
    if (!current()) return;
    this.applyTheme();
    this.updateBars();
  }

  // ------------------------------------------------------------------ DOM
  buildDom() {
    const src = this.sources[0];
    const [p0, p1] = src.spans.prompt ?? src.spans.input ?? [0, this.tokens.length];
    const generated = src.spans.generated ?? [p1, p1];
    this.promptLen = p1;
    this.generated = generated;
    const name = this.compare
      ? this.sources.map((s) => `${s.label}: ${s.model.name} · ${s.tokens.text.length} tokens`).join(" vs ")
      : this.cross
        ? `${src.model.name} · cross-attention: ${this.tokens.length} decoder tokens (queries) → ${this.keyTokens.length} encoder tokens (keys)`
        : `${src.model.name} · ${this.tokens.length} tokens (prompt ${p1 - p0}, generated ${generated[1] - generated[0]})`;

    this.layerInput = keyboardSlider(h("input", { type: "range", min: 0, max: this.layers.length - 1, step: 1, class: "aw-layer", "aria-label": "layer" }));
    this.layerOut = h("output", { class: "aw-value" });
    this.headInput = keyboardSlider(h("input", { type: "range", min: 0, max: this.heads.length - 1, step: 1, class: "aw-head", "aria-label": "head" }));
    this.headOut = h("output", { class: "aw-value" });
    this.meanBox = h("input", { type: "checkbox", class: "aw-mean" });
    this.scaleSelect = h("select", { class: "aw-scale", "aria-label": "colour scale" });
    for (const [value, label] of Object.entries(SCALE_NAMES)) this.scaleSelect.append(h("option", { value, text: label }));
    this.layerInput.addEventListener("input", () => this.setTrait("layer", this.layers[+this.layerInput.value]));
    this.headInput.addEventListener("input", () => this.setTrait("head", this.heads[+this.headInput.value]));
    this.meanBox.addEventListener("change", () =>
      this.setTrait("head", this.meanBox.checked ? MEAN : this.heads[+this.headInput.value]));
    this.scaleSelect.addEventListener("change", () => this.setTrait("scale", this.scaleSelect.value));
    // Encoder-decoder traces: which attention (the kernel re-encodes the payload on a change).
    const blocks = this.model.get("_blocks") ?? [];
    this.blockSelect = null;
    if (blocks.length > 1) {
      this.blockSelect = h("select", { class: "aw-block", "aria-label": "attention block" });
      for (const b of blocks) this.blockSelect.append(h("option", { value: b, text: BLOCK_NAMES[b] ?? b }));
      this.blockSelect.value = this.model.get("block");
      this.blockSelect.addEventListener("change", () => {
        this.root.classList.add("aw-loading");
        this.setTrait("block", this.blockSelect.value);
      });
    }

    this.caveat = h("div", { class: "aw-caveat" }, h("span", { text: CAVEAT }), h("strong", { class: "aw-mean-caveat", text: ` ${MEAN_CAVEAT}` }));
    this.readout = h("div", { class: "aw-readout", role: "status", text: "Hover the heatmap or a token." });
    this.tooltip = h("div", { class: "aw-tooltip", role: "tooltip" });
    this.noticeBox = h("div", { class: "aw-notice", role: "alert" });
    this.plotsBox = h("div", { class: "aw-plots" });
    this.panels = this.panelSpecs().map((spec) => {
      const host = h("div", { class: "aw-plot-host" });
      const label = h("div", { class: "aw-plot-label", text: spec.title });
      const box = h("div", { class: "aw-plot" }, label, host);
      this.plotsBox.append(box);
      return { ...spec, host, label, box };
    });

    this.gridMetric = h("select", { class: "aw-grid-metric", "aria-label": "grid badge" });
    this.gridMetric.addEventListener("change", () => {
      this.metric = this.gridMetric.value;
      this.updateBadges();
    });
    this.grid = h("div", { class: "aw-grid" });
    const gridBox = h("div", { class: "aw-grid-box" },
      h("div", { class: "aw-section-title" }, h("span", { text: "All heads (click to select)" }), this.gridMetric),
      this.grid);

    this.strip = h("div", { class: "aw-strip" }); // filled after the heatmap's first paint
    const dirFrom = h("button", { type: "button", class: "aw-dir aw-on", text: "attention from" });
    const dirTo = h("button", { type: "button", class: "aw-dir", text: "attention to" });
    const setDir = (d) => {
      this.shadeDirection = d;
      dirFrom.classList.toggle("aw-on", d === "from");
      dirTo.classList.toggle("aw-on", d === "to");
      this.updateHighlights();
    };
    dirFrom.addEventListener("click", () => setDir("from"));
    dirTo.addEventListener("click", () => setDir("to"));
    const stripBox = h("div", { class: "aw-strip-box" },
      h("div", { class: "aw-section-title" },
        h("span", { text: this.cross ? "Decoder tokens (the queries): hover to highlight a row, click to pin"
          : "Tokens: hover to shade by attention, click to pin" }),
        this.cross ? null : h("span", { class: "aw-dirs" }, dirFrom, dirTo),
        this.shadeSourceButtons(),
        h("span", { class: "aw-legend" },
          h("span", { class: "aw-chip aw-prompt", text: "prompt" }),
          h("span", { class: "aw-chip aw-generated", text: "generated" }))),
      this.strip);

    this.stepsBox = h("div", { class: "aw-steps" });
    if (generated[1] > generated[0]) {
      this.stepInput = keyboardSlider(h("input", { type: "range", min: 0, max: generated[1] - generated[0] - 1, step: 1, class: "aw-step", "aria-label": "generation step" }));
      this.stepInput.addEventListener("input", () => this.setTrait("step", +this.stepInput.value));
      const move = (d) => () => this.setTrait("step", Math.min(Math.max(this.model.get("step") + d, 0), generated[1] - generated[0] - 1));
      this.stepLabel = h("span", { class: "aw-step-label" });
      this.barsHost = h("div", { class: "aw-bars-host" });
      this.stepsBox.append(
        h("div", { class: "aw-section-title" },
          h("span", { text: `Generation: the chosen output token's attention over ${this.cross ? "the encoder's tokens" : "earlier tokens"}` +
            (this.compare ? ` (${this.sources[0].label} solid, ${this.sources[1].label} faded, side by side)` : "") })),
        h("div", { class: "aw-row" },
          h("button", { type: "button", class: "aw-prev", text: "◀", "aria-label": "previous step", onclick: move(-1) }),
          this.stepInput,
          h("button", { type: "button", class: "aw-next", text: "▶", "aria-label": "next step", onclick: move(1) }),
          this.stepLabel),
        this.barsHost);
    } else {
      this.stepInput = null;
      this.barsHost = null;
    }

    this.promptBox = null;
    let promptArea = null;
    if (this.model.get("_live")) {
      this.promptBox = h("textarea", { class: "aw-prompt-text", rows: 2, "aria-label": "prompt" });
      this.promptBox.value = this.model.get("prompt");
      this.runButton = h("button", { type: "button", class: "aw-run", text: "Run" });
      this.runStatus = h("span", { class: "aw-run-status", role: "status" });
      this.runButton.addEventListener("click", () => this.runPrompt());
      this.promptBox.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey || e.shiftKey)) {
          e.preventDefault();
          e.stopPropagation(); // not JupyterLab's run-cell shortcut
          this.runPrompt();
        }
      });
      promptArea = h("div", { class: "aw-prompt" },
        h("div", { class: "aw-section-title" }, h("span", { text: "Prompt (re-runs the model in the kernel; Shift+Enter)" })),
        h("div", { class: "aw-row" }, this.promptBox, this.runButton), this.runStatus);
    }

    const parts = [
      h("div", { class: "aw-title", text: name }),
      h("div", { class: "aw-controls" },
        h("label", {}, h("span", { text: "Layer" }), this.layerInput, this.layerOut),
        h("label", {}, h("span", { text: "Head" }), this.headInput, this.headOut),
        h("label", {}, this.meanBox, h("span", { text: "mean of heads" })),
        h("label", {}, h("span", { text: "Colour" }), this.scaleSelect),
        this.blockSelect && h("label", {}, h("span", { text: "Attention" }), this.blockSelect)),
      this.caveat,
      this.noticeBox,
      h("div", { class: "aw-main" }, this.plotsBox,
        h("div", { class: "aw-side" }, this.readout, gridBox)),
      stripBox,
      this.stepsBox,
      promptArea,
      this.tooltip];
    this.root.replaceChildren(...parts.filter(Boolean));
  }

  /**
   * Compare view of traces with the same tokens: buttons choosing whose attention shades the
   * strip (A or B). With different tokens the strip shows A's and only A shades it.
   */
  shadeSourceButtons() {
    if (!this.compare) return null;
    const [a, b] = this.sources;
    const same = a.tokens.text.length === b.tokens.text.length && a.tokens.text.every((t, i) => t === b.tokens.text[i]);
    if (!same) return h("span", { class: "aw-note", text: `(tokens of ${a.label})` });
    const buttons = this.sources.map((src, i) => h("button", {
      type: "button", class: `aw-dir aw-shade-source${i === this.shadeSource ? " aw-on" : ""}`, text: src.label,
      title: `shade the tokens by ${src.label}'s attention`,
    }));
    buttons.forEach((btn, i) => btn.addEventListener("click", () => {
      this.shadeSource = i;
      buttons.forEach((x, j) => x.classList.toggle("aw-on", j === i));
      this.updateHighlights();
    }));
    return h("span", { class: "aw-dirs" }, h("span", { class: "aw-note", text: "shade by " }), ...buttons);
  }

  panelSpecs() {
    if (!this.compare) return [{ kind: "single", source: 0, title: "" }];
    return [
      { kind: "single", source: 0, title: this.sources[0].label },
      { kind: "single", source: 1, title: this.sources[1].label },
      { kind: "diff", source: -1, title: `|${this.sources[0].label} − ${this.sources[1].label}|` },
    ];
  }

  buildStrip() {
    const [g0] = this.generated;
    this.stripTokens = this.tokens.map((text, i) => {
      const special = this.sources[0].tokens.special?.[i];
      const span = h("span", {
        class: `aw-token ${i >= g0 && i < this.generated[1] ? "aw-generated" : "aw-prompt"}${special ? " aw-special" : ""}`,
        "data-pos": i,
        title: `position ${i} · id ${this.sources[0].tokens.ids[i]} · ${this.sources[0].tokens.raw[i]}`,
      });
      span.textContent = tokenLabel(text);
      return span;
    });
    this.strip.replaceChildren(...this.stripTokens);
    this.shownShade = null;
    const pos = (e) => {
      const t = e.target.closest?.(".aw-token");
      return t ? +t.dataset.pos : null;
    };
    this.strip.addEventListener("mouseover", (e) => {
      const p = pos(e);
      if (p === null) return;
      this.hover = { token: p };
      this.updateHighlights();
      this.showTokenReadout(p);
    });
    this.strip.addEventListener("mouseleave", () => {
      this.hover = null;
      this.updateHighlights();
    });
    this.strip.addEventListener("click", (e) => {
      const p = pos(e);
      if (p !== null) this.setTrait("selected_token", this.model.get("selected_token") === p ? -1 : p);
    });
  }

  async embedPlots() {
    const figures = this.model.get("_figures");
    const embed = async (item, host) => {
      const vm = await this.bokeh.embed.embed_item(structuredClone(item), host);
      const views = [...vm];
      return { views, root: views.find((v) => v.model.name === item_name(item)) ?? views[0] };
    };
    const item_name = (item) => (item.doc.roots[0].attributes ?? {}).name;
    for (const panel of this.panels) {
      const { views, root } = await embed(figures.heatmap, panel.host);
      const doc = root.model.document;
      Object.assign(panel, {
        views, view: root, plot: root.model, doc,
        cds: doc.get_model_by_name("heat_source"),
        xRange: doc.get_model_by_name("x_range"), yRange: doc.get_model_by_name("y_range"),
        xTicker: doc.get_model_by_name("x_ticker"), yTicker: doc.get_model_by_name("y_ticker"),
        xAxis: doc.get_model_by_name("x_axis"), yAxis: doc.get_model_by_name("y_axis"),
        colourBar: doc.get_model_by_name("colour_bar"),
        linear: doc.get_model_by_name("linear_mapper"), log: doc.get_model_by_name("log_mapper"),
        boxes: Object.fromEntries(["hover_row", "hover_col", "pin_row", "pin_col", "step_row"]
          .map((n) => [n, doc.get_model_by_name(n)])),
      });
      // The image sits on Bokeh's overlay layer (figure_items), so a new image repaints that
      // layer alone; the lower levels are clipped to the frame by Bokeh, this one by us.
      const image = doc.get_model_by_name("heat_image") ?? root.model.renderers.find((r) => r.data_source === panel.cds);
      const imageView = image && root.renderer_views?.get(image);
      if (imageView) Object.defineProperty(imageView, "needs_clip", { configurable: true, get: () => true });
      // Every new image marks the plot's data ranges stale, and the next paint then re-measures
      // the axes' and colour bar's labels (a forced page layout, 3+ ms in JupyterLab). Both
      // ranges are fixed Range1d, so data ranges never apply: keep the flag down.
      const ranges = root._range_manager;
      if (ranges && "invalidate_dataranges" in ranges) {
        Object.defineProperty(ranges, "invalidate_dataranges", { configurable: true, get: () => false, set: () => {} });
      }
      this.lut ??= paletteLUT(panel.linear.palette);
      const redraw = () => this.scheduleImages();
      for (const r of [panel.xRange, panel.yRange]) {
        r.properties.start.change.connect(redraw);
        r.properties.end.change.connect(redraw);
      }
      this.attachHover(panel);
    }
  }

  /**
   * The heatmaps' toolbars (pan, zoom, reset, save), added after the first paint: the skeleton
   * has none, since building its buttons costs ~0.1 s of the embed. On the right, with the plot
   * widened by as much, so the heatmap itself does not move.
   */
  showToolbars() {
    for (const p of this.panels) {
      if (p.plot.toolbar_location != null) continue;
      // Width first: the toolbar's view is built asynchronously, and a layout in between (as
      // a width change makes) must not look for it.
      p.plot.width += TOOLBAR_PX;
      p.plot.toolbar_location = "right";
    }
  }

  /** The generation bar chart, embedded after the heatmap's first paint. */
  async embedBars() {
    const figures = this.model.get("_figures");
    const item = figures.bars;
    if (this.barsHost) {
      const vm = await this.bokeh.embed.embed_item(structuredClone(item), this.barsHost);
      const views = [...vm];
      const root = views.find((v) => v.model.name === "bars") ?? views[0];
      this.barViews = views;
      const doc = root.model.document;
      this.bars = {
        plot: root.model, view: root, source: doc.get_model_by_name("bars_source"),
        ticker: doc.get_model_by_name("bars_x_ticker"), axis: doc.get_model_by_name("bars_x_axis"),
        xRange: doc.get_model_by_name("bars_x_range"),
        glyph: root.model.renderers.find((r) => r.data_source?.name === "bars_source")?.glyph,
      };
    } else {
      this.bars = null;
    }
  }

  // ------------------------------------------------------------------ traits
  setTrait(name, value) {
    if (this.model.get(name) === value) return;
    this.model.set(name, value); // the view follows at once, from the change event
    this.unsaved.set(name, value);
    this.saveAfterPaint();
  }

  /**
   * True (and the user's value set again) when a change from the kernel would undo a value set
   * here and not yet sent: the kernel's echo of an earlier move (ipywidgets applies the echo of
   * the last message sent, whatever was set since). Fast key presses on a slider otherwise lose
   * moves. `m` is the Backbone model; `_state_lock` is set while it applies kernel state.
   */
  staleEcho(name, m, value) {
    const mine = this.unsaved.get(name);
    if (mine === undefined || mine === value || !m || m._state_lock == null) return false;
    queueMicrotask(() => {
      if (this.destroyed || this.unsaved.get(name) !== mine) return;
      this.model.set(name, mine);
      this.saveAfterPaint();
    });
    return true;
  }

  /**
   * Tell the kernel after the frame that paints the change: sent at once, the kernel's reply
   * traffic (the echo, busy/idle status and JupyterLab's toolbar updates, ~5–10 ms of main
   * thread) lands before Bokeh's paint and delays it. The timer covers hidden pages (no frames).
   */
  saveAfterPaint() {
    if (this.saveQueued) return;
    this.saveQueued = true;
    const flush = () => {
      if (!this.saveQueued) return;
      this.saveQueued = false;
      clearTimeout(timer);
      this.model.save_changes();
      this.unsaved.clear();
    };
    const timer = setTimeout(flush, 100);
    requestAnimationFrame(() => setTimeout(flush));
  }

  onViewChange() {
    if (!this.panels?.length) return;
    const layer = this.model.get("layer");
    const head = this.model.get("head");
    const li = Math.max(0, this.layers.indexOf(layer));
    this.layerInput.value = li;
    this.layerOut.textContent = `${layer}`;
    if (head !== MEAN) this.headInput.value = Math.max(0, this.heads.indexOf(head));
    this.headOut.textContent = head === MEAN ? "mean" : `${head}`;
    this.meanBox.checked = head === MEAN;
    this.headInput.disabled = head === MEAN;
    this.scaleSelect.value = this.model.get("scale");
    this.root.classList.toggle("aw-is-mean", head === MEAN);
    this.root.classList.toggle("aw-compare", this.compare);
    this.draw();
    this.markGrid();
  }

  currentKey() {
    return matrixKey(this.model.get("layer"), this.model.get("head"));
  }

  /** The matrices shown now, one per source, or null while one is being fetched. */
  currentSections() {
    const key = this.currentKey();
    const secs = this.sources.map((_, i) => this.store.want(i, key));
    return secs.every(Boolean) ? secs : null;
  }

  // ------------------------------------------------------------------ drawing
  draw() {
    if (!this.panels?.length || this.destroyed) return;
    const secs = this.currentSections();
    const layer = this.model.get("layer");
    const head = this.model.get("head");
    const what = `layer ${layer}, ${head === MEAN ? "mean of heads" : `head ${head}`}`;
    if (!secs) {
      this.root.classList.add("aw-loading");
      for (const p of this.panels) p.label.textContent = `${p.title ? p.title + " · " : ""}${what} · loading…`;
      return;
    }
    this.root.classList.remove("aw-loading");
    this.sections = secs;
    for (const p of this.panels) p.label.textContent = `${p.title ? p.title + " · " : ""}${what}`;
    this.drawImages();
    this.updateTicks();
    this.updateHighlights();
    this.updateBars();
    this.prefetch();
  }

  scheduleImages() {
    if (this.imagesQueued) return;
    this.imagesQueued = true;
    requestAnimationFrame(() => {
      this.imagesQueued = false;
      if (!this.destroyed && this.sections) {
        this.drawImages();
        this.updateTicks();
      }
    });
  }

  drawImages() {
    const scale = this.model.get("scale");
    let cached = true;
    for (const p of this.panels) {
      const { entry, region, hit } = this.imageFor(p, this.currentKey(), this.sections, scale);
      if (!hit) cached = false;
      const pooled = entry;
      const mapping = entry.mapping;
      p.cds.data = {
        image: [entry.image],
        x: [region.k0], y: [region.q0], dw: [pooled.w * pooled.block], dh: [pooled.h * pooled.block],
      };
      p.block = pooled.block;
      // Bokeh re-lays out on every property write, so write only what changed.
      const mapper = mapping.kind === "log" ? p.log : p.linear;
      if (mapping.kind === "linear" && (p.linear.low !== mapping.low || p.linear.high !== mapping.high)) {
        p.linear.setv({ low: mapping.low, high: mapping.high });
      }
      if (p.colourBar.color_mapper !== mapper) p.colourBar.color_mapper = mapper;
      const name = p.kind === "diff" ? `|A − B| (max ${pooled.max.toFixed(3)})`
        : { linear: "weight", log: `weight (log, < ${LOG_LOW} at bottom)`, row: "weight ÷ row max" }[scale];
      const title = pooled.block > 1 ? `${name} · 1 px = max of ${pooled.block}×${pooled.block}` : name;
      if (p.colourBar.title !== title) p.colourBar.title = title;
    }
    const shown = `${this.currentKey()}:${scale}`;
    this.root.dataset.shown = shown;
    this.root.dataset.imageCache = cached ? "hit" : "miss"; // for benchmarks and tests
    this.paints = (this.paints ?? 0) + 1;
    this.root.dataset.paints = this.paints;
  }

  /**
   * The coloured image of `key` (sections `secs`, one per source) for panel `p` at its visible
   * region and pixel size: from the image cache, or pooled and coloured now and cached.
   */
  imageFor(p, key, secs, scale) {
    const [nq, nk] = p.kind === "diff"
      ? secs.map(matrixShape).reduce((a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1])])
      : matrixShape(secs[p.source]);
    const region = visibleRegion(p, nq, nk);
    const frame = p.view.frame?.bbox;
    const maxPixels = Math.min(1024, Math.ceil((frame ? Math.max(frame.width, frame.height) : 500) * (globalThis.devicePixelRatio || 1)));
    const used = p.kind === "diff" ? secs : [secs[p.source]];
    const cacheKey = `${p.kind}|${p.source}|${key}|${scale}|${region.q0},${region.q1},${region.k0},${region.k1}|${maxPixels}`;
    // Benchmarks set __awColdImages to time pooling and colouring on every move.
    const entry = globalThis.__awColdImages ? null : this.images.get(cacheKey, used);
    if (entry) return { entry, region, hit: true };
    let pooled;
    let mapping;
    let rgba;
    if (p.kind === "diff") {
      pooled = poolDiff(secs[0], secs[1], region, maxPixels);
      mapping = scaleMapping("diff", pooled.max);
    } else if (scale === "row") {
      pooled = poolRelativeFast(secs[p.source], region, maxPixels);
      mapping = scaleMapping(scale);
    } else {
      mapping = scaleMapping(scale);
      pooled = poolColourFast(secs[p.source], region, maxPixels, this.coloursFor(mapping));
      rgba = pooled.rgba;
    }
    rgba ??= colorize(pooled.values, mapping, this.lut);
    const { ndarray } = this.bokeh.require("core/util/ndarray");
    const made = {
      image: ndarray(rgba, { shape: [pooled.h, pooled.w], dtype: "uint32" }),
      w: pooled.w, h: pooled.h, block: pooled.block, max: pooled.max, mapping,
    };
    this.images.set(cacheKey, used, made, rgba.byteLength);
    return { entry: made, region, hit: false };
  }

  /** The float16-pattern → colour table (bitsLUT) of a mapping, made once per view. */
  coloursFor(mapping) {
    const key = `${mapping.kind}|${mapping.low}|${mapping.high}`;
    this.colourTables ??= new Map();
    let table = this.colourTables.get(key);
    if (!table) this.colourTables.set(key, (table = bitsLUT(mapping, this.lut)));
    return table;
  }

  /**
   * Colour the neighbours a slider move goes to next (already in the browser) while the page is
   * idle, one per idle slice with room to spare, so that the move finds its image cached. Only
   * for matrices that pool within an idle slice: up to 4096² cells with WebAssembly (~10 ms),
   * 2048² without.
   */
  prerender(keys) {
    const idle = globalThis.requestIdleCallback;
    if (!idle || !this.panels?.length || globalThis.__awColdImages) return;
    const generation = this.generation;
    const scale = this.model.get("scale");
    const todo = [...keys];
    const step = (deadline) => {
      if (this.destroyed || this.generation !== generation || this.model.get("scale") !== scale) return;
      while (todo.length && deadline.timeRemaining() > 12) {
        const key = todo.shift();
        const secs = this.sources.map((_, i) => this.store.get(i, key));
        if (!secs.every(Boolean)) continue;
        const cells = Math.max(...secs.map((s) => matrixShape(s)[0] * matrixShape(s)[1]));
        if (cells > (wasmEngine() ? 4096 * 4096 : 2048 * 2048)) continue;
        for (const p of this.panels) this.imageFor(p, key, secs, scale);
      }
      if (todo.length) idle(step, { timeout: 1000 });
    };
    idle(step, { timeout: 1000 });
  }

  updateTicks() {
    for (const p of this.panels) {
      const frame = p.view.frame?.bbox;
      const set = (range, ticker, axis, pixels, tokens) => {
        const { ticks, labels } = axisTicks(Math.min(range.start, range.end), Math.max(range.start, range.end), tokens, pixels);
        const key = ticks.join(",");
        if (ticker.__awKey === key) return; // unchanged: spare Bokeh a re-layout
        ticker.__awKey = key;
        ticker.ticks = ticks;
        axis.major_label_overrides = labels;
      };
      set(p.xRange, p.xTicker, p.xAxis, frame ? frame.width : 400, this.keyTokens);
      set(p.yRange, p.yTicker, p.yAxis, frame ? frame.height : 400, this.tokens);
    }
  }

  prefetch() {
    const layer = this.model.get("layer");
    const head = this.model.get("head");
    const keys = neighbourKeys(layer, head, this.layers, this.heads);
    const go = () => this.sources.forEach((_, i) => this.store.prefetch(i, keys));
    (globalThis.requestIdleCallback ?? setTimeout)(go);
    this.prerender(keys);
    if (!this.store.get(0, "thumbs")) this.sources.forEach((_, i) => this.store.want(i, "grid"));
  }

  // ------------------------------------------------------------------ hover, pin, strip
  attachHover(panel) {
    const target = panel.view.el;
    let down = null;
    const cell = (e) => {
      const frame = panel.view.frame;
      const canvas = panel.view.canvas_view?.el ?? target;
      const r = canvas.getBoundingClientRect();
      const sx = e.clientX - r.left;
      const sy = e.clientY - r.top;
      const bb = frame.bbox;
      if (sx < bb.left || sx > bb.right || sy < bb.top || sy > bb.bottom) return null;
      const k = Math.floor(frame.x_scale.invert(sx));
      const q = Math.floor(frame.y_scale.invert(sy));
      if (!this.sections) return null;
      const sec = panel.kind === "diff" ? null : this.sections[panel.source];
      const [nq, nk] = sec ? matrixShape(sec) : [Math.min(...this.sections.map((s) => matrixShape(s)[0])), Math.min(...this.sections.map((s) => matrixShape(s)[1]))];
      return q >= 0 && k >= 0 && q < nq && k < nk ? { q, k } : null;
    };
    const move = (e) => {
      const c = cell(e);
      this.hover = c;
      if (!c) {
        this.tooltip.classList.remove("aw-visible");
        this.updateHighlights();
        return;
      }
      this.showCellReadout(c, panel);
      const rr = this.root.getBoundingClientRect();
      this.tooltip.style.left = `${e.clientX - rr.left + 14}px`;
      this.tooltip.style.top = `${e.clientY - rr.top + 14}px`;
      this.tooltip.classList.add("aw-visible");
      this.updateHighlights();
    };
    target.addEventListener("mousemove", move);
    target.addEventListener("mouseleave", () => {
      this.hover = null;
      this.tooltip.classList.remove("aw-visible");
      this.updateHighlights();
    });
    target.addEventListener("mousedown", (e) => (down = [e.clientX, e.clientY]));
    target.addEventListener("click", (e) => {
      if (!down || Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 3) return;
      const c = cell(e);
      if (c) this.setTrait("selected_token", this.model.get("selected_token") === c.q ? -1 : c.q);
    });
  }

  cellLines(c, panel) {
    const tq = this.tokens[c.q];
    const tk = this.keyTokens[c.k];
    const lines = [`query ${c.q} ${quoted(tq)} → key ${c.k} ${quoted(tk)}`];
    const fmt = (v) => (Number.isNaN(v) ? "—" : v < 1e-3 && v > 0 ? v.toExponential(2) : v.toFixed(4));
    if (this.compare) {
      const a = valueAt(this.sections[0], c.q, c.k);
      const b = valueAt(this.sections[1], c.q, c.k);
      lines.push(`${this.sources[0].label} ${fmt(a)} · ${this.sources[1].label} ${fmt(b)} · |Δ| ${fmt(Math.abs(a - b))}`);
    } else {
      lines.push(`weight ${fmt(valueAt(this.sections[panel.source], c.q, c.k))}`);
    }
    return lines;
  }

  showCellReadout(c, panel) {
    const lines = this.cellLines(c, panel);
    this.readout.replaceChildren(...lines.map((t) => h("div", { text: t })));
    this.tooltip.replaceChildren(...lines.map((t) => h("div", { text: t })));
  }

  showTokenReadout(p) {
    const src = this.sources[0].tokens;
    const kind = p >= this.generated[0] && p < this.generated[1] ? "generated" : "prompt";
    this.readout.replaceChildren(
      h("div", { text: `token ${p} ${quoted(this.tokens[p])} (${kind})` }),
      h("div", { text: `id ${src.ids[p]} · raw ${JSON.stringify(src.raw[p])}` }));
  }

  /** Row/column boxes in the heatmap and strip shading, from the hovered or pinned token. */
  updateHighlights() {
    if (!this.panels?.length || !this.sections) return;
    const pinned = this.model.get("selected_token");
    const hq = this.hover ? (this.hover.token ?? this.hover.q) : null;
    const hk = this.hover ? (this.hover.token !== undefined ? (this.cross ? null : this.hover.token) : this.hover.k) : null;
    for (const p of this.panels) {
      const nk = Math.max(p.xRange.bounds?.[1] ?? this.keyTokens.length, this.keyTokens.length);
      const nq = Math.max(p.yRange.bounds?.[1] ?? this.tokens.length, this.tokens.length);
      const rowBox = (box, q) => setChanged(box, q === null || q < 0 ? { visible: false } : { visible: true, left: 0, right: nk, top: q, bottom: q + 1 });
      const colBox = (box, k) => setChanged(box, k === null || k < 0 ? { visible: false } : { visible: true, left: k, right: k + 1, top: 0, bottom: nq });
      rowBox(p.boxes.hover_row, hq);
      colBox(p.boxes.hover_col, hk);
      rowBox(p.boxes.pin_row, pinned);
      colBox(p.boxes.pin_col, this.cross ? null : pinned);
    }
    this.shadeStrip(hq ?? (pinned >= 0 ? pinned : null));
  }

  shadeStrip(pos) {
    if (this.shadeQueued) {
      this.shadePos = pos;
      return;
    }
    this.shadePos = pos;
    this.shadeQueued = true;
    requestAnimationFrame(() => {
      this.shadeQueued = false;
      this.applyShade(this.shadePos);
    });
  }

  applyShade(pos) {
    const pinned = this.model.get("selected_token");
    const sec = this.sections?.[this.shadeSource] ?? this.sections?.[0];
    let weights = null;
    if (pos !== null && pos !== undefined && sec && !this.cross) {
      weights = this.shadeDirection === "from" ? row(sec, pos) : column(sec, pos);
      let max = 0;
      for (const w of weights) if (w > max) max = w;
      if (max > 0) for (let i = 0; i < weights.length; i++) weights[i] /= max;
    }
    // Touch only the tokens whose look changes: style writes to a thousand spans would make
    // the next Bokeh paint recompute the whole page's styles.
    if (!this.stripTokens) return;
    const shown = (this.shownShade ??= this.stripTokens.map(() => ({ w: "0", cls: 0 })));
    this.stripTokens.forEach((span, i) => {
      const w = weights && !Number.isNaN(weights[i]) ? weights[i].toFixed(2) : "0";
      const cls = (weights ? 1 : 0) | (i === pos ? 2 : 0) | (i === pinned ? 4 : 0);
      const old = shown[i];
      if (old.w !== w) span.style.setProperty("--aw-w", (old.w = w));
      if (old.cls !== cls) {
        span.classList.toggle("aw-shaded", (cls & 1) !== 0);
        span.classList.toggle("aw-focus", (cls & 2) !== 0);
        span.classList.toggle("aw-pinned", (cls & 4) !== 0);
        old.cls = cls;
      }
    });
  }

  // ------------------------------------------------------------------ generation steps
  updateStep() {
    if (!this.stepInput || !this.panels?.length) return;
    const t = this.model.get("step");
    this.stepInput.value = t;
    const out = this.generated[0] + t;
    const q = out - 1;
    this.stepLabel.textContent = q >= 0
      ? `step ${t}: output ${quoted(this.tokens[out])} (position ${out}), produced by query ${q} ${quoted(this.tokens[q])}`
      : `step ${t}: output ${quoted(this.tokens[out])} has no earlier token to attend from`;
    for (const p of this.panels) {
      setChanged(p.boxes.step_row, q >= 0 ? { visible: true, left: 0, right: this.keyTokens.length, top: q, bottom: q + 1 } : { visible: false });
    }
    this.updateBars();
  }

  updateBars() {
    if (!this.bars || !this.sections) return;
    const t = this.model.get("step");
    const q = this.generated[0] + t - 1;
    if (q < 0) {
      this.bars.source.data = { x: [], top: [], color: [] };
      return;
    }
    // Compare: A's bar and B's (faded) side by side at each position both traces have.
    const shown = this.compare ? [0, 1] : [0];
    const width = shown.length > 1 ? 0.4 : 0.8;
    if (this.bars.glyph && this.bars.width !== width) {
      this.bars.glyph.width = width;
      this.bars.width = width;
    }
    const dark = this.dark;
    const x = [];
    const top = [];
    const color = [];
    // Cross-attention: the output token's query row runs over every encoder token (the source).
    const nKeys = this.cross ? this.keyTokens.length : q + 1;
    for (const i of shown) {
      if (q >= matrixShape(this.sections[i])[0]) continue;
      const weights = row(this.sections[i], q);
      const offset = shown.length > 1 ? 0.3 + 0.4 * i : 0.5;
      const alpha = i === 0 ? "" : "80";
      for (let k = 0; k < nKeys && k < weights.length; k++) {
        x.push(k + offset);
        top.push(weights[k]);
        const gen = !this.cross && k >= this.generated[0];
        color.push((gen ? (dark ? COLOURS.generatedDark : COLOURS.generated) : (dark ? COLOURS.promptDark : COLOURS.prompt)) + alpha);
      }
    }
    this.bars.source.data = { x, top, color };
    this.bars.xRange.setv({ start: 0, end: nKeys });
    const frame = this.bars.view.frame?.bbox;
    const { ticks, labels } = axisTicks(0, nKeys, this.keyTokens, frame ? frame.width : 600);
    this.bars.ticker.ticks = ticks;
    this.bars.axis.major_label_overrides = labels;
  }

  // ------------------------------------------------------------------ all-heads grid
  drawGrid() {
    if (!this.grid) return;
    const thumbs = this.store.get(0, "thumbs");
    if (!thumbs) {
      this.grid.replaceChildren(h("div", { class: "aw-muted", text: "loading thumbnails…" }));
      return;
    }
    const have = [...this.store.base.values()]
      .filter((s) => s.source === 0 && s.key.startsWith("metric/")).map((s) => s.key.slice(7));
    if (this.gridMetric.options.length !== have.length + 1) {
      this.gridMetric.replaceChildren(h("option", { value: "", text: have.length ? "no badge" : "no metrics available" }),
        ...have.map((n) => h("option", { value: n, text: n.replace(/_/g, " "), title: this.header.metrics?.[n] ?? n })));
      this.metric = have.includes(this.metric) ? this.metric : have[0] ?? "";
      this.gridMetric.value = this.metric;
    }
    const [nL, nH, r, c] = thumbs.shape;
    const causal = this.sources[0].causal;
    const table = h("div", { class: "aw-grid-table", style: `grid-template-columns: auto repeat(${nH}, auto)` });
    table.append(h("span", { class: "aw-grid-corner", text: "L\\H" }), ...this.sources[0].heads.map((x) => h("span", { class: "aw-grid-head", text: `${x}` })));
    this.gridCells = new Map();
    for (let li = 0; li < nL; li++) {
      const layer = this.sources[0].layers[li];
      table.append(h("span", { class: "aw-grid-layer", text: `${layer}` }));
      for (let hi = 0; hi < nH; hi++) {
        const head = this.sources[0].heads[hi];
        const canvas = h("canvas", { width: c, height: r });
        const ctx = canvas.getContext("2d");
        const img = ctx.createImageData(c, r);
        const px = new Uint32Array(img.data.buffer);
        const off = (li * nH + hi) * r * c;
        for (let y = 0; y < r; y++) {
          // Above a causal diagonal: transparent (the cell's background, in either theme).
          const end = causal ? Math.min(c, y + 1) : c;
          for (let x = 0; x < end; x++) px[y * c + x] = this.lut[thumbs.data[off + y * c + x]];
        }
        ctx.putImageData(img, 0, 0);
        const badge = h("span", { class: "aw-badge" });
        const cell = h("button", {
          type: "button", class: "aw-grid-cell", "data-layer": layer, "data-head": head,
        }, canvas, badge);
        cell.addEventListener("click", () => {
          this.setTrait("layer", layer);
          this.setTrait("head", head);
        });
        this.gridCells.set(`${layer}/${head}`, { cell, badge, index: li * nH + hi, layer, head });
        table.append(cell);
      }
    }
    this.grid.replaceChildren(table);
    this.updateBadges();
    this.markGrid();
  }

  /** Badge texts and tooltips of the grid for the chosen metric (the thumbnails stay). */
  updateBadges() {
    if (!this.gridCells) return;
    const metric = this.metric ? this.store.get(0, `metric/${this.metric}`) : null;
    for (const { cell, badge, index, layer, head } of this.gridCells.values()) {
      const value = metric ? formatMetric(metric.data[index]) : "";
      badge.textContent = value;
      badge.hidden = !metric;
      cell.title = `layer ${layer}, head ${head}${metric ? ` · ${this.metric} ${value}` : ""}`;
    }
  }

  markGrid() {
    if (!this.gridCells) return;
    const layer = this.model.get("layer");
    const head = this.model.get("head");
    for (const { cell, layer: l, head: x } of this.gridCells.values()) {
      cell.classList.toggle("aw-current", l === layer && (x === head || head === MEAN));
    }
  }

  // ------------------------------------------------------------------ prompt box
  runPrompt() {
    if (!this.promptBox || this.running) return;
    this.running = true;
    this.runButton.disabled = true;
    this.runStatus.textContent = "running…";
    this.send({ type: "run", prompt: this.promptBox.value });
  }

  onRun(msg) {
    if (typeof msg.id === "string" && !msg.id.startsWith(`${this.viewId}-`)) return;
    if (!this.runStatus) return;
    if (msg.state === "running") {
      this.runStatus.textContent = "running…";
      return;
    }
    this.running = false;
    this.runButton.disabled = false;
    this.runStatus.textContent = msg.state === "done" ? "done" : `error: ${msg.message}`;
    this.runStatus.classList.toggle("aw-error", msg.state !== "done");
  }

  // ------------------------------------------------------------------ notices and theme
  notice(message) {
    if (!this.noticeBox) return;
    this.noticeBox.textContent = String(message);
    this.noticeBox.classList.add("aw-visible");
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => this.noticeBox.classList.remove("aw-visible"), 8000);
  }

  applyTheme() {
    const choice = this.model.get("theme");
    const lab = document.body?.dataset?.jpThemeLight;
    const dark = choice === "dark" || (choice === "auto" && (lab !== undefined ? lab === "false"
      : !!globalThis.matchMedia?.("(prefers-color-scheme: dark)").matches));
    const changed = this.dark !== dark;
    this.dark = dark;
    this.root.classList.toggle("aw-dark", dark);
    const c = THEME[dark ? "dark" : "light"];
    for (const p of this.panels ?? []) themePlot(p.doc, c);
    if (this.bars) themePlot(this.bars.plot.document, c);
    if (changed && this.sections) this.updateBars(); // thumbnails are theme-free (transparent above the diagonal)
  }
}

/** Set only the Bokeh properties that change, in one update: each write costs a re-layout. */
function setChanged(model, props) {
  const changed = Object.fromEntries(Object.entries(props).filter(([k, v]) => model[k] !== v));
  if (Object.keys(changed).length) model.setv(changed);
}

/**
 * Arrow keys, Home/End and PageUp/PageDown on a range input, done by the widget: hosts such as
 * JupyterLab cancel the browser's own handling of keys pressed inside notebook outputs.
 */
function keyboardSlider(input) {
  input.addEventListener("keydown", (e) => {
    const min = +input.min;
    const max = +input.max;
    const v = +input.value;
    const page = Math.max(1, Math.round((max - min) / 10));
    const next = { ArrowRight: v + 1, ArrowUp: v + 1, ArrowLeft: v - 1, ArrowDown: v - 1,
      PageUp: v + page, PageDown: v - page, Home: min, End: max }[e.key];
    if (next === undefined || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    e.stopPropagation();
    const clamped = Math.min(max, Math.max(min, next));
    if (clamped === v) return;
    input.value = clamped;
    input.dispatchEvent(new Event("input", { bubbles: true }));
  });
  return input;
}

function themePlot(doc, c) {
  for (const m of doc.all_models) {
    const t = m.type;
    if (t === "Plot" || t === "Figure") m.setv({ background_fill_color: c.bg, border_fill_color: c.bg, outline_line_color: c.line });
    else if (t === "LinearAxis") m.setv({ axis_label_text_color: c.fg, major_label_text_color: c.fg, axis_line_color: c.muted, major_tick_line_color: c.muted, minor_tick_line_color: null });
    else if (t === "ColorBar") m.setv({ background_fill_color: c.bg, major_label_text_color: c.fg, title_text_color: c.fg, major_tick_line_color: c.bg });
  }
}

function visibleRegion(panel, nq, nk) {
  const clamp = (v, n) => Math.min(Math.max(v, 0), n);
  const xs = [panel.xRange.start, panel.xRange.end];
  const ys = [panel.yRange.start, panel.yRange.end];
  return {
    k0: clamp(Math.floor(Math.min(...xs)), nk), k1: clamp(Math.ceil(Math.max(...xs)), nk),
    q0: clamp(Math.floor(Math.min(...ys)), nq), q1: clamp(Math.ceil(Math.max(...ys)), nq),
  };
}

function formatMetric(v) {
  if (Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** A performance mark (for benchmarks: benchmarks/bench_widget.py --first-paint). */
function markTime(name) {
  globalThis.performance?.mark?.(name);
}

/** BokehJS source text from the host (PROTOCOL.md: the `bokeh` request). */
function requestBokeh(model, version) {
  return new Promise((resolve, reject) => {
    const id = `bokeh-${Math.random().toString(36).slice(2)}-${++viewCounter}`;
    const onMessage = (msg, buffers) => {
      if (!msg || msg.id !== id) return;
      markTime("aw:bokeh-received");
      model.off("msg:custom", onMessage);
      if (msg.type === "bokeh" && buffers?.length) resolve(asBytes(buffers[0]));
      else reject(new Error(msg.message || "the host sent no BokehJS"));
    };
    model.on("msg:custom", onMessage);
    markTime("aw:bokeh-request");
    model.send({ type: "bokeh", id, version });
  });
}

/** BokehJS sent with the widget (the first of a kernel), or else asked for. */
function bokehSource(model, version) {
  const pushed = model.get("_bokeh_js");
  return pushed?.byteLength ? Promise.resolve(asBytes(pushed)) : requestBokeh(model, version);
}

/** Load BokehJS as soon as the model exists, before any view renders. */
function initialize({ model }) {
  markTime("aw:initialize");
  let version;
  try {
    version = decodeHeader(model.get("_payload")).bokeh_version;
  } catch {
    return; // render() reports a bad payload
  }
  loadBokeh(version, () => bokehSource(model, version)).catch(() => {});
}

async function render({ model, el }) {
  markTime("aw:render");
  const view = new AttentionView(model, el);
  try {
    await view.start();
  } catch (e) {
    view.fail(e);
  }
  return () => view.destroy();
}

export default { initialize, render };
