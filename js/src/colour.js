// From attention matrices to RGBA pixels: max pooling over squares of cells to screen resolution and colour
// mapping that matches Bokeh's LinearColorMapper / LogColorMapper. Pure: no DOM, no Bokeh.

import { F16 } from "./payload.js";

export const LOG_LOW = 1e-4;

/** Uint32Array of 256 RGBA colours (little-endian bytes R, G, B, A) from "#rrggbb" strings. */
export function paletteLUT(palette) {
  const lut = new Uint32Array(palette.length);
  palette.forEach((hex, i) => {
    const v = parseInt(hex.slice(1, 7), 16);
    lut[i] = ((0xff << 24) | ((v & 0xff) << 16) | (v & 0xff00) | ((v >> 16) & 0xff)) >>> 0;
  });
  return lut;
}

/** From this many keys on, the `auto` scale is log: a long prompt's weights spread thin, and on a
 * linear scale a head reads as one faint diagonal on a dark square. */
export const AUTO_LOG_TOKENS = 256;

/** The scale drawn for the `scale` trait: `auto` (the default) is log from AUTO_LOG_TOKENS keys on,
 * linear below; a scale the user chose is kept as it is. */
export function resolveScale(scale, nKeys) {
  if (scale !== "auto") return scale;
  return nKeys >= AUTO_LOG_TOKENS ? "log" : "linear";
}

/** The colour range a scale uses: `{kind, low, high}` for Bokeh's mapper and for colorize. */
export function scaleMapping(scale, diffMax = 1) {
  if (scale === "log") return { kind: "log", low: LOG_LOW, high: 1 };
  if (scale === "diff") return { kind: "linear", low: 0, high: diffMax > 0 ? diffMax : 1 };
  return { kind: "linear", low: 0, high: 1 };
}

/**
 * Palette index of a value, as Bokeh's continuous mappers compute it: floor of the normalised
 * value times the palette length, clamped; the top of the range maps to the last colour.
 */
export function paletteIndex(value, mapping, n) {
  let x;
  if (mapping.kind === "log") {
    if (!(value > 0)) return 0;
    x = (Math.log(value) - Math.log(mapping.low)) / (Math.log(mapping.high) - Math.log(mapping.low));
  } else {
    x = (value - mapping.low) / (mapping.high - mapping.low);
  }
  const i = Math.floor(x * n);
  return i < 0 ? 0 : i >= n ? n - 1 : i;
}

/**
 * RGBA pixels for pooled values; NaN and -0 (no attention cell, as pooled and region sections
 * mark it) are transparent.
 */
export function colorize(values, mapping, lut) {
  const n = lut.length;
  const out = new Uint32Array(values.length);
  if (mapping.kind === "linear") {
    const k = n / (mapping.high - mapping.low);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v !== v || (v === 0 && 1 / v < 0)) continue; // NaN or -0
      let j = Math.floor((v - mapping.low) * k);
      j = j < 0 ? 0 : j >= n ? n - 1 : j;
      out[i] = lut[j];
    }
  } else {
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === v && !(v === 0 && 1 / v < 0)) out[i] = lut[paletteIndex(v, mapping, n)];
    }
  }
  return out;
}

/**
 * Pixels covering a region at most `maxPixels` wide and tall: each pixel is the max over a
 * side × side square of cells, so isolated peaks survive shrinking.
 * region: {q0, q1, k0, k1} (half-open, in cells). Returns {side, w, h}.
 */
export function pixelGrid(region, maxPixels) {
  const span = Math.max(region.q1 - region.q0, region.k1 - region.k0, 1);
  const side = Math.max(1, Math.ceil(span / Math.max(1, maxPixels)));
  return {
    side,
    w: Math.max(1, Math.ceil((region.k1 - region.k0) / side)),
    h: Math.max(1, Math.ceil((region.q1 - region.q0) / side)),
  };
}

/**
 * Max over squares of cells of a float16 matrix section over `region`, as Float32Array(h * w), row-major,
 * row 0 = query q0. With `relative`, each query row is first divided by its own max over all
 * keys (the "row" scale). Pixels with no attention cell (above a causal diagonal) are NaN.
 */
