// Generation steps: the scrubber over the generated tokens and the bar chart of the chosen
// output token's attention (A's bars and B's, faded, side by side in compare view).

import { embedFigure, themeDocument } from "./bokeh.js";
import { h, keyboardSlider } from "./dom.js";
import { row } from "./payload.js";
import { NORM_NAME } from "./legend.js";
import { axisTicks, quoted } from "./tokens.js";

const COLOURS = { prompt: "#4c78a8", generated: "#e45756", promptDark: "#79a6dc", generatedDark: "#ff8a80" };

export class Steps {
  /**
   * state: the view's shared state (reads `trace`, `sections`, `dark`). get(name) and
   * set(name, value): traits.
   */
  constructor({ state, get, set }) {
    Object.assign(this, { state, get, set });
    this.rows = null; // the step's query rows (one section per source) when they come apart from the matrices
    this.input = null;
    this.bars = null;
    this.barViews = [];
  }

  /** There is a generation to scrub. */
  get active() {
    return this.input !== null;
  }

  /** The steps' box: title, ◀ slider ▶, the step's description, the bar chart's host. */
  build() {
    const { generated, cross, compare, sources } = this.state.trace;
    const box = h("div", { class: "aw-steps" });
    const n = generated[1] - generated[0];
    this.input = null;
    this.host = null;
    if (n <= 0) return box;
    this.input = keyboardSlider(h("input", { type: "range", min: 0, max: n - 1, step: 1, class: "aw-step", "aria-label": "generation step" }));
    this.input.addEventListener("input", () => this.set("step", +this.input.value));
    const move = (d) => () => this.set("step", Math.min(Math.max(this.get("step") + d, 0), n - 1));
    this.label = h("span", { class: "aw-step-label" });
    this.barNote = h("span", { class: "aw-note aw-bar-note" });
    this.host = h("div", { class: "aw-bars-host" });
    this.tip = h("div", { class: "aw-tooltip aw-bar-tip", role: "tooltip" });
    this.host.addEventListener("mousemove", (e) => this.hover(e));
    this.host.addEventListener("mouseleave", () => this.tip.classList.remove("aw-visible"));
    box.append(
      h("div", { class: "aw-section-title" },
        h("span", { text: `Generation: the chosen output token's attention over ${cross ? "the encoder's tokens" : "earlier tokens"}` +
          (compare ? ` (${sources[0].label} solid, ${sources[1].label} faded, side by side)` : "") })),
      h("div", { class: "aw-row" },
        h("button", { type: "button", class: "aw-prev", text: "◀", "aria-label": "previous step", onclick: move(-1) }),
        this.input,
        h("button", { type: "button", class: "aw-next", text: "▶", "aria-label": "next step", onclick: move(1) }),
        this.label, this.barNote),
      this.host, this.tip);
    return box;
  }

  /** The bar under the mouse: its token, its value (and weighting), in a tooltip. */
  hover(e) {
    const view = this.bars?.view;
    const frame = view?.frame;
    const lines = frame && this.shown ? (() => {
      const r = (view.canvas_view?.el ?? this.host).getBoundingClientRect();
      const sx = e.clientX - r.left;
      const bb = frame.bbox;
      if (sx < bb.left || sx > bb.right || e.clientY - r.top < bb.top || e.clientY - r.top > bb.bottom) return null;
      return barLines(this.state.trace, this.shown, frame.x_scale.invert(sx), this.get("weighting"));
    })() : null;
    if (!lines) {
      this.tip.classList.remove("aw-visible");
      return;
    }
    this.tip.replaceChildren(...lines.map((t) => h("div", { text: t })));
    const box = this.tip.parentElement.getBoundingClientRect();
    this.tip.style.left = `${Math.min(e.clientX - box.left + 14, box.width - 280)}px`;
    this.tip.style.top = `${Math.max(0, e.clientY - box.top - 70)}px`;
    this.tip.classList.add("aw-visible");
  }

