import { test } from "node:test";
import assert from "node:assert/strict";
import { traceFacts } from "../src/facts.js";
import { cellLines, colourBarTitle, panelSpecs, visibleRegion } from "../src/heatmap.js";
import { f16array, packTril, source } from "./helpers.js";

const matrix = (values, t) => ({ key: "head/0/0", dtype: "float16", layout: "tril", shape: [t], data: f16array(packTril(values, t)) });

test("one panel for a trace; A, B and |A − B| in compare view", () => {
  assert.deepEqual(panelSpecs([{ label: "A" }], false), [{ kind: "single", source: 0, title: "" }]);
  assert.deepEqual(panelSpecs([{ label: "base" }, { label: "tuned" }], true).map((p) => [p.kind, p.source, p.title]),
    [["single", 0, "base"], ["single", 1, "tuned"], ["diff", -1, "|base − tuned|"]]);
});

test("the visible region is the ranges' whole cells, clamped to the matrix (y runs downwards)", () => {
  assert.deepEqual(visibleRegion({ start: 0, end: 30 }, { start: 30, end: 0 }, 30, 30), { k0: 0, k1: 30, q0: 0, q1: 30 });
  assert.deepEqual(visibleRegion({ start: 2.5, end: 7.2 }, { start: 9.9, end: 4.1 }, 30, 30), { k0: 2, k1: 8, q0: 4, q1: 10 });
  assert.deepEqual(visibleRegion({ start: -5, end: 50 }, { start: 50, end: -5 }, 20, 10), { k0: 0, k1: 10, q0: 0, q1: 20 });
});

test("the colour bar names the scale, and the pooling when a pixel covers several cells", () => {
  assert.equal(colourBarTitle("single", "linear", { side: 1 }), "weight");
  assert.equal(colourBarTitle("single", "log", { side: 1 }), "weight (log, < 0.0001 at bottom)");
  assert.equal(colourBarTitle("single", "row", { side: 4 }), "weight ÷ row max · 1 px = max of 4×4");
  assert.equal(colourBarTitle("diff", "linear", { side: 1, max: 0.25 }), "|A − B| (max 0.250)");
});

test("the hover readout names both tokens and the weight; compare view gives A, B and |Δ|", () => {
  const a = matrix([1, 0, 0.25, 0.75], 2);
  const b = matrix([1, 0, 0.5, 0.5], 2);
  const single = traceFacts({ mode: "single", sources: [source({ n: 2, prompt: 2 })] });
  assert.deepEqual(cellLines(single, [a], { q: 1, k: 0 }, 0), ['query 1 "␣t1" → key 0 "␣t0"', "weight 0.2500"]);
  assert.deepEqual(cellLines(single, [a], { q: 0, k: 1 }, 0)[1], "weight —", "above the diagonal: no attention");
  const both = traceFacts({ mode: "compare", sources: [source({ n: 2, prompt: 2 }), source({ label: "B", n: 2, prompt: 2 })] });
  assert.equal(cellLines(both, [a, b], { q: 1, k: 1 }, -1)[1], "A 0.7500 · B 0.5000 · |Δ| 0.2500");
});

test("tiny weights are shown in exponent form, not as zero", () => {
  const m = matrix([1, 0, 0.0002, 0.9998], 2);
  const f = traceFacts({ mode: "single", sources: [source({ n: 2, prompt: 2 })] });
  assert.match(cellLines(f, [m], { q: 1, k: 0 }, 0)[1], /^weight 2\.\d\de-4$/);
});
