// The heatmap panels (one; or A, B and |A − B| in compare view): the Bokeh skeleton embedded per
// panel and filled with images pooled and coloured here (WebAssembly where it runs), kept in an
// image cache and pre-rendered while the page is idle; token ticks; the hover readout and
// tooltip; the hover, pin and step boxes. PROTOCOL.md, "Bokeh skeletons".

import { embedFigure, setChanged, themeDocument } from "./bokeh.js";
import { bitsLUT, colorize, paletteLUT, poolDiff, scaleMapping, sectionMax, viewMapping } from "./colour.js";
import { h } from "./dom.js";
import { poolColourFast, poolRelativeFast, wasmEngine } from "./fastpool.js";
import { cellLines, colourBarTitle } from "./legend.js";
import { coverage, covers, matrixShape } from "./payload.js";
import { ImageCache, MEAN } from "./store.js";
import { axisTicks } from "./tokens.js";

export { cellLines, colourBarTitle } from "./legend.js";
import { cellRegion, coversView, detailRegion, pixelsFor, placement, resolutionText, stepBox } from "./zoom.js";

const IMAGE_CACHE_BYTES = 48 * 2 ** 20; // per view: a dozen 1024² images
const TOOLBAR_PX = 32; // width of Bokeh's vertical toolbar
const BOXES = ["hover_row", "hover_col", "pin_row", "pin_col", "step_row"];
const SETTLE_MS = 150; // a zoom or pan counts as done once the ranges rest this long

export class Heatmap {
  /**
   * state: the view's shared state (reads `trace`, sets `lut`, the palette's colour table).
   * get(name): a trait. section(source, key): a matrix already in the browser, or undefined.
   * root: the view's element (carries data-shown, data-image-cache, data-paints).
   * onHover({q, k} | null): the hovered cell. onPin(q): a click on a cell's row.
   * onSettle(): the visible ranges stopped moving (a zoom or pan ended): time to ask for detail.
   */
  constructor({ state, get, section, root, onHover, onPin, onSettle = () => {} }) {
    Object.assign(this, { state, get, section, root, onHover, onPin, onSettle });
    this.images = new ImageCache(IMAGE_CACHE_BYTES);
    this.colourTables = new Map();
    this.panels = [];
    this.sections = null;
    this.paints = 0;
    this.generation = 0;
  }

  /** Panels embedded, so that images and boxes have somewhere to go. */
  get ready() {
    return this.panels.length > 0 && this.panels.every((p) => p.view);
  }

  /** The panels' boxes (not embedded yet) and the tooltip; hover lines go to `readout` too. */
  build(readout) {
    const { sources, compare } = this.state.trace;
    this.generation++;
    this.readout = readout;
    this.tooltip = h("div", { class: "aw-tooltip", role: "tooltip" });
    const plots = h("div", { class: "aw-plots" });
    this.panels = panelSpecs(sources, compare).map((spec) => {
      const host = h("div", { class: "aw-plot-host" });
      const label = h("div", { class: "aw-plot-label", text: spec.title });
      // Styled inline like the label above the plot (.aw-plot-label), which tests and hosts find by class.
      const note = h("div", { class: "aw-resolution", style: "font-size: 12px; color: var(--aw-muted); min-height: 1.4em" });
      plots.append(h("div", { class: "aw-plot" }, label, host, note));
      return { ...spec, host, label, note };
    });
    return { plots, tooltip: this.tooltip };
  }

