// The all-heads grid: a thumbnail per captured layer × head (click to show it), a badge per
// thumbnail for the chosen metric, the shown head marked. A long trace's grid fills in while the
// kernel computes it (thumbnails, then badges, layer by layer).

import { h } from "./dom.js";
import { MEAN, thumbsKey, weightingSuffix } from "./store.js";

export class Grid {
  /**
   * state: the view's shared state (reads `trace`, `lut`). section(source, key): a section in the
   * browser, or undefined. metricNames(): the metrics present. pick(layer, head): a click.
   * progress(): while the grid fills in, {thumbs, metrics}: captured heads (layer-major) with
   * their thumbnail, layers with their badges; null once complete. weighting(): the `weighting`
   * trait (value-weighted thumbnails and badges come from `thumbs/norm`, `metric/<name>/norm`).
   */
  constructor({ state, section, metricNames, pick, progress = () => null, weighting = () => "attention" }) {
    Object.assign(this, { state, section, metricNames, pick, progress, weighting });
    this.metric = null;
    this.cells = null;
  }

  /** The grid's box: title, badge menu, and the grid, filled by draw(). */
  build() {
    this.menu = h("select", { class: "aw-grid-metric", "aria-label": "grid badge" });
    this.menu.addEventListener("change", () => {
      this.metric = this.menu.value;
      this.updateBadges();
    });
    this.grid = h("div", { class: "aw-grid" });
    this.status = h("span", { class: "aw-note aw-grid-status", role: "status" });
    this.title = h("span", { text: "All heads (click to select)" });
    this.cells = null;
    this.menuNames = undefined;
    return h("div", { class: "aw-grid-box" },
      h("div", { class: "aw-section-title" }, this.title, this.status, this.menu),
      this.grid);
  }

  /** The thumbnails (or "loading…" until the `thumbs` section is here) and the badge menu. */
  draw(layer, head) {
    if (!this.grid) return;
    const weighting = this.weighting();
    this.title.textContent = weighting === "norm" ? "All heads, value-weighted" : "All heads (click to select)";
    const thumbs = this.section(0, thumbsKey(weighting));
    this.shownWeighting = weighting;
    if (!thumbs) {
      this.cells = null;
      this.grid.replaceChildren(h("div", { class: "aw-muted", text: "loading thumbnails…" }));
      return;
    }
    const { header, sources } = this.state.trace;
    const have = this.metricNames();
    const names = have.join("|");
    if (this.menuNames !== names) {
      this.menuNames = names;
      this.menu.replaceChildren(h("option", { value: "", text: have.length ? "no badge" : "no metrics available" }),
        ...have.map((n) => h("option", { value: n, text: n.replace(/_/g, " "), title: header.metrics?.[n] ?? n })));
      this.metric = have.includes(this.metric) ? this.metric : have[0] ?? "";
      this.menu.value = this.metric;
    }
    const [nL, nH, r, c] = thumbs.shape;
    const { causal, layers, heads } = sources[0];
    const progress = this.progress();
    this.pending = progress ? { thumbs: progress.thumbs, layers: progress.metrics } : null;
    this.status.textContent = !progress ? ""
      : progress.thumbs < nL * nH ? `computing: ${progress.thumbs} of ${nL * nH} thumbnails…`
        : `computing badges: ${progress.metrics} of ${nL} layers…`;
    // Every thumbnail is a tile of ONE image (a CSS sprite), never a canvas per cell: Chromium
    // makes each canvas a composited layer and re-commits all of them on every frame, which cost
    // a real model's 270-head grid 15–25 ms per slider move (bench_widget.py, frame trace).
    const sprite = spriteCanvas(thumbs, this.state.lut, causal, this.pending?.thumbs ?? nL * nH);
    const table = h("div", { class: "aw-grid-table", style: `grid-template-columns: auto repeat(${nH}, auto);`
      + ` --aw-sprite: url("${sprite}"); --aw-sprite-size: ${nH * THUMB_PX}px ${nL * THUMB_PX}px` });
    table.append(h("span", { class: "aw-grid-corner", text: "L\\H" }), ...heads.map((x) => h("span", { class: "aw-grid-head", text: `${x}` })));
    this.cells = new Map();
    for (let li = 0; li < nL; li++) {
      const l = layers[li];
      table.append(h("span", { class: "aw-grid-layer", text: `${l}` }));
      for (let hi = 0; hi < nH; hi++) {
        const x = heads[hi];
        const thumb = h("span", { class: "aw-thumb", style: `background-position: ${-hi * THUMB_PX}px ${-li * THUMB_PX}px` });
        const waiting = this.pending && li * nH + hi >= this.pending.thumbs;
        const badge = h("span", { class: "aw-badge" });
        const cell = h("button", { type: "button", class: `aw-grid-cell${waiting ? " aw-pending" : ""}`, "data-layer": l, "data-head": x }, thumb, badge);
        cell.addEventListener("click", () => this.pick(l, x));
        this.cells.set(`${l}/${x}`, { cell, badge, index: li * nH + hi, layer: l, head: x });
        table.append(cell);
      }
    }
    this.grid.replaceChildren(table);
    this.updateBadges();
    this.mark(layer, head);
  }

