// attn_widget front end: one anywidget ESM module. Host contract: PROTOCOL.md; the parts and how
// they fit: PROTOCOL.md, "Front-end modules". This file composes them: the parts never call one
// another, and only sync.js writes back to Python.

import css from "./style.css";
import { loadBokeh } from "./bokeh.js";
import { resolveScale } from "./colour.js";
import { Controls, isDark, watchTheme } from "./controls.js";
import { h, markTime } from "./dom.js";
import { composeFigure, domCanvas, figureName, figureTitle, plotCanvas, savePNG, saveRow } from "./download.js";
import { traceFacts, traceTitle } from "./facts.js";
import { releaseWasm } from "./fastpool.js";
import { Grid } from "./grid.js";
import { Heatmap } from "./heatmap.js";
import { asBytes, decodeHeader, decodePayload } from "./payload.js";
import { Steps } from "./steps.js";
import { MEAN, gridKey, headName, matrixKey, neighbourKeys, regionKey, thumbsKey, weightingSuffix } from "./store.js";
import { MissingNote } from "./missing.js";
import { Strip } from "./strip.js";
import { Sync, bokehSource } from "./sync.js";

// The views on the page now: a view joins when rendered and leaves when destroyed (its cell
// re-run or cleared, its widget closed, the kernel restarted). Tests and benchmarks read the
// count from `globalThis.__attnWidgetLiveViews.size`. anywidget imports this module once per
// widget model, and the page keeps every module it imported: OWN holds this instance's views,
// and when they are gone so is its WebAssembly pooling module, with its memory.
const LIVE = (globalThis.__attnWidgetLiveViews ??= new Set());
const OWN = new Set();

/**
 * BokehJS 3 (3.9.2 measured) adds a `resize` listener to `window.visualViewport` for every plot
 * view it builds and never removes it: each plot ever embedded stays reachable from the page,
 * with its canvas, its model, the images drawn in it and the parts that drew them. The listeners
 * added while a build of ours embeds are noted against that build, and removed when its plots
 * are dropped; one added while several builds embed at once is removed once all of them are
 * (a live plot never loses its own). Shared by every copy of this module on the page.
 */
const VIEWPORT = (globalThis.__attnWidgetViewport ??= viewportListeners(globalThis.visualViewport));

function viewportListeners(vv) {
  const embedding = new Set();
  const noted = []; // {fn, options, owners}
  if (vv && typeof vv.addEventListener === "function") {
    const add = vv.addEventListener;
    vv.addEventListener = function (type, fn, options) {
      if (type === "resize" && embedding.size) noted.push({ fn, options, owners: new Set(embedding) });
      return add.call(this, type, fn, options);
    };
  }
  return {
    async during(owner, work) {
      embedding.add(owner);
      try {
        return await work();
      } finally {
        embedding.delete(owner);
      }
    },
    release(owner) {
      for (let i = noted.length - 1; i >= 0; i--) {
        const e = noted[i];
        if (!e.owners.delete(owner) || e.owners.size) continue;
        vv.removeEventListener("resize", e.fn, e.options);
        noted.splice(i, 1);
      }
    },
  };
}

/**
 * Drop Bokeh documents that were embedded and are no longer shown. BokehJS keeps every document
 * it ever made in `Bokeh.documents`, so one left there keeps its plots, their data sources and
 * the images in them for the life of the page.
 */
function releaseDocuments(bokeh, docs) {
  const all = bokeh?.documents;
  for (const doc of docs) {
    try {
      doc.clear();
    } catch (e) {
      console.warn("attn_widget: a Bokeh document could not be cleared", e);
    }
    const i = Array.isArray(all) ? all.indexOf(doc) : -1;
    if (i >= 0) all.splice(i, 1);
  }
}