  /** The bar chart (`_figures.bars`), embedded after the heatmap's first paint. */
  async embed(bokeh, item) {
    if (!this.host) {
      this.bars = null;
      return;
    }
    const { views, root } = await embedFigure(bokeh, item, this.host, "bars");
    this.barViews = views;
    const doc = root.model.document;
    this.bars = {
      plot: root.model, view: root, source: doc.get_model_by_name("bars_source"),
      ticker: doc.get_model_by_name("bars_x_ticker"), axis: doc.get_model_by_name("bars_x_axis"),
      xRange: doc.get_model_by_name("bars_x_range"), yRange: doc.get_model_by_name("bars_y_range"),
      yAxis: doc.get_model_by_name("bars_y_axis"),
      glyph: root.model.renderers.find((r) => r.data_source?.name === "bars_source")?.glyph,
    };
  }

  /** Show step `t` on the slider and in words; returns the query row that produced it. */
  show(t) {
    this.input.value = t;
    this.label.textContent = stepText(this.state.trace, t);
    return this.state.trace.generated[0] + t - 1;
  }

  /**
   * The bars of the step shown, from `rows` (one section per source holding the producing
   * query's row: a long trace's full-resolution row, fetched apart) or else the matrices shown.
   */
  updateBars(rows = this.rows) {
    this.rows = rows;
    const { sections, trace, dark } = this.state;
    const from = rows ?? (trace.poolSide > 0 ? null : sections);
    if (!this.bars) return;
    const frame = this.bars.view.frame?.bbox;
    const pixels = frame ? frame.width : 600;
    const bars = from ? barData(trace, from, this.get("step"), dark, pixels) : null;
    const norm = this.get("weighting") === "norm";
    this.barNote.textContent = [norm ? "bars: value-weighted α·‖f(x)‖" : "",
      !from && trace.poolSide > 0 ? "loading the row…"
        : bars?.bucket > 1 ? `1 bar = max of ${bars.bucket} keys (zoom the heatmap for each)` : ""].filter(Boolean).join(" · ");
    this.shown = bars;
    if (!bars) {
      this.bars.source.data = { x: [], top: [], color: [] };
      return;
    }
    if (this.bars.glyph && this.bars.width !== bars.width) {
      this.bars.glyph.width = bars.width;
      this.bars.width = bars.width;
    }
    this.bars.source.data = { x: bars.x, top: bars.top, color: bars.color };
    this.bars.xRange.setv({ start: 0, end: bars.nKeys });
    // The y-range follows the data (bars of at most 0.2 looked flat on a fixed 0–1).
    const high = barsHigh(bars.top, norm ? Infinity : 1.02);
    const yAxis = this.bars.yAxis;
    if (yAxis && yAxis.axis_label !== (norm ? "α·‖f(x)‖" : "weight")) {
      yAxis.axis_label = norm ? "α·‖f(x)‖" : "weight";
    }
    // Small bars (a long prompt's, or value-weighted) read as 0.004, not 4.000e−3.
    if (yAxis?.formatter && "power_limit_low" in yAxis.formatter && yAxis.formatter.power_limit_low !== -6) yAxis.formatter.power_limit_low = -6;
    if (this.bars.yRange && this.bars.yRange.end !== high) this.bars.yRange.setv({ start: 0, end: high });
    const { ticks, labels } = axisTicks(0, bars.nKeys, trace.keyTokens, pixels);
    this.bars.ticker.ticks = ticks;
    this.bars.axis.major_label_overrides = labels;
  }

  theme(dark) {
    if (this.bars) themeDocument(this.bars.plot.document, dark);
  }

  clear() {
    for (const v of this.barViews) v.remove();
    this.barViews = [];
    this.bars = null;
  }
}

/**
 * The top of the bar chart's y-range: 8% over the highest bar (NaN skipped), at most `cap`
 * (1.02 for weights; value-weighted bars, α·‖f(x)‖, have no cap).
 */
export function barsHigh(tops, cap = 1.02) {
  let m = 0;
  for (const v of tops) if (v > m) m = v;
  return m > 0 ? Math.min(cap, m * 1.08) : Math.min(cap, 1.02);
}