  /** Badge texts and tooltips for the chosen metric (the thumbnails stay). */
  updateBadges() {
    if (!this.cells) return;
    const metric = this.metric ? this.section(0, `metric/${this.metric}${weightingSuffix(this.shownWeighting)}`) : null;
    const nH = this.state.trace.sources[0].heads.length;
    for (const { cell, badge, index, layer, head } of this.cells.values()) {
      const computing = this.pending && Math.floor(index / nH) >= this.pending.layers;
      const value = metric ? (computing ? "…" : formatMetric(metric.data[index])) : "";
      badge.textContent = value;
      badge.hidden = !metric;
      const thumb = this.pending && index >= this.pending.thumbs ? " · thumbnail being computed" : "";
      cell.title = `layer ${layer}, head ${head}${metric ? ` · ${this.metric} ${value}` : ""}${thumb}`;
    }
  }

  /** Mark the shown head (every head of the layer for the mean of heads). */
  mark(layer, head) {
    if (!this.cells) return;
    for (const { cell, layer: l, head: x } of this.cells.values()) {
      cell.classList.toggle("aw-current", l === layer && (x === head || head === MEAN));
    }
  }
}

/** Display size (CSS px) of a thumbnail; style.css's .aw-thumb has the same. */
const THUMB_PX = 24;

/**
 * The sprite's pixels (RGBA words, layers down, heads across, each thumbnail r × c): the first
 * `ready` thumbnails (layer-major) coloured through `lut`; above a causal diagonal and not yet
 * computed: transparent (the cell's background shows, in either theme).
 */
export function spritePixels(thumbs, lut, causal, ready) {
  const [nL, nH, r, c] = thumbs.shape;
  const width = nH * c;
  const px = new Uint32Array(nL * r * width);
  for (let t = 0; t < Math.min(ready, nL * nH); t++) {
    const li = Math.floor(t / nH);
    const hi = t % nH;
    const off = t * r * c;
    for (let y = 0; y < r; y++) {
      const end = causal ? Math.min(c, y + 1) : c;
      const row = (li * r + y) * width + hi * c;
      for (let i = 0; i < end; i++) px[row + i] = lut[thumbs.data[off + y * c + i]];
    }
  }
  return { px, width, height: nL * r };
}

/** The sprite as a data: URL (one PNG, decoded once, shared by every cell's background). */
function spriteCanvas(thumbs, lut, causal, ready) {
  const { px, width, height } = spritePixels(thumbs, lut, causal, ready);
  const canvas = h("canvas", { width, height });
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  new Uint32Array(img.data.buffer).set(px);
  ctx.putImageData(img, 0, 0);
  return canvas.toDataURL("image/png");
}

/** A badge's text: NaN as –, else 3 significant-ish digits. */
export function formatMetric(v) {
  if (Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}
