// The token strip: one span per query token, shaded by the attention from (or to) the hovered
// or pinned token; hover to highlight it, click to pin it, shift-click a second token to zoom the
// heatmap to the span between. Its spans are made after the heatmap's first paint. A long trace
// shows a window of its tokens at a time (a few hundred spans, never thousands), moved with ◀ ▶,
// by pinning a token elsewhere, or from the "go to" box: a position, a span (zooms the heatmap)
// or text to find.

import { h } from "./dom.js";
import { isGenerated } from "./facts.js";
import { column, coverage, row } from "./payload.js";
import { quoted, tokenLabel } from "./tokens.js";

/** Traces up to this many tokens show them all; longer ones a window of STRIP_WINDOW tokens. */
export const STRIP_ALL = 1024;
export const STRIP_WINDOW = 512;

export class Strip {
  /**
   * state: the view's shared state (reads `trace`, `sections`, `detail`). get(name): a trait.
   * onHover({token} | null): the hovered token. onPin(pos): a click on a token (pin or unpin).
   * onShadeChange(): the shading's direction or source changed (shade again).
   * onSpan(start, end): zoom the heatmap to tokens start…end-1 (picked or typed).
   * select(pos): pin token `pos` (found or typed).
   */
  constructor({ state, get, onHover, onPin, onShadeChange, onSpan = () => {}, select = onPin }) {
    Object.assign(this, { state, get, onHover, onPin, onShadeChange, onSpan, select });
    this.direction = "from";
    this.source = 0; // compare: whose attention shades the strip
    this.spans = null;
    this.start = 0; // first token of the window shown
  }

  /** Whether the strip shows a window of its tokens rather than all of them. */
  get windowed() {
    return this.state.trace.tokens.length > STRIP_ALL;
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
    this.listen();
    return h("div", { class: "aw-strip-box" },
      h("div", { class: "aw-section-title" },
        h("span", { text: cross ? "Decoder tokens (the queries): hover to highlight a row, click to pin"
          : "Tokens: hover to shade by attention, click to pin, shift-click another to zoom to the span" }),
        cross ? null : h("span", { class: "aw-dirs" }, ...dirs),
        this.sourceButtons(),
        h("span", { class: "aw-legend" },
          h("span", { class: "aw-chip aw-prompt", text: "prompt" }),
          h("span", { class: "aw-chip aw-generated", text: "generated" }))),
      this.navigation(),
      this.strip);
  }

  /** A long trace's window controls: ◀ tokens a–b of n ▶, and the "go to" box. */
  navigation() {
    this.windowLabel = null;
    if (!this.windowed) return null;
    const move = (d) => () => this.showWindow(this.start + d * STRIP_WINDOW);
    this.windowLabel = h("span", { class: "aw-note aw-strip-window" });
    this.jumpBox = h("input", {
      type: "text", class: "aw-jump", "aria-label": "go to a token", style: "width: 15em",
      placeholder: "go to: 1200, 1200-1400 or text",
      title: "a position pins that token; a span a–b zooms the heatmap to it; text finds the next token that holds it",
    });
    this.jumpStatus = h("span", { class: "aw-note aw-jump-status", role: "status" });
    this.jumpBox.addEventListener("keydown", (e) => {
      if (e.key !== "Enter") return;
      e.preventDefault();
      e.stopPropagation(); // not JupyterLab's shortcuts
      this.jump(this.jumpBox.value);
    });
    return h("div", { class: "aw-row aw-strip-nav" },
      h("button", { type: "button", class: "aw-strip-prev", text: "◀", "aria-label": "earlier tokens", onclick: move(-1) }),
      this.windowLabel,
      h("button", { type: "button", class: "aw-strip-next", text: "▶", "aria-label": "later tokens", onclick: move(1) }),
      this.jumpBox, this.jumpStatus);
  }

