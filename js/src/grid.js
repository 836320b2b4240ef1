// The all-heads grid: a thumbnail per captured layer × head (click to show it), a badge per
// thumbnail for the chosen metric, the shown head marked. A long trace's grid fills in while the
// kernel computes it (thumbnails, then badges, layer by layer).

import { h } from "./dom.js";
import { MEAN } from "./store.js";

export class Grid {
  /**
   * state: the view's shared state (reads `trace`, `lut`). section(source, key): a section in the
   * browser, or undefined. metricNames(): the metrics present. pick(layer, head): a click.
   * progress(): while the grid fills in, {thumbs, metrics}: captured heads (layer-major) with
   * their thumbnail, layers with their badges; null once complete.
   */
  constructor({ state, section, metricNames, pick, progress = () => null }) {
    Object.assign(this, { state, section, metricNames, pick, progress });
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
    this.cells = null;
    return h("div", { class: "aw-grid-box" },
      h("div", { class: "aw-section-title" }, h("span", { text: "All heads (click to select)" }), this.status, this.menu),
      this.grid);
  }

  /** The thumbnails (or "loading…" until the `thumbs` section is here) and the badge menu. */
  draw(layer, head) {
    if (!this.grid) return;
    const thumbs = this.section(0, "thumbs");
    if (!thumbs) {
      this.grid.replaceChildren(h("div", { class: "aw-muted", text: "loading thumbnails…" }));
      return;
    }
    const { header, sources } = this.state.trace;
    const have = this.metricNames();
    if (this.menu.options.length !== have.length + 1) {
      this.menu.replaceChildren(h("option", { value: "", text: have.length ? "no badge" : "no metrics available" }),
        ...have.map((n) => h("option", { value: n, text: n.replace(/_/g, " "), title: header.metrics?.[n] ?? n })));
      this.metric = have.includes(this.metric) ? this.metric : have[0] ?? "";
      this.menu.value = this.metric;
    }
    const [nL, nH, r, c] = thumbs.shape;
    const { causal, layers, heads } = sources[0];
    const lut = this.state.lut;
    const progress = this.progress();
    this.pending = progress ? { thumbs: progress.thumbs, layers: progress.metrics } : null;
    this.status.textContent = !progress ? ""
      : progress.thumbs < nL * nH ? `computing: ${progress.thumbs} of ${nL * nH} thumbnails…`
        : `computing badges: ${progress.metrics} of ${nL} layers…`;
    const table = h("div", { class: "aw-grid-table", style: `grid-template-columns: auto repeat(${nH}, auto)` });
    table.append(h("span", { class: "aw-grid-corner", text: "L\\H" }), ...heads.map((x) => h("span", { class: "aw-grid-head", text: `${x}` })));
    this.cells = new Map();
    for (let li = 0; li < nL; li++) {
      const l = layers[li];
      table.append(h("span", { class: "aw-grid-layer", text: `${l}` }));
      for (let hi = 0; hi < nH; hi++) {
        const x = heads[hi];
        const canvas = h("canvas", { width: c, height: r });
        const ctx = canvas.getContext("2d");
        const img = ctx.createImageData(c, r);
        const px = new Uint32Array(img.data.buffer);
        const off = (li * nH + hi) * r * c;
        const waiting = this.pending && li * nH + hi >= this.pending.thumbs;
        for (let y = 0; y < r && !waiting; y++) {
          // Above a causal diagonal: transparent (the cell's background, in either theme).
          const end = causal ? Math.min(c, y + 1) : c;
          for (let i = 0; i < end; i++) px[y * c + i] = lut[thumbs.data[off + y * c + i]];
        }
        ctx.putImageData(img, 0, 0);
        const badge = h("span", { class: "aw-badge" });
        const cell = h("button", { type: "button", class: `aw-grid-cell${waiting ? " aw-pending" : ""}`, "data-layer": l, "data-head": x }, canvas, badge);
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
    const metric = this.metric ? this.section(0, `metric/${this.metric}`) : null;
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

/** A badge's text: NaN as –, else 3 significant-ish digits. */
export function formatMetric(v) {
  if (Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
}