class AttentionView {
  constructor(model, el) {
    this.el = el;
    this.generation = 0;
    // What the parts share: the trace facts, the matrices shown (one per source) and the
    // full-resolution region over them when a long trace is zoomed into (one per source, or
    // null), the hovered cell ({q, k}) or token ({token}), the theme, the palette's colour table.
    const state = (this.state = { trace: null, sections: null, detail: null, hover: null, dark: undefined, lut: undefined });
    // Arrow keys on the sliders belong to the widget, not to JupyterLab's notebook shortcuts.
    this.root = h("div", { class: "aw-root", "data-lm-suppress-shortcuts": "true" });
    const sync = (this.sync = new Sync(model, {
      onData: (source, key) => (key.startsWith("grid") ? this.drawGrid() : this.draw()),
      onNotice: (message) => this.controls.notice(message),
      onFailed: (source, key, message) => {
        // A matrix (head, mean, pooled) says so in place when it is the one shown (draw); a
        // region, a step's row or the grid in the notice line.
        if (!/^(head|mean|pool)\//.test(key)) this.controls.notice(message);
        if (key.startsWith("grid")) this.drawGrid();
        else this.draw();
      },
      onRun: (msg) => this.controls.runState(msg),
    }));
    // The parts read the scale drawn: `auto` (the default) resolved by the trace's length.
    const get = (name) => (name === "scale" ? resolveScale(sync.get("scale"), state.trace?.keyTokens.length ?? 0) : sync.get(name));
    const set = (name, value) => sync.set(name, value);
    const section = (source, key) => sync.section(source, key);
    const onHover = (hover) => {
      state.hover = hover;
      this.updateHighlights();
    };
    const onPin = (q) => set("selected_token", get("selected_token") === q ? -1 : q);
    this.controls = new Controls({
      state, get, set, run: (prompt) => sync.run(prompt), onBlock: () => this.root.classList.add("aw-loading"),
    });
    this.heatmap = new Heatmap({ state, get, section, root: this.root, onHover, onPin, onSettle: () => this.draw() });
    this.strip = new Strip({
      state, get, onHover, onPin, onShadeChange: () => this.updateHighlights(),
      onSpan: (a, b) => this.heatmap.zoomTo(a, b, a, b), select: (q) => set("selected_token", q),
    });
    this.steps = new Steps({ state, get, set });
    this.missing = new MissingNote(() => set("head", MEAN));
    this.weightingShown = undefined;
    const weighting = () => get("weighting");
    this.grid = new Grid({
      state, section, weighting, metricNames: () => sync.metricNames(0, weighting()),
      progress: () => (weighting() === "norm" ? null : sync.gridProgress(0)),
      pick: (layer, head) => {
        set("layer", layer);
        set("head", head);
      },
    });
  }

  // ------------------------------------------------------------------ lifecycle
  async start() {
    const { sync } = this;
    this.el.classList.add("aw-host");
    this.el.replaceChildren(h("style", { text: css }), this.root);
    sync.connect();
    for (const name of ["layer", "head", "scale", "weighting"]) sync.follow(name, () => this.onViewChange());
    sync.follow("selected_token", () => this.updateHighlights());
    sync.follow("step", () => this.updateStep());
    sync.listen("change:theme", () => this.applyTheme());
    sync.listen("change:prompt", () => this.controls.showPrompt(sync.get("prompt")));
    let reloadQueued = false;
    const reload = () => {
      if (reloadQueued) return;
      reloadQueued = true;
      queueMicrotask(() => {
        reloadQueued = false;
        this.build().catch((e) => this.fail(e));
      });
    };
    for (const name of ["_payload", "_figures", "_live", "_blocks"]) sync.listen(`change:${name}`, reload);
    this.unwatchTheme = watchTheme(() => this.applyTheme());
    await this.build();
  }

  /** The view leaves the page: everything it holds is let go (listeners, timers, sections,
   * images, Bokeh documents); safe to call more than once. */
  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    this.unwatchTheme?.();
    this.sync.dispose();
    this.controls.dispose();
    this.removePlots();
    this.heatmap.dispose();
    this.grid.dispose?.(); // parts that hold more than their DOM say so with a dispose()
    this.strip.dispose?.();
    this.steps.dispose?.();
    delete this.root.awHeatmapViews;
    this.el.replaceChildren();
    this.el.classList.remove("aw-host");
    this.state.sections = this.state.detail = this.state.trace = this.state.hover = null;
    this.lastDetail = null;
    LIVE.delete(this);
    OWN.delete(this);
    if (OWN.size === 0) releaseWasm();
  }