  /** Act on the "go to" box's text: pin a position, zoom to a span, or find text. */
  jump(text) {
    const facts = this.state.trace;
    const n = facts.tokens.length;
    const what = parseJump(text, n);
    if (!what) return;
    let status = "";
    if (what.error) {
      status = what.error;
    } else if (what.position !== undefined) {
      this.reveal(what.position);
      this.select(what.position);
      this.scrollTo(what.position);
      status = `token ${what.position} ${quoted(facts.tokens[what.position])}`;
    } else if (what.span) {
      const [a, b] = what.span;
      this.reveal(a);
      this.onSpan(a, b);
      status = `tokens ${a}–${b - 1} (heatmap zoomed)`;
    } else {
      const pinned = this.get("selected_token");
      const found = findText(facts.tokens, what.text, pinned);
      if (!found) {
        status = `${JSON.stringify(what.text)} is not in the tokens`;
      } else {
        this.reveal(found.position);
        this.select(found.position);
        this.scrollTo(found.position);
        status = `${JSON.stringify(what.text)} at token ${found.position} (${found.index} of ${found.count})`;
      }
    }
    if (this.jumpStatus) this.jumpStatus.textContent = status;
  }

  /** Scroll the strip's box (not the page) so that token `pos` of the window is in sight. */
  scrollTo(pos) {
    const span = this.spans?.[pos - this.start];
    if (!span) return;
    const box = this.strip.getBoundingClientRect();
    this.strip.scrollTop += span.getBoundingClientRect().top - box.top - box.height / 3;
  }