/** What step `t` is: its output token and the query row that produced it. */
export function stepText(facts, t) {
  const out = facts.generated[0] + t;
  const q = out - 1;
  return q >= 0
    ? `step ${t}: output ${quoted(facts.tokens[out])} (position ${out}), produced by query ${q} ${quoted(facts.tokens[q])}`
    : `step ${t}: output ${quoted(facts.tokens[out])} has no earlier token to attend from`;
}

/**
 * The bars of step `t`: the producing query's weights over the keys, {x, top, color, width,
 * nKeys, bucket}, or null when no query produced it. `sections` (one per source) hold that
 * query's row: whole matrices or a row apart (PROTOCOL.md, `region/…`). More keys than `maxBars`:
 * one bar per `bucket` keys, their max (so a single strong weight stays visible), coloured by the
 * key holding it. Compare: A's and B's (faded) side by side at each position both traces have.
 */
export function barData(facts, sections, t, dark, maxBars = Infinity) {
  const q = facts.generated[0] + t - 1;
  if (q < 0) return null;
  const shown = facts.compare ? [0, 1] : [0];
  // Cross-attention: the output token's query row runs over every encoder token (the source).
  const nKeys = facts.cross ? facts.keyTokens.length : q + 1;
  const bucket = Math.max(1, Math.ceil(nKeys / maxBars));
  const width = (shown.length > 1 ? 0.4 : 0.8) * bucket;
  const x = [];
  const top = [];
  const color = [];
  const keys = []; // the key each bar shows (the max of its bucket)
  const src = []; // the source each bar belongs to
  for (const i of shown) {
    if (q >= facts.sources[i].tokens.text.length) continue;
    const weights = row(sections[i], q, nKeys);
    const offset = (shown.length > 1 ? 0.3 + 0.4 * i : 0.5) * bucket;
    const alpha = i === 0 ? "" : "80";
    for (let k0 = 0; k0 < nKeys; k0 += bucket) {
      let at = -1;
      for (let k = k0; k < Math.min(nKeys, k0 + bucket); k++) if (!Number.isNaN(weights[k]) && (at < 0 || weights[k] > weights[at])) at = k;
      if (at < 0) continue; // keys this trace does not have
      x.push(k0 + offset);
      top.push(weights[at]);
      keys.push(at);
      src.push(i);
      const gen = !facts.cross && at >= facts.generated[0];
      color.push((gen ? (dark ? COLOURS.generatedDark : COLOURS.generated) : (dark ? COLOURS.promptDark : COLOURS.prompt)) + alpha);
    }
  }
  return { x, top, color, width, nKeys, bucket, keys, src, q, t };
}

/**
 * The tooltip's lines for the bars at data x `x` ({…} from barData): the key's token and where
 * it is, then its value named for its weighting (A's and B's in compare view); a bar that holds
 * several keys says which. Null off the bars.
 */
export function barLines(facts, bars, x, weighting = "attention") {
  if (!bars || !(x >= 0) || x >= bars.nKeys) return null;
  const k0 = Math.floor(Math.floor(x) / bars.bucket) * bars.bucket;
  const at = bars.x.map((_, j) => j).filter((j) => bars.keys[j] >= k0 && bars.keys[j] < k0 + bars.bucket);
  if (!at.length) return null;
  const norm = weighting === "norm";
  const fmt = (v) => (v > 0 && v < 1e-3 ? v.toExponential(2) : v.toFixed(4));
  const first = bars.keys[at[0]];
  const where = !facts.cross && first >= facts.generated[0] ? "generated" : facts.cross ? "encoder" : "prompt";
  const lines = [`key ${first} ${quoted(facts.keyTokens[first])} (${where})`];
  const what = norm ? NORM_NAME : "attention weight";
  if (facts.compare) {
    lines.push(`${what}: ${at.map((j) => `${facts.sources[bars.src[j]].label} ${fmt(bars.top[j])}`).join(" · ")}`);
  } else lines.push(`${what} ${fmt(bars.top[at[0]])}`);
  if (bars.bucket > 1) lines.push(`(the max of keys ${k0}–${Math.min(bars.nKeys, k0 + bars.bucket) - 1})`);
  lines.push(`from query ${bars.q} ${quoted(facts.tokens[bars.q])}, step ${bars.t}`);
  return lines;
}
