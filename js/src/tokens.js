// Token text for display. Pure. Token text is data: callers set it with textContent (or as
// Bokeh canvas text), never as HTML.

/** One-line display of a token: newlines and tabs made visible. */
export function tokenLabel(text) {
  return String(text).replace(/\r\n|\n|\r/g, "⏎").replace(/\t/g, "⇥");
}

/** A short axis label: visible whitespace, cut to `max` characters with an ellipsis. */
export function shortLabel(text, max = 12) {
  const s = tokenLabel(text);
  const chars = Array.from(s); // whole code points, never half a surrogate pair
  return chars.length > max ? chars.slice(0, max - 1).join("") + "…" : s;
}

/** Quoted token for readouts: `"␣Paris"` keeps a leading space visible. */
export function quoted(text) {
  return `"${tokenLabel(text).replace(/^ /, "␣")}"`;
}

/**
 * Ticks for one heatmap axis over the visible cells [start, end): every token with its text
 * when `pixels / count` leaves room for a label, else every `step`-th token (a round step that
 * leaves room) labelled with its position and text. A tick sits at the centre of the visible
 * part of its cell, so that however deep the zoom, at least one tick stays in view.
 * Returns {ticks: number[], labels: Map(tick -> string), tokens: every token labelled}.
 */
export function axisTicks(start, end, texts, pixels, minPixelsPerLabel = 10) {
  const lo = Math.max(0, Math.floor(start));
  const hi = Math.min(texts.length, Math.ceil(end));
  const count = Math.max(hi - lo, 1);
  const room = Math.max(1, Math.floor(pixels / minPixelsPerLabel));
  const ticks = [];
  const labels = new Map();
  const at = (i) => (Math.max(i, start) + Math.min(i + 1, end)) / 2;
  if (count <= room) {
    for (let i = lo; i < hi; i++) {
      ticks.push(at(i));
      labels.set(at(i), shortLabel(texts[i]));
    }
    return { ticks, labels, tokens: true };
  }
  const step = niceStep(count / room);
  for (let i = Math.ceil(lo / step) * step; i < hi; i += step) {
    ticks.push(at(i));
    labels.set(at(i), `${i} ${shortLabel(texts[i], 8)}`);
  }
  return { ticks, labels, tokens: false };
}

function niceStep(x) {
  const p = 10 ** Math.floor(Math.log10(Math.max(x, 1)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}