  /** Embed the `heatmap` skeleton (`_figures.heatmap`) once per panel. */
  async embed(bokeh, item) {
    this.bokeh = bokeh;
    for (const panel of this.panels) {
      const { views, root } = await embedFigure(bokeh, item, panel.host, (item.doc.roots[0].attributes ?? {}).name);
      const doc = root.model.document;
      const cds = doc.get_model_by_name("heat_source");
      // The image sits on Bokeh's overlay layer (figure_items), so a new image repaints that
      // layer alone; the lower levels are clipped to the frame by Bokeh, this one by us.
      const image = doc.get_model_by_name("heat_image") ?? root.model.renderers.find((r) => r.data_source === cds);
      const imageView = image && root.renderer_views?.get(image);
      if (imageView) Object.defineProperty(imageView, "needs_clip", { configurable: true, get: () => true });
      // Every new image marks the plot's data ranges stale, and the next paint then re-measures
      // the axes' and colour bar's labels (a forced page layout, 3+ ms in JupyterLab). Both
      // ranges are fixed Range1d, so data ranges never apply: keep the flag down.
      const ranges = root._range_manager;
      if (ranges && "invalidate_dataranges" in ranges) {
        Object.defineProperty(ranges, "invalidate_dataranges", { configurable: true, get: () => false, set: () => {} });
      }
      Object.assign(panel, {
        views, plot: root.model, doc, cds,
        xRange: doc.get_model_by_name("x_range"), yRange: doc.get_model_by_name("y_range"),
        xTicker: doc.get_model_by_name("x_ticker"), yTicker: doc.get_model_by_name("y_ticker"),
        xAxis: doc.get_model_by_name("x_axis"), yAxis: doc.get_model_by_name("y_axis"),
        colourBar: doc.get_model_by_name("colour_bar"),
        linear: doc.get_model_by_name("linear_mapper"), log: doc.get_model_by_name("log_mapper"),
        boxes: Object.fromEntries(BOXES.map((n) => [n, doc.get_model_by_name(n)])),
      });
      this.state.lut ??= paletteLUT(panel.linear.palette);
      const redraw = () => {
        this.scheduleImages();
        clearTimeout(this.settleTimer);
        this.settleTimer = setTimeout(() => !this.destroyed && this.onSettle(), SETTLE_MS);
      };
      for (const r of [panel.xRange, panel.yRange]) {
        r.properties.start.change.connect(redraw);
        r.properties.end.change.connect(redraw);
      }
      this.attachHover(panel, root);
      panel.view = root; // last: the panel is ready
    }
  }

  /** The Bokeh views of the heatmaps (benchmarks wrap their paint). */
  views() {
    return this.panels.map((p) => p.view);
  }

  /**
   * The toolbars (pan, zoom, reset, save), added after the first paint: the skeleton has none,
   * since building its buttons costs ~0.1 s of the embed. On the right, with the plot widened
   * by as much, so the heatmap itself does not move.
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

  /** The panels' labels: their titles, then `text`. */
  label(text) {
    for (const p of this.panels) p.label.textContent = `${p.title ? p.title + " · " : ""}${text}`;
  }

  /**
   * Show the matrices `sections` (one per source) of `key` in every panel, with `detail`
   * ({key, sections, state}) drawn over them where it covers: a full-resolution region of a
   * pooled head (`state` "shown"), or why there is none ("loading", "tooBig", null).
   */
  draw(key, sections, detail = null) {
    this.key = key;
    this.sections = sections;
    this.detail = detail;
    this.drawImages();
    this.updateTicks();
    this.refreshReadout(); // the hovered cell's value in the head now shown
  }

  scheduleImages() {
    if (this.imagesQueued) return;
    this.imagesQueued = true;
    requestAnimationFrame(() => {
      this.imagesQueued = false;
      if (!this.destroyed && this.sections && this.ready) {
        this.drawImages();
        this.updateTicks();
        this.showStep();
      }
    });
  }

  drawImages() {
    const scale = this.get("scale");
    let cached = true;
    const detail = this.detail?.sections ? this.detail : null;
    for (const p of this.panels) {
      const view = this.visible(p);
      const maxPixels = this.maxPixels(p);
      // A region that covers the whole view is drawn alone: the pooled squares under it would
      // show through its transparent cells above the diagonal.
      const alone = detail && coversView(this.used(p, detail.sections)[0], view);
      const base = alone ? null : this.imageFor(p, this.key, this.sections, scale, view, maxPixels);
      const over = detail ? this.imageFor(p, detail.key, detail.sections, scale, view, maxPixels, base) : null;
      const shown = [base, over].filter(Boolean);
      if (shown.some((l) => !l.hit)) cached = false;
      p.cds.data = {
        image: shown.map((l) => l.entry.image), x: shown.map((l) => l.entry.x), y: shown.map((l) => l.entry.y),
        dw: shown.map((l) => l.entry.dw), dh: shown.map((l) => l.entry.dh),
      };
      const top = alone ? over : base;
      if (!top) continue;
      // Bokeh re-lays out on every property write, so write only what changed.
      const mapping = top.entry.mapping;
      const mapper = mapping.kind === "log" ? p.log : p.linear;
      if (mapper.low !== mapping.low || mapper.high !== mapping.high) mapper.setv({ low: mapping.low, high: mapping.high });
      if (p.colourBar.color_mapper !== mapper) p.colourBar.color_mapper = mapper;
      const title = colourBarTitle(p.kind, scale, top.entry, this.get("weighting"));
      if (p.colourBar.title !== title) p.colourBar.title = title;
      const pooled = !alone && coverage(this.used(p, this.sections)[0]).side > 1;
      const note = resolutionText(top.entry.side, pooled, pooled ? this.detail?.state ?? null : null);
      if (p.note.textContent !== note) p.note.textContent = note;
      if (p === this.panels[0]) this.root.dataset.resolution = `${pooled ? "pooled" : "full"}:${top.entry.side}`;
    }
    this.root.dataset.shown = `${this.key}:${scale}`;
    this.root.dataset.detail = detail ? detail.key : "";
    this.root.dataset.imageCache = cached ? "hit" : "miss"; // for benchmarks and tests
    this.root.dataset.paints = ++this.paints;
  }

