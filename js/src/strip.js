// The token strip: one span per query token, shaded by the attention from (or to) the hovered
// or pinned token; hover to highlight it, click to pin it. Its spans are made after the
// heatmap's first paint.

import { h } from "./dom.js";
import { isGenerated } from "./facts.js";
import { column, row } from "./payload.js";
import { quoted, tokenLabel } from "./tokens.js";

export class Strip {
  /**
   * state: the view's shared state (reads `trace`, `sections`). get(name): a trait.
   * onHover({token} | null): the hovered token. onPin(pos): a click on a token.
   * onShadeChange(): the shading's direction or source changed (shade again).
   */
  constructor({ state, get, onHover, onPin, onShadeChange }) {
    Object.assign(this, { state, get, onHover, onPin, onShadeChange });
    this.direction = "from";
    this.source = 0; // compare: whose attention shades the strip
    this.spans = null;
  }

  /** The strip's box: title, direction and source buttons, legend; tokens come with fill(). */
  build(readout) {
    const { cross } = this.state.trace;
    this.readout = readout;
    this.spans = null;
    this.strip = h("div", { class: "aw-strip" });
    const dirs = ["from", "to"].map((d) => h("button", {
      type: "button", class: `aw-dir${d === this.direction ? " aw-on" : ""}`, text: `attention ${d}`,
    }));
    dirs.forEach((btn, i) => btn.addEventListener("click", () => {
      this.direction = i === 0 ? "from" : "to";
      dirs.forEach((x, j) => x.classList.toggle("aw-on", j === i));
      this.onShadeChange();
    }));
    return h("div", { class: "aw-strip-box" },
      h("div", { class: "aw-section-title" },
        h("span", { text: cross ? "Decoder tokens (the queries): hover to highlight a row, click to pin"
          : "Tokens: hover to shade by attention, click to pin" }),
        cross ? null : h("span", { class: "aw-dirs" }, ...dirs),
        this.sourceButtons(),
        h("span", { class: "aw-legend" },
          h("span", { class: "aw-chip aw-prompt", text: "prompt" }),
          h("span", { class: "aw-chip aw-generated", text: "generated" }))),
      this.strip);
  }

  /**
   * Compare view of traces with the same tokens: buttons choosing whose attention shades the
   * strip (A or B). With different tokens the strip shows A's and only A shades it.
   */
  sourceButtons() {
    const { compare, sources } = this.state.trace;
    if (!compare) return null;
    const [a, b] = sources;
    const same = a.tokens.text.length === b.tokens.text.length && a.tokens.text.every((t, i) => t === b.tokens.text[i]);
    if (!same) return h("span", { class: "aw-note", text: `(tokens of ${a.label})` });
    const buttons = sources.map((src, i) => h("button", {
      type: "button", class: `aw-dir aw-shade-source${i === this.source ? " aw-on" : ""}`, text: src.label,
      title: `shade the tokens by ${src.label}'s attention`,
    }));
    buttons.forEach((btn, i) => btn.addEventListener("click", () => {
      this.source = i;
      buttons.forEach((x, j) => x.classList.toggle("aw-on", j === i));
      this.onShadeChange();
    }));
    return h("span", { class: "aw-dirs" }, h("span", { class: "aw-note", text: "shade by " }), ...buttons);
  }

  /** The token spans, and their hover and click handling. */
  fill() {
    const facts = this.state.trace;
    const { ids, raw, special } = facts.sources[0].tokens;
    this.spans = facts.tokens.map((text, i) => {
      const span = h("span", {
        class: `aw-token ${isGenerated(facts, i) ? "aw-generated" : "aw-prompt"}${special?.[i] ? " aw-special" : ""}`,
        "data-pos": i,
        title: `position ${i} · id ${ids[i]} · ${raw[i]}`,
      });
      span.textContent = tokenLabel(text);
      return span;
    });
    this.strip.replaceChildren(...this.spans);
    this.shown = null;
    const pos = (e) => {
      const t = e.target.closest?.(".aw-token");
      return t ? +t.dataset.pos : null;
    };
    this.strip.addEventListener("mouseover", (e) => {
      const p = pos(e);
      if (p === null) return;
      this.onHover({ token: p });
      this.showTokenReadout(p);
    });
    this.strip.addEventListener("mouseleave", () => this.onHover(null));
    this.strip.addEventListener("click", (e) => {
      const p = pos(e);
      if (p !== null) this.onPin(p);
    });
  }

  showTokenReadout(p) {
    const facts = this.state.trace;
    const src = facts.sources[0].tokens;
    this.readout.replaceChildren(
      h("div", { text: `token ${p} ${quoted(facts.tokens[p])} (${isGenerated(facts, p) ? "generated" : "prompt"})` }),
      h("div", { text: `id ${src.ids[p]} · raw ${JSON.stringify(src.raw[p])}` }));
  }

  /** Shade by the attention of token `pos` (null: none) in the next frame. */
  shade(pos) {
    this.pos = pos;
    if (this.queued) return;
    this.queued = true;
    requestAnimationFrame(() => {
      this.queued = false;
      this.apply(this.pos);
    });
  }

  apply(pos) {
    const pinned = this.get("selected_token");
    const { sections, trace } = this.state;
    const weights = trace.cross ? null : shadeWeights(sections?.[this.source] ?? sections?.[0], pos, this.direction);
    // Touch only the tokens whose look changes: style writes to a thousand spans would make
    // the next Bokeh paint recompute the whole page's styles.
    if (!this.spans) return;
    const shown = (this.shown ??= this.spans.map(() => ({ w: "0", cls: 0 })));
    this.spans.forEach((span, i) => {
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

  clear() {
    this.spans = null;
  }
}

/**
 * The attention of token `pos` over the strip, ÷ its max: its row ("from": what it attends
 * to) or its column ("to": who attends to it); null without a token or a matrix.
 */
export function shadeWeights(section, pos, direction) {
  if (pos === null || pos === undefined || !section) return null;
  const weights = direction === "from" ? row(section, pos) : column(section, pos);
  let max = 0;
  for (const w of weights) if (w > max) max = w;
  if (max > 0) for (let i = 0; i < weights.length; i++) weights[i] /= max;
  return weights;
}