  fail(error) {
    console.error("attn_widget:", error);
    this.controls.notice(`attn_widget could not draw: ${error && error.message ? error.message : error}`);
  }

  /** Drop the plots (a rebuild, or the end), and the Bokeh documents they were drawn in. */
  removePlots() {
    const docs = new Set(this.heatmap.views().map((v) => v?.model?.document));
    docs.add(this.steps.bars?.plot?.document);
    docs.delete(undefined);
    docs.delete(null);
    this.strip.clear();
    this.heatmap.clear();
    this.steps.clear();
    releaseDocuments(this.bokeh, docs);
    if (this.plots) VIEWPORT.release(this.plots);
  }

  async build() {
    const { sync, state } = this;
    markTime("aw:build");
    const payload = decodePayload(asBytes(sync.get("_payload")));
    markTime("aw:decoded");
    sync.reset(payload);
    this.lastDetail = null;
    this.heatmap.clearImages();
    state.trace = traceFacts(payload.header);
    const version = payload.header.bokeh_version;
    const bokeh = (this.bokeh = await loadBokeh(version, () => sync.bokehSource(version)));
    markTime("aw:bokeh-ready");
    if (this.destroyed) return;
    this.removePlots();
    this.buildDom();
    const generation = ++this.generation;
    const current = () => !this.destroyed && this.generation === generation;
    markTime("aw:dom");
    const panels = this.heatmap.panels;
    const plots = (this.plots = {}); // what this build embeds, for VIEWPORT
    await VIEWPORT.during(plots, () => this.heatmap.embed(bokeh, sync.get("_figures").heatmap));
    if (!current()) return this.dropLate(panels, plots);
    this.root.awHeatmapViews = () => this.heatmap.views(); // benchmarks hook their paints
    markTime("aw:embedded");
    this.applyTheme();
    this.onViewChange();
    this.updateStep();
    markTime("aw:first-image");
    requestAnimationFrame(() => markTime("aw:painted")); // after Bokeh's own frame callback
    // The heatmap first; the token strip (a thousand spans to style and lay out), the grid and
    // the bar chart once it is on screen.
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve)));
    if (!current()) return;
    this.strip.fill();
    this.updateHighlights();
    this.heatmap.showToolbars();
    this.drawGrid();
    await VIEWPORT.during(plots, () => this.steps.embed(bokeh, sync.get("_figures").bars));
    if (!current()) return this.dropLate(panels, plots);
    this.applyTheme();
    this.steps.updateBars();
  }

  /**
   * A build overtaken while embedding (the view was destroyed or rebuilt meanwhile): the panels
   * it embedded after they were cleared, and on a destroyed view anything embedded since, are
   * dropped with their Bokeh documents.
   */
  dropLate(panels, plots) {
    if (this.heatmap.panels !== panels) {
      for (const p of panels) p.views?.forEach((v) => v.remove());
      releaseDocuments(this.bokeh, new Set(panels.map((p) => p.doc).filter(Boolean)));
      VIEWPORT.release(plots);
    }
    if (this.destroyed) this.removePlots();
  }

  buildDom() {
    const top = this.controls.build(traceTitle(this.state.trace));
    const readout = h("div", { class: "aw-readout", role: "status", text: "Hover the heatmap or a token." });
    const { plots, tooltip } = this.heatmap.build(readout);
    plots.append(this.missing.el);
    const save = (view) => saveRow(view, (scale) => this.saveFigure(view, scale).catch((e) => this.fail(e)));
    plots.append(save("heatmap"));
    const steps = this.steps.build();
    if (this.steps.active) steps.append(save("bars"));
    const parts = [
      top.title, top.bar, top.caveat, top.notice,
      h("div", { class: "aw-main" }, plots, h("div", { class: "aw-side" }, readout, this.grid.build(), save("grid"))),
      this.strip.build(readout),
      steps,
      top.prompt,
      tooltip];
    this.root.replaceChildren(...parts.filter(Boolean));
  }

  /** Download a view ("heatmap", "grid", "bars") as a titled PNG at `scale` (download.js). */
  async saveFigure(view, scale) {
    const { sync, state } = this;
    const css = getComputedStyle(this.root);
    const colours = Object.fromEntries(["bg", "fg", "muted"].map((c) => [c, css.getPropertyValue(`--aw-${c}`).trim()]));
    const parts = view === "heatmap" ? this.heatmap.panels.map((p) => plotCanvas(p.view, scale))
      : view === "bars" ? (this.steps.bars ? [plotCanvas(this.steps.bars.view, scale)] : [])
        : [await domCanvas(this.grid.grid, scale, colours.bg)];
    if (!parts.length) return;
    const info = { view, ...Object.fromEntries(["layer", "head", "scale", "weighting", "step"].map((n) => [n, sync.get(n)])) };
    info.drawn = resolveScale(info.scale, state.trace.keyTokens.length);
    info.badge = this.grid.metric ?? "";
    const canvas = composeFigure(figureTitle(state.trace, info), parts, scale, colours);
    const name = figureName(state.trace, info);
    await savePNG(canvas, name);
    this.root.dataset.saved = `${name}:${canvas.width}x${canvas.height}`; // for tests
  }

  // ------------------------------------------------------------------ following the traits
  onViewChange() {
    if (!this.heatmap.ready) return;
    const layer = this.sync.get("layer");
    const head = this.sync.get("head");
    const weighting = this.sync.get("weighting");
    this.controls.show(layer, head, this.sync.get("scale"), weighting, resolveScale("auto", this.state.trace.keyTokens.length));
    this.root.classList.toggle("aw-is-mean", head === MEAN);
    this.root.classList.toggle("aw-is-norm", weighting === "norm");
    this.root.classList.toggle("aw-compare", this.state.trace.compare);
    this.draw();
    if (this.weightingShown !== weighting) {
      this.weightingShown = weighting;
      this.drawGrid(); // thumbnails and badges of the weighting shown
    }
    this.grid.mark(layer, head);
  }

  /**
   * Draw the matrices of the layer and head shown, or keep the old image, dimmed, until they
   * arrive; for a long trace zoomed in, ask for the full-resolution region too and draw it over.
   */
  draw() {
    if (!this.heatmap.ready || this.destroyed) return;
    const { sync, state } = this;
    const layer = sync.get("layer");
    const head = sync.get("head");
    const weighting = sync.get("weighting");
    const key = matrixKey(layer, head, state.trace.poolSide, weighting);
    const secs = state.trace.sources.map((_, i) => sync.want(i, key));
    const detail = this.detail(layer, head, weighting);
    const what = `layer ${layer}, ${head === MEAN ? "mean of heads" : `head ${head}`}${weighting === "norm" ? " · value-weighted" : ""}`;
    const failed = secs.every(Boolean) ? undefined : secs.map((_, i) => sync.failure(i, key)).find(Boolean);
    this.missing.show(failed ? { layer, head, message: failed } : null);
    this.root.dataset.missing = failed ? key : "";
    if (failed) {
      this.root.classList.remove("aw-loading");
      this.heatmap.label(`${what} · not available`);
      return;
    }
    if (!secs.every(Boolean)) {
      this.root.classList.add("aw-loading");
      this.heatmap.label(`${what} · loading…`);
      return;
    }
    this.root.classList.remove("aw-loading");
    state.sections = secs;
    state.detail = detail?.sections ?? null;
    this.heatmap.label(what);
    this.heatmap.draw(key, secs, detail);
    this.updateHighlights();
    this.updateStep();
    this.prefetch(layer, head, weighting);
  }

  /**
   * A long trace zoomed in finer than its pooled image: {key, sections, state} of the
   * full-resolution region in view (`state` "shown", or "loading" while it is fetched, with the
   * last region of this head drawn meanwhile), {state: "tooBig"}, or null (not needed).
   */
  detail(layer, head, weighting) {
    const { poolSide, sources } = this.state.trace;
    const region = this.heatmap.detailWanted(poolSide);
    if (!region) return null;
    if (region.tooBig) return { state: "tooBig" };
    const prefix = `region/${layer}/${headName(head)}/`;
    const end = weightingSuffix(weighting);
    const same = (k) => k.startsWith(prefix) && (end ? k.endsWith(end) : !k.endsWith("/norm"));
    const last = this.lastDetail && same(this.lastDetail.key) ? this.lastDetail : null;
    if (last && this.heatmap.viewCovered(last.sections)) return last; // a pan inside the region shown
    const key = regionKey(layer, head, region, weighting);
    const secs = sources.map((_, i) => this.sync.want(i, key, "detail"));
    if (!secs.every(Boolean)) return { key: last?.key ?? key, sections: last?.sections, state: "loading" };
    this.lastDetail = { key, sections: secs, state: "shown" };
    return this.lastDetail;
  }

  /** Neighbours of the shown key: asked for while idle, coloured while idle; the grid if missing. */
  prefetch(layer, head, weighting) {
    const { sync, state } = this;
    const keys = neighbourKeys(layer, head, state.trace.layers, state.trace.heads, state.trace.poolSide, weighting);
    const n = state.trace.sources.length;
    const go = () => {
      if (!this.destroyed) for (let i = 0; i < n; i++) sync.prefetch(i, keys);
    };
    (globalThis.requestIdleCallback ?? setTimeout)(go);
    this.heatmap.prerender(keys);
    if (!sync.section(0, thumbsKey(weighting))) for (let i = 0; i < n; i++) sync.want(i, gridKey(weighting), "grid");
  }

  /** Row/column boxes in the heatmap and strip shading, from the hovered or pinned token. */
  updateHighlights() {
    const { hover, sections, trace } = this.state;
    if (!this.heatmap.ready || !sections) return;
    const pinned = this.sync.get("selected_token");
    const hq = hover ? (hover.token ?? hover.q) : null;
    const hk = hover ? (hover.token !== undefined ? (trace.cross ? null : hover.token) : hover.k) : null;
    this.heatmap.highlight(hq, hk, pinned);
    this.strip.shade(hq ?? (pinned >= 0 ? pinned : null));
  }

  updateStep() {
    if (!this.steps.active || !this.heatmap.ready) return;
    const q = this.steps.show(this.sync.get("step"));
    this.heatmap.showStep(q);
    this.steps.updateBars(this.stepRows(q));
  }

  /**
   * A long trace's bars come from the producing query's row at full resolution, fetched on its
   * own (`region/L/H/q/q+1/0/K`): its sections, or null while it is on its way. Null for other
   * traces too (the matrices shown hold the row).
   */
  stepRows(q) {
    const { poolSide, sources, cross } = this.state.trace;
    if (!poolSide || q < 0) return null;
    const head = this.sync.get("head");
    const nk = cross ? sources[0].n_keys : q + 1;
    const key = regionKey(this.sync.get("layer"), head, { q0: q, q1: q + 1, k0: 0, k1: nk }, this.sync.get("weighting"));
    const secs = sources.map((_, i) => this.sync.want(i, key, "row"));
    return secs.every(Boolean) ? secs : null;
  }

  drawGrid() {
    this.grid.draw(this.sync.get("layer"), this.sync.get("head"));
  }

  applyTheme() {
    const dark = isDark(this.sync.get("theme"));
    const changed = this.state.dark !== dark;
    this.state.dark = dark;
    this.root.classList.toggle("aw-dark", dark);
    this.heatmap.theme(dark);
    this.steps.theme(dark);
    if (changed && this.state.sections) this.steps.updateBars(); // thumbnails are theme-free (transparent above the diagonal)
  }
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

async function render({ model, el, signal }) {
  markTime("aw:render");
  const view = new AttentionView(model, el);
  LIVE.add(view);
  OWN.add(view);
  // anywidget calls the function returned below when the view leaves the page, and aborts
  // `signal` then too (also while render is still awaiting BokehJS or the first paint).
  signal?.addEventListener?.("abort", () => view.destroy());
  try {
    await view.start();
  } catch (e) {
    if (!view.destroyed) view.fail(e);
  }
  return () => view.destroy();
}

export default { initialize, render };