  /** Queries and keys panel `p` shows: its trace's, or those both have for |A − B|. */
  extent(p) {
    const { sources } = this.state.trace;
    const shown = p.kind === "diff" ? sources : [sources[p.source]];
    return [Math.min(...shown.map((s) => s.n_queries)), Math.min(...shown.map((s) => s.n_keys))];
  }

  /** The visible tokens of panel `p` ({q0, q1, k0, k1}), clamped to its extent. */
  visible(p) {
    return visibleRegion(p.xRange, p.yRange, ...this.extent(p));
  }

  /** The device pixels of panel `p`'s frame a side (at most 1024). */
  maxPixels(p) {
    const frame = p.view.frame?.bbox;
    return Math.min(1024, Math.ceil((frame ? Math.max(frame.width, frame.height) : 500) * (globalThis.devicePixelRatio || 1)));
  }

  /** The sections panel `p` draws from: its source's, or both for |A − B|. */
  used(p, secs) {
    return p.kind === "diff" ? secs : [secs[p.source]];
  }

  /**
   * For a pooled head (`poolSide` > 0): the full-resolution region the first panel's view needs
   * (see zoom.js detailRegion), `{tooBig: true}`, or null when the pooled image is enough.
   */
  detailWanted(poolSide) {
    if (!this.ready || poolSide <= 1) return null;
    const p = this.panels[0];
    const { sources } = this.state.trace;
    const src = sources[p.source < 0 ? 0 : p.source];
    return detailRegion(this.visible(p), {
      side: poolSide, pixels: this.maxPixels(p), nq: src.n_queries, nk: src.n_keys, causal: src.causal,
    });
  }

  /** Whether `sections` (one per source) cover every token the first panel shows. */
  viewCovered(sections) {
    return !!sections && this.ready && coversView(sections[0], this.visible(this.panels[0]));
  }

  /** Show the tokens q0…q1-1 × k0…k1-1 (a span picked on the token strip). */
  zoomTo(q0, q1, k0, k1) {
    for (const p of this.panels) {
      p.xRange.setv({ start: k0, end: k1 });
      p.yRange.setv({ start: q1, end: q0 });
    }
  }

  /**
   * The coloured image of `key` (sections `secs`, one per source) for panel `p` over the visible
   * tokens `view`, placed in token coordinates: from the image cache, or pooled and coloured now
   * and cached. Null when the sections cover nothing in view. `under`: the image this one is
   * drawn over (|A − B| then shares its colour range).
   */
  imageFor(p, key, secs, scale, view, maxPixels, under = null) {
    const used = this.used(p, secs);
    const cells = cellRegion(used[0], view);
    if (!cells) return null;
    const pixels = pixelsFor(used[0], cells, view, maxPixels);
    const diffMax = under?.entry.mapping.kind === "linear" && p.kind === "diff" ? under.entry.mapping.high : 0;
    // Value-weighted, a region drawn over its pooled head keeps the head's colour range.
    const weighting = this.get("weighting");
    const range = (s) => (p.kind !== "diff" && under && weighting === "norm" ? under.entry.mapping
      : viewMapping(scale, weighting, sectionMax(s)));
    const cacheKey = `${p.kind}|${p.source}|${key}|${scale}|${cells.q0},${cells.q1},${cells.k0},${cells.k1}|${pixels}|${diffMax}`;
    // Benchmarks set __awColdImages to time pooling and colouring on every move.
    const entry = globalThis.__awColdImages ? null : this.images.get(cacheKey, used);
    if (entry) return { entry, hit: true };
    let pooled;
    let mapping;
    let rgba;
    if (p.kind === "diff") {
      pooled = poolDiff(secs[0], secs[1], cells, pixels);
      mapping = scaleMapping("diff", Math.max(pooled.max, diffMax));
    } else if (scale === "row") {
      pooled = poolRelativeFast(secs[p.source], cells, pixels);
      mapping = scaleMapping(scale);
    } else {
      mapping = range(secs[p.source]);
      pooled = poolColourFast(secs[p.source], cells, pixels, this.coloursFor(mapping));
      rgba = pooled.rgba;
    }
    rgba ??= colorize(pooled.values, mapping, this.state.lut);
    const { ndarray } = this.bokeh.require("core/util/ndarray");
    const made = {
      image: ndarray(rgba, { shape: [pooled.h, pooled.w], dtype: "uint32" }),
      ...placement(used[0], cells, pooled.w, pooled.h, pooled.side), max: pooled.max, mapping,
    };
    this.images.set(cacheKey, used, made, rgba.byteLength);
    return { entry: made, hit: false };
  }

