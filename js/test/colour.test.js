import { test } from "node:test";
import assert from "node:assert/strict";
import { colorize, paletteIndex, paletteLUT, pixelGrid, poolDiff, poolSection, scaleMapping } from "../src/colour.js";
import { F16 } from "../src/payload.js";
import { f16array, packTril } from "./helpers.js";

const grey = Array.from({ length: 256 }, (_, i) => `#${i.toString(16).padStart(2, "0").repeat(3)}`);

test("palette colours become little-endian RGBA words with full alpha", () => {
  const lut = paletteLUT(["#440154", "#fde725"]);
  const bytes = new Uint8Array(lut.buffer);
  assert.deepEqual([...bytes.subarray(0, 4)], [0x44, 0x01, 0x54, 0xff]);
  assert.deepEqual([...bytes.subarray(4, 8)], [0xfd, 0xe7, 0x25, 0xff]);
});

test("linear mapping follows Bokeh: floor(x * n), the top of the range is the last colour", () => {
  const m = scaleMapping("linear");
  assert.equal(paletteIndex(0, m, 256), 0);
  assert.equal(paletteIndex(0.5, m, 256), 128);
  assert.equal(paletteIndex(1, m, 256), 255);
  assert.equal(paletteIndex(1.5, m, 256), 255);
  assert.equal(paletteIndex(-0.1, m, 256), 0);
});

test("log mapping spreads 1e-4…1 evenly per decade and puts zero at the bottom", () => {
  const m = scaleMapping("log");
  assert.equal(paletteIndex(1e-2, m, 256), 128);
  const perDecade = [1e-4, 1e-3, 1e-2, 1e-1].map((v, i, a) => i && paletteIndex(v, m, 256) - paletteIndex(a[i - 1], m, 256));
  for (const d of perDecade.slice(1)) assert.ok(Math.abs(d - 64) <= 1, `decade spans ${d} colours`);
  assert.equal(paletteIndex(0, m, 256), 0);
  assert.equal(paletteIndex(1e-6, m, 256), 0);
});

test("a small weight that linear colour shows as the bottom colour is distinct on the log scale", () => {
  const lin = paletteIndex(0.0009, scaleMapping("linear"), 256);
  const log = paletteIndex(0.0009, scaleMapping("log"), 256);
  assert.equal(lin, 0);
  assert.ok(log > 50, `log index ${log}`);
});

test("colorize leaves NaN cells transparent and colours the rest", () => {
  const lut = paletteLUT(grey);
  const out = colorize(Float32Array.from([NaN, 0, 1]), scaleMapping("linear"), lut);
  assert.equal(out[0], 0);
  assert.equal(out[1], lut[0]);
  assert.equal(out[2], lut[255]);
});

test("pixel grid shrinks 4096 cells to at most 512 pixels with 8×8 squares", () => {
  assert.deepEqual(pixelGrid({ q0: 0, q1: 4096, k0: 0, k1: 4096 }, 512), { side: 8, w: 512, h: 512 });
  assert.deepEqual(pixelGrid({ q0: 0, q1: 10, k0: 0, k1: 10 }, 512), { side: 1, w: 10, h: 10 });
});

function causalSection(dense, t) {
  return { layout: "tril", dtype: "float16", shape: [t], data: f16array(packTril(dense, t)) };
}

function randomCausal(t, seed = 1) {
  let s = seed;
  const rnd = () => ((s = (s * 16807) % 2147483647) / 2147483647);
  const d = new Array(t * t).fill(0);
  for (let i = 0; i < t; i++) {
    let sum = 0;
    for (let k = 0; k <= i; k++) sum += (d[i * t + k] = rnd() ** 4);
    for (let k = 0; k <= i; k++) d[i * t + k] /= sum;
  }
  return d;
}

test("pooling a causal head keeps each square's max and leaves squares above the diagonal empty", () => {
  const t = 37;
  const dense = randomCausal(t);
  const sec = causalSection(dense, t);
  const { values, w, h, side } = poolSection(sec, { q0: 0, q1: t, k0: 0, k1: t }, 10);
  assert.equal(side, 4);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      let m = NaN;
      for (let q = r * side; q < Math.min(t, (r + 1) * side); q++) {
        for (let k = c * side; k < Math.min(t, (c + 1) * side); k++) {
          if (k <= q) { const v = F16[sec.data[(q * (q + 1)) / 2 + k]]; if (!(m >= v)) m = v; }
        }
      }
      const got = values[r * w + c];
      if (Number.isNaN(m)) assert.ok(Number.isNaN(got), `pixel ${r},${c} should be empty`);
      else assert.equal(got, m, `pixel ${r},${c}`);
    }
  }
});