  /** Move the window so that token `pos` is in it (whole windows: STRIP_WINDOW apart). */
  reveal(pos) {
    if (!this.windowed || !this.strip) return;
    if (pos < this.start || pos >= this.start + STRIP_WINDOW) this.showWindow(Math.floor(pos / STRIP_WINDOW) * STRIP_WINDOW);
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

  /** The token spans (of the window, for a long trace). */
  fill() {
    this.showWindow(this.windowed ? this.start : 0);
  }

  /** Make the spans of tokens start… (all of them for a short trace) and shade them. */
  showWindow(start) {
    const facts = this.state.trace;
    const n = facts.tokens.length;
    const size = this.windowed ? STRIP_WINDOW : n;
    this.start = Math.max(0, Math.min(start, Math.floor((n - 1) / size) * size));
    const end = Math.min(n, this.start + size);
    const { ids, raw, special } = facts.sources[0].tokens;
    this.spans = [];
    for (let i = this.start; i < end; i++) {
      const span = h("span", {
        class: `aw-token ${isGenerated(facts, i) ? "aw-generated" : "aw-prompt"}${special?.[i] ? " aw-special" : ""}`,
        "data-pos": i,
        title: `position ${i} · id ${ids[i]} · ${raw[i]}`,
      });
      span.textContent = tokenLabel(facts.tokens[i]);
      this.spans.push(span);
    }
    this.strip.replaceChildren(...this.spans);
    this.strip.scrollTop = 0;
    this.shown = null;
    if (this.windowLabel) this.windowLabel.textContent = `tokens ${this.start}–${end - 1} of ${n}`;
    if (this.spans.length) this.apply(this.pos ?? null);
  }

  /** Hover and click handling, once per strip element (the spans come and go with the window). */
  listen() {
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
      if (p === null) return;
      const pinned = this.get("selected_token");
      if (e.shiftKey && pinned >= 0 && pinned !== p) this.onSpan(Math.min(p, pinned), Math.max(p, pinned) + 1);
      else this.onPin(p);
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
    if (pinned !== this.lastPinned) {
      this.lastPinned = pinned;
      if (pinned >= 0) this.reveal(pinned); // a pin elsewhere moves the window
    }
    const { sections, detail, trace } = this.state;
    const shading = [detail?.[this.source], sections?.[this.source] ?? sections?.[0]].filter(Boolean);
    const weights = trace.cross ? null : shadeWeights(shading, pos, this.direction, trace.tokens.length, trace.causal);
    // Touch only the tokens whose look changes: style writes to a thousand spans would make
    // the next Bokeh paint recompute the whole page's styles.
    if (!this.spans) return;
    const shown = (this.shown ??= this.spans.map(() => ({ w: "0", cls: 0 })));
    this.spans.forEach((span, j) => {
      const i = this.start + j;
      const w = weights && !Number.isNaN(weights[i]) ? weights[i].toFixed(2) : "0";
      const cls = (weights ? 1 : 0) | (i === pos ? 2 : 0) | (i === pinned ? 4 : 0);
      const old = shown[j];
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
 * The attention of token `pos` over the strip's `n` tokens, ÷ its max: its row ("from": what it
 * attends to) or its column ("to": who attends to it); null without a token or a matrix.
 * `sections`: one section, or several most exact first (a full-resolution region, then the
 * pooled head): each token takes its value from the first that covers it. `causal`: tokens a
 * pooled square holds on the wrong side of `pos` are not shaded.
 */
export function shadeWeights(sections, pos, direction, n, causal = false) {
  const list = (Array.isArray(sections) ? sections : [sections]).filter(Boolean);
  if (pos === null || pos === undefined || !list.length) return null;
  const from = direction === "from";
  let weights = null;
  let covered = null;
  for (const s of list) {
    const w = from ? row(s, pos, n) : column(s, pos, n);
    const c = coverage(s);
    const [start, size] = from ? [c.k0, c.cols * c.side] : [c.q0, c.rows * c.side];
    const inside = from ? pos >= c.q0 && pos < c.q0 + c.rows * c.side : pos >= c.k0 && pos < c.k0 + c.cols * c.side;
    if (!weights) {
      weights = w;
      covered = new Uint8Array(w.length);
    } else {
      for (let i = 0; i < w.length; i++) if (!covered[i]) weights[i] = w[i];
    }
    if (inside) covered.fill(1, Math.max(0, start), Math.min(w.length, start + size));
  }
  if (causal) {
    if (from) weights.fill(NaN, Math.min(weights.length, pos + 1));
    else weights.fill(NaN, 0, Math.min(weights.length, pos));
  }
  let max = 0;
  for (const w of weights) if (w > max) max = w;
  if (max > 0) for (let i = 0; i < weights.length; i++) weights[i] /= max;
  return weights;
}

/**
 * What the "go to" box asks for among `n` tokens: `{position}`, `{span: [start, end)}` (typed
 * inclusive: "1200-1400", "1200–1400", "1200:1400" or "1200..1400"), `{text}`, `{error}` for a
 * position out of range, or null for nothing typed.
 */
export function parseJump(text, n) {
  const t = String(text).trim();
  if (!t) return null;
  const range = (p) => (p < n ? null : `position must be 0…${n - 1}; got ${p}`);
  let m = /^(\d+)$/.exec(t);
  if (m) return range(+m[1]) ? { error: range(+m[1]) } : { position: +m[1] };
  m = /^(\d+)\s*(?:-|–|:|\.\.)\s*(\d+)$/.exec(t);
  if (m) {
    const [a, b] = [+m[1], +m[2]].sort((x, y) => x - y);
    return range(b) ? { error: range(b) } : { span: [a, b + 1] };
  }
  return { text: t };
}

/**
 * The next token after position `after` (wrapping around) where `text` starts, case-insensitive,
 * over the tokens' joined text (so text may run across tokens): {position, index, count} with
 * the match's number among all `count` matches, or null.
 */
export function findText(tokens, text, after = -1) {
  const needle = text.toLowerCase();
  const starts = [];
  let joined = "";
  for (const t of tokens) {
    starts.push(joined.length);
    joined += t;
  }
  const hay = joined.toLowerCase();
  const hits = [];
  for (let i = hay.indexOf(needle); i >= 0 && needle; i = hay.indexOf(needle, i + 1)) hits.push(i);
  if (!hits.length) return null;
  const tokenAt = (c) => {
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const positions = [...new Set(hits.map(tokenAt))];
  const next = positions.findIndex((p) => p > after);
  const index = next >= 0 ? next : 0;
  return { position: positions[index], index: index + 1, count: positions.length };
}