  /** The float16-pattern → colour table (bitsLUT) of a mapping, made once per view. */
  coloursFor(mapping) {
    const key = `${mapping.kind}|${mapping.low}|${mapping.high}`;
    let table = this.colourTables.get(key);
    if (!table && this.colourTables.size >= 16) this.colourTables.clear(); // value-weighted: one per view max
    if (!table) this.colourTables.set(key, (table = bitsLUT(mapping, this.state.lut)));
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
    if (!idle || !this.ready || globalThis.__awColdImages) return;
    const generation = this.generation;
    const scale = this.get("scale");
    const weighting = this.get("weighting");
    const n = this.state.trace.sources.length;
    const todo = [...keys];
    const step = (deadline) => {
      if (this.destroyed || this.generation !== generation || this.get("scale") !== scale
        || this.get("weighting") !== weighting) return;
      while (todo.length && deadline.timeRemaining() > 12) {
        const key = todo.shift();
        const secs = Array.from({ length: n }, (_, i) => this.section(i, key));
        if (!secs.every(Boolean)) continue;
        const cells = Math.max(...secs.map((s) => matrixShape(s)[0] * matrixShape(s)[1]));
        if (cells > (wasmEngine() ? 4096 * 4096 : 2048 * 2048)) continue;
        for (const p of this.panels) this.imageFor(p, key, secs, scale, this.visible(p), this.maxPixels(p));
      }
      if (todo.length) idle(step, { timeout: 1000 });
    };
    idle(step, { timeout: 1000 });
  }

  updateTicks() {
    const { tokens, keyTokens } = this.state.trace;
    for (const p of this.panels) {
      const frame = p.view.frame?.bbox;
      const set = (range, ticker, axis, pixels, texts) => {
        const { ticks, labels } = axisTicks(Math.min(range.start, range.end), Math.max(range.start, range.end), texts, pixels);
        const key = ticks.join(",");
        if (ticker.__awKey === key) return; // unchanged: spare Bokeh a re-layout
        ticker.__awKey = key;
        ticker.ticks = ticks;
        axis.major_label_overrides = labels;
      };
      set(p.xRange, p.xTicker, p.xAxis, frame ? frame.width : 400, keyTokens);
      set(p.yRange, p.yTicker, p.yAxis, frame ? frame.height : 400, tokens);
    }
  }

  // ------------------------------------------------------------------ hover, pin, boxes
  attachHover(panel, view) {
    const target = view.el;
    let down = null;
    const cell = (e) => {
      const frame = view.frame;
      const canvas = view.canvas_view?.el ?? target;
      const r = canvas.getBoundingClientRect();
      const sx = e.clientX - r.left;
      const sy = e.clientY - r.top;
      const bb = frame.bbox;
      if (sx < bb.left || sx > bb.right || sy < bb.top || sy > bb.bottom) return null;
      const k = Math.floor(frame.x_scale.invert(sx));
      const q = Math.floor(frame.y_scale.invert(sy));
      if (!this.sections) return null;
      const [nq, nk] = this.extent(panel);
      return q >= 0 && k >= 0 && q < nq && k < nk ? { q, k } : null;
    };
    const hide = () => this.tooltip.classList.remove("aw-visible");
    target.addEventListener("mousemove", (e) => {
      const c = cell(e);
      if (!c) {
        hide();
        this.onHover(null);
        return;
      }
      this.hovered = { c, source: panel.source };
      const lines = this.refreshReadout();
      this.tooltip.replaceChildren(...lines.map((t) => h("div", { text: t })));
      const rr = this.root.getBoundingClientRect();
      this.tooltip.style.left = `${e.clientX - rr.left + 14}px`;
      this.tooltip.style.top = `${e.clientY - rr.top + 14}px`;
      this.tooltip.classList.add("aw-visible");
      this.onHover(c);
    });
    target.addEventListener("mouseleave", () => {
      hide();
      this.onHover(null);
    });
    target.addEventListener("mousedown", (e) => (down = [e.clientX, e.clientY]));
    target.addEventListener("click", (e) => {
      if (!down || Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 3) return;
      const c = cell(e);
      if (c) this.onPin(c.q);
    });
  }