test("pooling a zoomed region covers only its cells", () => {
  const t = 20;
  const dense = new Array(t * t).fill(0);
  for (let i = 0; i < t; i++) dense[i * t + i] = 1;
  dense[15 * t + 3] = 0.5;
  const { values, w, h } = poolSection(causalSection(dense, t), { q0: 14, q1: 16, k0: 2, k1: 5 }, 100);
  assert.equal(w, 3);
  assert.equal(h, 2);
  assert.deepEqual([...values], [0, 0, 0, 0, 0.5, 0]);
});

test("row-relative pooling divides each query row by its own max", () => {
  const t = 3;
  const dense = [1, 0, 0, 0.25, 0.75, 0, 0.5, 0.25, 0.25];
  const { values } = poolSection(causalSection(dense, t), { q0: 0, q1: 3, k0: 0, k1: 3 }, 10, true);
  const expected = [1, null, null, 1 / 3, 1, null, 1, 0.5, 0.5];
  [...values].forEach((v, i) => {
    if (expected[i] === null) assert.ok(Number.isNaN(v), `pixel ${i} is above the diagonal`);
    else assert.ok(Math.abs(v - expected[i]) < 1e-6, `pixel ${i}: ${v} vs ${expected[i]}`);
  });
});

test("pooling a negative zero never hides a positive weight in the same square", () => {
  const sec = { layout: "dense", dtype: "float16", shape: [1, 2], data: Uint16Array.from([0x8000, f16array([0.3])[0]]) };
  const { values } = poolSection(sec, { q0: 0, q1: 1, k0: 0, k1: 2 }, 1);
  assert.ok(Math.abs(values[0] - 0.3) < 1e-3);
});

test("|A − B| is the square max of the absolute difference, with its overall max", () => {
  const a = causalSection([1, 0, 0.5, 0.5], 2);
  const b = causalSection([1, 0, 0.25, 0.75], 2);
  const { values, max } = poolDiff(a, b, { q0: 0, q1: 2, k0: 0, k1: 2 }, 10);
  assert.deepEqual([...values].map((v) => (Number.isNaN(v) ? null : v)), [0, null, 0.25, 0.25]);
  assert.equal(max, 0.25);
});

test("|A − B| of pooled squares leaves the squares with no attention (-0) transparent", () => {
  const pooled = (values) => ({ layout: "dense", dtype: "float16", shape: [2, 2], side: 4, data: f16array(values) });
  const { values } = poolDiff(pooled([0.5, -0, 0.25, 1]), pooled([0.25, -0, 0.25, 0.5]), { q0: 0, q1: 2, k0: 0, k1: 2 }, 10);
  assert.deepEqual([...values].map((v) => (Number.isNaN(v) ? null : v)), [0.25, null, 0, 0.5]);
});

test("colours: -0 (no attention cell) is transparent, +0 is the lowest colour", () => {
  const lut = paletteLUT(["#000001", "#0000ff"]);
  assert.deepEqual([...colorize(Float32Array.from([-0, 0, NaN]), scaleMapping("linear"), lut)], [0, lut[0], 0]);
});

// ------------------------------------------------------------------ fused pooling + colouring

import { bitsLUT, poolColour } from "../src/colour.js";
import { poolColourFast, useWasm, wasmEngine } from "../src/fastpool.js";

function denseSection(dense, rows, cols) {
  return { layout: "dense", dtype: "float16", shape: [rows, cols], data: f16array(dense) };
}

/** The reference: pool to values, then colour them (the path the row scale still takes). */
function reference(sec, region, maxPixels, mapping, lut) {
  const pooled = poolSection(sec, region, maxPixels);
  return { ...pooled, rgba: colorize(pooled.values, mapping, lut) };
}

const CASES = [
  ["whole causal head, side 1", 37, { q0: 0, q1: 37, k0: 0, k1: 37 }, 100],
  ["whole causal head, side 4", 37, { q0: 0, q1: 37, k0: 0, k1: 37 }, 10],
  ["whole causal head, side 3 (not a power of two)", 64, { q0: 0, q1: 64, k0: 0, k1: 64 }, 22],
  ["zoomed region straddling the diagonal", 64, { q0: 5, q1: 41, k0: 17, k1: 60 }, 9],
  ["zoomed region, one cell a pixel", 64, { q0: 5, q1: 41, k0: 17, k1: 60 }, 100],
  ["zoomed region above the diagonal only", 64, { q0: 0, q1: 10, k0: 20, k1: 40 }, 4],
  ["single row", 40, { q0: 39, q1: 40, k0: 0, k1: 40 }, 7],
];

