// What the heatmap says about its values: the colour bar's title and the hover readout's lines,
// for the attention weights or value-weighted attention (α·‖f(x)‖, Kobayashi et al. 2020).
// Pure: no DOM, no Bokeh.

import { LOG_LOW } from "./colour.js";
import { coverage, valueAt } from "./payload.js";
import { quoted } from "./tokens.js";

/** How a value-weighted cell is named in the readout and the colour bar. */
export const NORM_NAME = "value-weighted α·‖f(x)‖";

const short = (v) => (v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toPrecision(2));

/**
 * The colour bar's title for a panel's image (`image.mapping`: its colour range). Value-weighted
 * (`weighting` "norm"), the range runs to the view's max, and the title says so.
 */
export function colourBarTitle(kind, scale, image, weighting = "attention") {
  let name;
  if (kind === "diff") name = `|A − B| (max ${image.max.toFixed(3)})`;
  else if (weighting === "norm") {
    const high = short(image.mapping?.high ?? 1);
    name = { linear: `α·‖f(x)‖ (value-weighted), 0…max ${high}`, log: `α·‖f(x)‖ (value-weighted, log), max ${high}`,
      row: "α·‖f(x)‖ (value-weighted) ÷ row max" }[scale];
  } else name = { linear: "weight", log: `weight (log, < ${LOG_LOW} at bottom)`, row: "weight ÷ row max" }[scale];
  return image.side > 1 ? `${name} · 1 px = max of ${image.side}×${image.side}` : name;
}

/**
 * Readout lines of a hovered cell {q, k}: its tokens, then its weight (A, B and |Δ| compared),
 * named for its weighting (value-weighted: α·‖f(x)‖); from a pooled image, the max of the square
 * holding the cell, and what that square is.
 */
export function cellLines(facts, sections, c, source, weighting = "attention") {
  const lines = [`query ${c.q} ${quoted(facts.tokens[c.q])} → key ${c.k} ${quoted(facts.keyTokens[c.k])}`];
  const fmt = (v) => (Number.isNaN(v) ? "—" : v < 1e-3 && v > 0 ? v.toExponential(2) : v.toFixed(4));
  const side = coverage(sections[Math.max(0, source)]).side;
  const norm = weighting === "norm";
  const what = side > 1 ? `max of ${side}×${side} tokens${norm ? `, ${NORM_NAME}` : ""}` : norm ? NORM_NAME : "weight";
  if (facts.compare) {
    const [a, b] = [0, 1].map((i) => valueAt(sections[i], c.q, c.k));
    lines.push(`${side > 1 || norm ? `${what}: ` : ""}${facts.sources[0].label} ${fmt(a)} · ${facts.sources[1].label} ${fmt(b)} · |Δ| ${fmt(Math.abs(a - b))}`);
  } else {
    lines.push(`${what} ${fmt(valueAt(sections[source], c.q, c.k))}`);
  }
  if (side > 1) {
    const q0 = Math.floor(c.q / side) * side;
    const k0 = Math.floor(c.k / side) * side;
    lines.push(`(pooled: queries ${q0}–${q0 + side - 1} × keys ${k0}–${k0 + side - 1}; zoom in for each weight)`);
  }
  return lines;
}
