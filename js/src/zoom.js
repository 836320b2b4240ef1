// Long traces (PROTOCOL.md, "Long traces"): where a section's cells fall in the visible part of
// the heatmap, which full-resolution region to ask for when the user zooms into a pooled image,
// and the words that say what resolution is shown. Pure: no DOM, no Bokeh.

import { coverage } from "./payload.js";

/** A region fetched at full resolution spans at most this many queries and keys (8 MiB of float16). */
export const DETAIL_MAX_TOKENS = 2048;
/** Regions are snapped outwards to multiples of this many tokens, so that small pans reuse them. */
export const DETAIL_SNAP = 64;

/**
 * The cells of `section` inside the visible tokens `view` ({q0, q1, k0, k1}, half-open), as a
 * region of cells clamped to the section, or null when none is visible.
 */
export function cellRegion(section, view) {
  const c = coverage(section);
  const clamp = (v, n) => Math.min(Math.max(v, 0), n);
  const r = {
    q0: clamp(Math.floor((view.q0 - c.q0) / c.side), c.rows), q1: clamp(Math.ceil((view.q1 - c.q0) / c.side), c.rows),
    k0: clamp(Math.floor((view.k0 - c.k0) / c.side), c.cols), k1: clamp(Math.ceil((view.k1 - c.k0) / c.side), c.cols),
  };
  return r.q1 > r.q0 && r.k1 > r.k0 ? r : null;
}

/**
 * How many pixels a side the cells `cells` of `section` get when the visible tokens `view` are
 * drawn `maxPixels` wide: a region covering a tenth of the view gets a tenth of the pixels.
 */
export function pixelsFor(section, cells, view, maxPixels) {
  const { side } = coverage(section);
  const tokens = Math.max(cells.q1 - cells.q0, cells.k1 - cells.k0) * side;
  const shown = Math.max(view.q1 - view.q0, view.k1 - view.k0, 1);
  return Math.max(1, Math.ceil((maxPixels * Math.min(tokens, shown)) / shown));
}

/**
 * Where an image of `cells` of `section`, pooled by `pooledSide` cells a pixel, goes in token
 * coordinates ({x, y, dw, dh}), and how many tokens one of its pixels covers (`side`).
 */
export function placement(section, cells, w, h, pooledSide) {
  const c = coverage(section);
  const side = pooledSide * c.side;
  return { x: c.k0 + cells.k0 * c.side, y: c.q0 + cells.q0 * c.side, dw: w * side, dh: h * side, side };
}

/** Whether `section` covers every visible token of `view`. */
export function coversView(section, view) {
  const c = coverage(section);
  return view.q0 >= c.q0 && view.k0 >= c.k0 && view.q1 <= c.q0 + c.rows * c.side && view.k1 <= c.k0 + c.cols * c.side;
}

/**
 * The region to fetch at full resolution for the visible tokens `view` drawn at most `pixels`
 * wide over a pooled image of `side` × `side` squares: null when the pooled image already has
 * as much detail as the screen (or nothing in view is attended); `{tooBig: true}` when the view
 * is finer but spans more than DETAIL_MAX_TOKENS. Snapped outwards to DETAIL_SNAP tokens,
 * clamped to `nq` × `nk`, and for a causal block trimmed to rows and keys that hold attention.
 */
export function detailRegion(view, { side, pixels, nq, nk, causal }) {
  const span = Math.max(view.q1 - view.q0, view.k1 - view.k0, 1);
  if (side <= 1 || span / Math.max(1, pixels) > side / 2) return null; // pooled squares still under 2 pixels
  const down = (v) => Math.floor(v / DETAIL_SNAP) * DETAIL_SNAP;
  const up = (v) => Math.ceil(v / DETAIL_SNAP) * DETAIL_SNAP;
  const r = { q0: down(view.q0), q1: Math.min(nq, up(view.q1)), k0: down(view.k0), k1: Math.min(nk, up(view.k1)) };
  if (causal) {
    r.k1 = Math.min(r.k1, r.q1); // keys after the last row are never attended
    r.q0 = Math.max(r.q0, r.k0); // rows before the first key attend to none of them
  }
  if (r.q1 <= r.q0 || r.k1 <= r.k0) return null;
  if (view.q1 - view.q0 > DETAIL_MAX_TOKENS || view.k1 - view.k0 > DETAIL_MAX_TOKENS) return { tooBig: true };
  return r;
}

/**
 * What the heatmap's note says about the image: `side` tokens a pixel a side; `pooled`: the
 * kernel sent squares (a long trace) and no full-resolution region covers the view; `detail`:
 * "loading" (a region is on its way), "tooBig" (zoom in further first), or null.
 */
export function resolutionText(side, pooled, detail = null) {
  const px = side > 1 ? `1 px = ${side}×${side} tokens (max)` : "1 px = 1 token";
  if (!pooled) return side > 1 ? `${px}; zoom in for full resolution` : "full resolution";
  const more = detail === "loading" ? "loading full resolution…"
    : detail === "tooBig" ? `zoom in to ≤ ${DETAIL_MAX_TOKENS} tokens for full resolution`
      : "zoom in for full resolution";
  return `pooled: ${px} · ${more}`;
}

/**
 * The generation step's box over query row `q`, kept inside the visible tokens `view`
 * ({q0, q1, k0, k1}) and inset by `inset` tokens (about a pixel) so that its outline stays in
 * the frame: {left, right, top, bottom}, or null when the row is out of view (or q < 0).
 */
export function stepBox(q, view, inset) {
  if (q < 0 || q + 1 <= view.q0 || q >= view.q1) return null;
  return { left: view.k0 + inset, right: view.k1 - inset, top: Math.max(q, view.q0 + inset), bottom: Math.min(q + 1, view.q1 - inset) };
}
