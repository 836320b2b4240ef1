// Max pooling over squares of cells and colouring with WebAssembly SIMD (src/pool.wat): the heatmap of a head
// never shown before, at 4096 tokens, is 8 M float16 cells to fold on every slider move, and a
// JavaScript compare-and-store loop over random-looking weights runs at branch-mispredict
// speed. Same output as colour.js's poolColour, which it falls back to without WebAssembly.

import { POOL_WASM } from "../gen/pool_wasm.js";
import { pixelGrid, poolColour, poolSection } from "./colour.js";
import { F16 } from "./payload.js";

const LUT = 0; // 65536 uint32 colours
const IDENTITY = 65536 * 4; // 65536 uint32: pattern → itself (hfold then yields maxima, not colours)
const ACC = 2 * 65536 * 4;
const EMPTY = 0x8000; // -32768 as int16: below every pattern the pooling compares
const align16 = (n) => Math.ceil(n / 16) * 16;

let engine; // undefined: not tried yet; null: unavailable here

/** The instantiated module, or null where WebAssembly SIMD is unavailable. */
export function wasmEngine() {
  if (engine !== undefined) return engine;
  try {
    const bytes = Uint8Array.from(atob(POOL_WASM), (c) => c.charCodeAt(0));
    if (typeof WebAssembly !== "object" || !WebAssembly.validate(bytes)) throw new Error("no SIMD");
    const { exports } = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
    exports.memory.grow(Math.ceil((ACC + 65536) / 65536));
    new Uint32Array(exports.memory.buffer).set(Uint32Array.from({ length: 65536 }, (_, i) => i), IDENTITY / 4);
    engine = { exports, colours: null };
  } catch {
    engine = null;
  }
  return engine;
}

/**
 * Views of the module's memory, grown to at least `need` bytes first (growing keeps the contents,
 * colour tables included; only the old views are detached).
 */
function heaps(e, need) {
  const memory = e.exports.memory;
  if (memory.buffer.byteLength < need) memory.grow(Math.ceil((need - memory.buffer.byteLength) / 65536));
  return { heap16: new Uint16Array(memory.buffer), heap32: new Uint32Array(memory.buffer) };
}

/** Where each query row of a float16 section starts and how many keys it has (packed or dense). */
function rowsOf(section) {
  const tril = section.layout === "tril";
  const nk = tril ? section.shape[0] : section.shape[1];
  return { nk, start: (q) => (tril ? (q * (q + 1)) >>> 1 : q * nk), length: (q) => (tril ? q + 1 : nk) };
}

/**
 * Let the module and its memory go (the last view left the page): WebAssembly memory only
 * grows, to the largest section pooled, and is freed only with its instance. The next view
 * instantiates it again (a few milliseconds).
 */
export function releaseWasm() {
  if (engine) engine = undefined;
}

/** For tests: run without WebAssembly (false) or with it again (true). */
export function useWasm(on) {
  engine = on ? undefined : null;
}

/**
 * {rgba, w, h, side}: `region` of a float16 section pooled to at most `maxPixels` a side (each
 * pixel the max of its side × side cells) and coloured through `colours` (bitsLUT).
 */
export function poolColourFast(section, region, maxPixels, colours) {
  const e = wasmEngine();
  if (!e) return poolColour(section, region, maxPixels, colours);
  const { side, w, h } = pixelGrid(region, maxPixels);
  const { nk, start: rowStart, length } = rowsOf(section);
  const { q0, q1, k0, k1 } = region;
  const span = Math.max(0, k1 - k0);
  const OUT = ACC + align16(span * 2);
  const SCRATCH = OUT + align16(w * h * 4);
  const need = SCRATCH + align16(side * (nk + side) * 2);
  const { heap16, heap32 } = heaps(e, need);
  if (e.colours !== colours) {
    heap32.set(colours, LUT / 4);
    e.colours = colours;
  }
  heap32.fill(0, OUT / 4, OUT / 4 + w * h);
  const { vmax, hfold, colour } = e.exports;
  const data = section.data;
  const rowEnd = (q) => Math.min(k1, length(q)); // keys of row q inside the region
  for (let r = 0; r < h; r++) {
    const qa = q0 + r * side;
    const qb = Math.min(q1, qa + side);
    const c0 = rowStart(qa);
    heap16.set(data.subarray(c0, rowStart(qb)), SCRATCH / 2); // the square's rows are contiguous
    const out = OUT + r * w * 4;
    if (side === 1) {
      const n = rowEnd(qa) - k0;
      if (n > 0) colour(SCRATCH + k0 * 2, n, LUT, out);
      continue;
    }
    heap16.fill(EMPTY, ACC / 2, ACC / 2 + span);
    let width = 0;
    for (let q = qa; q < qb; q++) {
      const n = rowEnd(q) - k0;
      if (n <= 0) continue;
      if (n > width) width = n;
      vmax(SCRATCH + (rowStart(q) - c0 + k0) * 2, ACC, n);
    }
    if (width > 0) hfold(ACC, width, side, LUT, out);
  }
  return { rgba: heap32.slice(OUT / 4, OUT / 4 + w * h), w, h, side };
}

/**
 * The row-relative scale: {values, w, h, side} as colour.js's poolSection(..., relative=true)
 * gives them (each query row divided by its own max over all its keys, then the square max),
 * with the row maxima and the per-row square maxima folded in WebAssembly.
 */
export function poolRelativeFast(section, region, maxPixels) {
  const e = wasmEngine();
  if (!e) return poolSection(section, region, maxPixels, true);
  const { side, w, h } = pixelGrid(region, maxPixels);
  const { nk, start: rowStart, length: rowLength } = rowsOf(section);
  const { q0, q1, k0, k1 } = region;
  const TMP = ACC; // row max, then one row's square maxima (as uint32 patterns)
  const SCRATCH = TMP + align16((w + 1) * 4);
  const need = SCRATCH + align16(side * (nk + side) * 2);
  const { heap16, heap32 } = heaps(e, need);
  const { hfold } = e.exports;
  const data = section.data;
  const values = new Float32Array(w * h).fill(NaN);
  for (let r = 0; r < h; r++) {
    const qa = q0 + r * side;
    const qb = Math.min(q1, qa + side);
    const c0 = rowStart(qa);
    heap16.set(data.subarray(c0, rowStart(qb)), SCRATCH / 2);
    const o = r * w;
    for (let q = qa; q < qb; q++) {
      const start = SCRATCH + (rowStart(q) - c0) * 2;
      const length = rowLength(q);
      const n = Math.min(k1, length) - k0;
      if (n <= 0) continue;
      hfold(start, length, length, IDENTITY, TMP); // the row's max over all its keys
      const rowMax = F16[heap32[TMP / 4]];
      const inv = rowMax > 0 ? 1 / rowMax : 0;
      hfold(start + k0 * 2, n, side, IDENTITY, TMP);
      for (let c = 0, m = Math.ceil(n / side); c < m; c++) {
        const v = F16[heap32[TMP / 4 + c]] * inv;
        if (!(values[o + c] >= v)) values[o + c] = v;
      }
    }
  }
  return { values, w, h, side };
}