  /** The readout's lines: which layer and head, then the last hovered cell's values in it. */
  refreshReadout() {
    if (!this.hovered || !this.sections) return [];
    const { c, source } = this.hovered;
    const head = this.get("head");
    const lines = [`layer ${this.get("layer")}, ${head === MEAN ? "mean of heads" : `head ${head}`}`,
      ...cellLines(this.state.trace, this.shownAt(c), c, source, this.get("weighting"))];
    this.readout.replaceChildren(...lines.map((t) => h("div", { text: t })));
    return lines;
  }

  /** The sections that hold cell {q, k} most exactly: the full-resolution detail, else the matrices shown. */
  shownAt(c) {
    const detail = this.detail?.sections;
    return detail && detail.every((s) => covers(s, c.q, c.k)) ? detail : this.sections;
  }

  /** Row and column boxes: hovered query `hq` and key `hk`, the pinned token's row (and column). */
  highlight(hq, hk, pinned) {
    const { tokens, keyTokens, cross } = this.state.trace;
    for (const p of this.panels) {
      const nk = Math.max(p.xRange.bounds?.[1] ?? keyTokens.length, keyTokens.length);
      const nq = Math.max(p.yRange.bounds?.[1] ?? tokens.length, tokens.length);
      const rowBox = (box, q) => setChanged(box, q === null || q < 0 ? { visible: false } : { visible: true, left: 0, right: nk, top: q, bottom: q + 1 });
      const colBox = (box, k) => setChanged(box, k === null || k < 0 ? { visible: false } : { visible: true, left: k, right: k + 1, top: 0, bottom: nq });
      rowBox(p.boxes.hover_row, hq);
      colBox(p.boxes.hover_col, hk);
      rowBox(p.boxes.pin_row, pinned);
      colBox(p.boxes.pin_col, cross ? null : pinned);
    }
  }

  /** The generation step's query row `q` (none when q < 0): an outline kept inside the frame. */
  showStep(q = this.stepQ ?? -1) {
    this.stepQ = q;
    for (const p of this.panels) {
      const view = this.visible(p);
      const width = p.view?.frame?.bbox?.width || 400;
      const box = stepBox(q, view, (1.5 * (view.k1 - view.k0)) / width);
      setChanged(p.boxes.step_row, box ? { visible: true, ...box } : { visible: false });
    }
  }

  theme(dark) {
    for (const p of this.panels) if (p.doc) themeDocument(p.doc, dark);
    this.refreshReadout();
  }

  /** Drop the panels' Bokeh views (a rebuild, or the end). */
  clear() {
    for (const p of this.panels) p.views?.forEach((v) => v.remove());
    this.panels = [];
  }

  clearImages() {
    this.images.clear();
  }

  dispose() {
    this.destroyed = true;
    this.clear();
    this.images.clear();
  }
}

/** One panel, or A, B and |A − B| in compare view. */
export function panelSpecs(sources, compare) {
  if (!compare) return [{ kind: "single", source: 0, title: "" }];
  return [
    { kind: "single", source: 0, title: sources[0].label },
    { kind: "single", source: 1, title: sources[1].label },
    { kind: "diff", source: -1, title: `|${sources[0].label} − ${sources[1].label}|` },
  ];
}

/** The tokens of a panel's visible ranges (Bokeh Range1d: start, end), clamped to nq × nk. */
export function visibleRegion(xRange, yRange, nq, nk) {
  const clamp = (v, n) => Math.min(Math.max(v, 0), n);
  const xs = [xRange.start, xRange.end];
  const ys = [yRange.start, yRange.end];
  return {
    k0: clamp(Math.floor(Math.min(...xs)), nk), k1: clamp(Math.ceil(Math.max(...xs)), nk),
    q0: clamp(Math.floor(Math.min(...ys)), nq), q1: clamp(Math.ceil(Math.max(...ys)), nq),
  };
}