export function poolSection(section, region, maxPixels, relative = false) {
  const { side, w, h } = pixelGrid(region, maxPixels);
  // Non-negative float16 values order like their bit patterns read as int16 (-0 reads lowest),
  // so maxima are taken on integers and decoded once per pixel.
  const bits = new Int16Array(section.data.buffer, section.data.byteOffset, section.data.length);
  const tril = section.layout === "tril";
  const nk = tril ? section.shape[0] : section.shape[1];
  const { q0, q1, k0, k1 } = region;
  const out = new Float32Array(w * h).fill(NaN);
  const acc = new Int16Array(w);
  const EMPTY = -32768;
  for (let r = 0; r < h; r++) {
    acc.fill(EMPTY);
    const rowOut = r * w;
    for (let q = q0 + r * side; q < Math.min(q1, q0 + (r + 1) * side); q++) {
      const start = tril ? (q * (q + 1)) / 2 : q * nk;
      const kEnd = Math.min(k1, tril ? q + 1 : nk);
      if (relative) {
        poolRelativeRow(bits, start, kEnd, k0, side, tril ? q + 1 : nk, out, rowOut);
        continue;
      }
      for (let k = k0, c = 0; k < kEnd; c++) {
        const stop = Math.min(kEnd, k + side);
        let m = acc[c];
        for (let j = start + k, end = start + stop; j < end; j++) if (bits[j] > m) m = bits[j];
        acc[c] = m;
        k = stop;
      }
    }
    if (relative) continue;
    for (let c = 0; c < w; c++) if (acc[c] !== EMPTY) out[rowOut + c] = F16[acc[c] & 0xffff];
  }
  return { values: out, w, h, side };
}

/**
 * RGBA word for every float16 bit pattern under `mapping`: colouring a pooled pixel is then one
 * lookup of its max's bits. NaN and negative patterns (never attention weights) are
 * transparent, and so is 0x8000, the pooling's "no cell here" marker.
 */
export function bitsLUT(mapping, lut) {
  const out = new Uint32Array(65536);
  const n = lut.length;
  for (let b = 0; b < 0x8000; b++) {
    const v = F16[b];
    if (v === v) out[b] = lut[paletteIndex(v, mapping, n)];
  }
  return out;
}

/**
 * Max pooling over squares of cells and colouring in one pass: RGBA pixels (Uint32Array(h * w), row-major,
 * row 0 = query q0) for `region` of a float16 section, each pixel coloured by the max of its
 * side × side cells through `colours` (bitsLUT). Pixels with no cell are transparent.
 * Returns {rgba, w, h, side}. Equal to colorize(poolSection(...).values) for non-negative
 * weights, at a fraction of the cost: rows of a square are first folded into one row of maxima
 * (a straight loop over the packed cells), then that row is folded across columns.
 */
export function poolColour(section, region, maxPixels, colours) {
  const { side, w, h } = pixelGrid(region, maxPixels);
  const bits = new Int16Array(section.data.buffer, section.data.byteOffset, section.data.length);
  const tril = section.layout === "tril";
  const nk = tril ? section.shape[0] : section.shape[1];
  const { q0, q1, k0, k1 } = region;
  const rgba = new Uint32Array(w * h);
  const EMPTY = -32768;
  if (side === 1) {
    for (let q = q0; q < q1; q++) {
      const start = tril ? (q * (q + 1)) >>> 1 : q * nk;
      const kEnd = Math.min(k1, tril ? q + 1 : nk);
      const o = (q - q0) * w - k0;
      for (let k = k0; k < kEnd; k++) rgba[o + k] = colours[bits[start + k] & 0xffff];
    }
    return { rgba, w, h, side };
  }
  const span = k1 - k0;
  const acc = new Int16Array(span);
  for (let r = 0; r < h; r++) {
    acc.fill(EMPTY);
    let width = 0; // columns any row of this square reaches
    const qEnd = Math.min(q1, q0 + (r + 1) * side);
    for (let q = q0 + r * side; q < qEnd; q++) {
      const kEnd = Math.min(k1, tril ? q + 1 : nk);
      const n = kEnd - k0;
      if (n <= 0) continue;
      if (n > width) width = n;
      const start = (tril ? (q * (q + 1)) >>> 1 : q * nk) + k0;
      for (let j = 0; j < n; j++) {
        const v = bits[start + j];
        if (v > acc[j]) acc[j] = v;
      }
    }
    const o = r * w;
    for (let c = 0, j = 0; j < width; c++) {
      let m = acc[j];
      const stop = Math.min(width, j + side);
      for (j++; j < stop; j++) if (acc[j] > m) m = acc[j];
      rgba[o + c] = colours[m & 0xffff];
    }
  }
  return { rgba, w, h, side };
}