test("the colour table gives the colour colorize gives for every float16 weight, marker transparent", () => {
  const lut = paletteLUT(grey);
  for (const mapping of [scaleMapping("linear"), scaleMapping("log")]) {
    const table = bitsLUT(mapping, lut);
    const values = F16.subarray(0, 0x7c00);
    const expected = colorize(values, mapping, lut);
    assert.deepEqual(table.subarray(0, 0x7c00), expected);
    assert.equal(table[0x8000], 0, "the pooling's empty marker is transparent");
    assert.equal(table[0x7e00], 0, "NaN is transparent");
  }
});

for (const engine of ["JavaScript", "WebAssembly"]) {
  test(`${engine} pooling + colouring equals pooling then colouring`, () => {
    useWasm(engine === "WebAssembly");
    try {
      if (engine === "WebAssembly") assert.ok(wasmEngine(), "Node has WebAssembly SIMD");
      const lut = paletteLUT(grey);
      const pool = engine === "WebAssembly" ? poolColourFast : poolColour;
      for (const [name, t, region, maxPixels] of CASES) {
        for (const scale of ["linear", "log"]) {
          const mapping = scaleMapping(scale);
          const sec = causalSection(randomCausal(t), t);
          const want = reference(sec, region, maxPixels, mapping, lut);
          const got = pool(sec, region, maxPixels, bitsLUT(mapping, lut));
          assert.deepEqual([got.w, got.h, got.side], [want.w, want.h, want.side], `${name}, ${scale}: grid`);
          assert.deepEqual(got.rgba, want.rgba, `${name}, ${scale}: pixels`);
        }
      }
      // A dense (non-causal, e.g. encoder or cross-attention) matrix, rows ≠ columns.
      const dense = Array.from({ length: 13 * 29 }, (_, i) => ((i * 7919) % 101) / 100);
      const sec = denseSection(dense, 13, 29);
      for (const maxPixels of [100, 5]) {
        const region = { q0: 1, q1: 13, k0: 3, k1: 29 };
        const want = reference(sec, region, maxPixels, scaleMapping("linear"), lut);
        const got = pool(sec, region, maxPixels, bitsLUT(scaleMapping("linear"), lut));
        assert.deepEqual(got.rgba, want.rgba, `dense, maxPixels ${maxPixels}`);
      }
    } finally {
      useWasm(true);
    }
  });
}

test("WebAssembly pooling survives a memory grow and a change of colours between calls", () => {
  const lut = paletteLUT(grey);
  const small = causalSection(randomCausal(16), 16);
  const big = causalSection(randomCausal(300), 300);
  const lin = bitsLUT(scaleMapping("linear"), lut);
  const log = bitsLUT(scaleMapping("log"), lut);
  const region = (t) => ({ q0: 0, q1: t, k0: 0, k1: t });
  for (const [sec, t, table, mapping] of [[small, 16, lin, "linear"], [big, 300, log, "log"], [small, 16, log, "log"], [big, 300, lin, "linear"]]) {
    const want = reference(sec, region(t), 64, scaleMapping(mapping), lut);
    assert.deepEqual(poolColourFast(sec, region(t), 64, table).rgba, want.rgba, `${t}, ${mapping}`);
  }
});

test("WebAssembly row-relative pooling equals the JavaScript one", async () => {
  const { poolRelativeFast } = await import("../src/fastpool.js");
  for (const [name, t, region, maxPixels] of CASES) {
    const sec = causalSection(randomCausal(t), t);
    const want = poolSection(sec, region, maxPixels, true);
    const got = poolRelativeFast(sec, region, maxPixels);
    assert.deepEqual([got.w, got.h, got.side], [want.w, want.h, want.side], name);
    assert.deepEqual(got.values, want.values, name);
  }
  const dense = Array.from({ length: 13 * 29 }, (_, i) => ((i * 7919) % 101) / 100);
  const sec = denseSection(dense, 13, 29);
  for (const maxPixels of [100, 5]) {
    const region = { q0: 1, q1: 13, k0: 3, k1: 29 };
    assert.deepEqual(poolRelativeFast(sec, region, maxPixels).values, poolSection(sec, region, maxPixels, true).values);
  }
});

test("the auto scale is log from AUTO_LOG_TOKENS keys on, linear below; a chosen scale is kept", async () => {
  const { AUTO_LOG_TOKENS, resolveScale } = await import("../src/colour.js");
  assert.equal(resolveScale("auto", 40), "linear");
  assert.equal(resolveScale("auto", AUTO_LOG_TOKENS - 1), "linear");
  assert.equal(resolveScale("auto", AUTO_LOG_TOKENS), "log");
  assert.equal(resolveScale("auto", 1024), "log");
  for (const s of ["linear", "log", "row"]) assert.equal(resolveScale(s, 1024), s);
});