function poolRelativeRow(bits, start, kEnd, k0, side, rowLength, out, rowOut) {
  let m = -32768;
  for (let k = 0; k < rowLength; k++) if (bits[start + k] > m) m = bits[start + k];
  const rowMax = F16[m & 0xffff];
  const inv = rowMax > 0 ? 1 / rowMax : 0;
  for (let k = k0, c = 0; k < kEnd; c++) {
    const stop = Math.min(kEnd, k + side);
    let b = bits[start + k];
    for (let j = start + k + 1, end = start + stop; j < end; j++) if (bits[j] > b) b = bits[j];
    const v = F16[b & 0xffff] * inv;
    const o = rowOut + c;
    if (!(out[o] >= v)) out[o] = v; // NaN-safe max over the square's rows
    k = stop;
  }
}

/**
 * Max over squares of cells of |A − B| over the part of `region` both sections cover, with its overall max.
 */
export function poolDiff(a, b, region, maxPixels) {
  const { side, w, h } = pixelGrid(region, maxPixels);
  const out = new Float32Array(w * h).fill(NaN);
  let max = 0;
  const nq = Math.min(region.q1, rows(a), rows(b));
  const nk = Math.min(region.k1, cols(a), cols(b));
  for (let q = region.q0; q < nq; q++) {
    const kEnd = Math.min(nk, a.layout === "tril" || b.layout === "tril" ? q + 1 : nk);
    const base = ((q - region.q0) / side | 0) * w;
    for (let k = region.k0; k < kEnd; k++) {
      const v = Math.abs(cell(a, q, k) - cell(b, q, k));
      if (v !== v) continue; // no attention cell in either (-0 in pooled and region sections)
      const o = base + ((k - region.k0) / side | 0);
      if (!(out[o] >= v)) out[o] = v;
      if (v > max) max = v;
    }
  }
  return { values: out, w, h, side, max };
}

const rows = (s) => s.shape[0];
const cols = (s) => (s.layout === "tril" ? s.shape[0] : s.shape[1]);

function cell(s, q, k) {
  if (s.layout === "tril") return k > q ? 0 : F16[s.data[(q * (q + 1)) / 2 + k]];
  const bits = s.data[q * s.shape[1] + k];
  return bits === 0x8000 ? NaN : F16[bits];
}

/**
 * The largest value of a float16 section (NaN, -0 and negative patterns skipped), kept on the
 * section: value-weighted views (α·‖f(x)‖) are not in [0, 1], so their colour range is 0…this.
 */
export function sectionMax(section) {
  if (section.max !== undefined) return section.max;
  const bits = new Int16Array(section.data.buffer, section.data.byteOffset, section.data.length);
  let m = -1;
  for (let i = 0; i < bits.length; i++) if (bits[i] > m && bits[i] < 0x7c01) m = bits[i];
  section.max = m < 0 ? 0 : F16[m];
  return section.max;
}

/**
 * The colour range of a view: scaleMapping's for the attention weights; value-weighted
 * (`weighting` "norm"), linear 0…`max` and log `max`·1e-4…`max` (the view's max: its cells are
 * α·‖f(x)‖, not in [0, 1]); the row scale divides each row by its max either way.
 */
export function viewMapping(scale, weighting, max) {
  if (weighting !== "norm" || scale === "row") return scaleMapping(scale);
  const high = max > 0 ? max : 1;
  return scale === "log" ? { kind: "log", low: high * LOG_LOW, high } : { kind: "linear", low: 0, high };
}
