import { test } from "node:test";
import assert from "node:assert/strict";
import { traceFacts } from "../src/facts.js";
import { barData, barsHigh, stepText } from "../src/steps.js";
import { f16array, packTril, source } from "./helpers.js";

// 4 tokens: prompt 0–1, generated 2–3; row q of the matrix is [q+1 equal weights].
const dense = [1, 0, 0, 0, 0.5, 0.5, 0, 0, 0.25, 0.25, 0.5, 0, 0.25, 0.25, 0.25, 0.25];
const matrix = { key: "head/0/0", dtype: "float16", layout: "tril", shape: [4], data: f16array(packTril(dense, 4)) };
const facts = traceFacts({ mode: "single", sources: [source({ n: 4, prompt: 2 })] });

test("a step names its output token and the query that produced it", () => {
  assert.equal(stepText(facts, 0), 'step 0: output "␣t2" (position 2), produced by query 1 "␣t1"');
  const fromStart = traceFacts({ mode: "single", sources: [source({ n: 2, prompt: 0 })] });
  assert.equal(stepText(fromStart, 0), 'step 0: output "␣t0" has no earlier token to attend from');
});

test("the bars are the producing query's weights over the earlier tokens, coloured by span", () => {
  const bars = barData(facts, [matrix], 1, false); // output 3, query 2
  assert.deepEqual(bars.x, [0.5, 1.5, 2.5]);
  assert.deepEqual(bars.top, [0.25, 0.25, 0.5]);
  assert.deepEqual(bars.color, ["#4c78a8", "#4c78a8", "#e45756"]);
  assert.equal(bars.width, 0.8);
  assert.equal(bars.nKeys, 3);
  assert.deepEqual(barData(facts, [matrix], 1, true).color, ["#79a6dc", "#79a6dc", "#ff8a80"], "dark theme colours");
});

test("compare view puts B's bars, faded, beside A's", () => {
  const both = traceFacts({ mode: "compare", sources: [source({ n: 4, prompt: 2 }), source({ label: "B", n: 4, prompt: 2 })] });
  const bars = barData(both, [matrix, matrix], 0, false); // query 1: two keys
  assert.deepEqual(bars.x, [0.3, 1.3, 0.7, 1.7]);
  assert.deepEqual(bars.color, ["#4c78a8", "#4c78a8", "#4c78a880", "#4c78a880"]);
  assert.equal(bars.width, 0.4);
});

test("no bars for an output with no producing query", () => {
  const fromStart = traceFacts({ mode: "single", sources: [source({ n: 4, prompt: 0 })] });
  assert.equal(barData(fromStart, [matrix], 0, false), null);
});

test("more keys than the chart has pixels: one bar per bucket of keys, their max, coloured by where it is", () => {
  const long = traceFacts({ mode: "single", sources: [source({ n: 10, prompt: 6 })] });
  // step 3: output 9, query 8 over keys 0–8; its row comes apart as a region
  const rowSection = { key: "region/0/0/8/9/0/9", dtype: "float16", layout: "dense", shape: [1, 9], rows: [8, 9], cols: [0, 9], data: f16array([0.5, 0, 0, 0, 0.125, 0.25, 0, 0.125, 0]) };
  const bars = barData(long, [rowSection], 3, false, 4);
  assert.equal(bars.bucket, 3);
  assert.deepEqual(bars.x, [1.5, 4.5, 7.5]);
  assert.deepEqual(bars.top, [0.5, 0.25, 0.125]);
  assert.deepEqual(bars.color, ["#4c78a8", "#4c78a8", "#e45756"]); // keys 0, 5 (prompt), 7 (generated)
  assert.ok(Math.abs(bars.width - 0.8 * 3) < 1e-9);
});

test("the bar chart's y-range follows the highest bar, never above 1.02", () => {
  assert.ok(Math.abs(barsHigh([0.05, 0.2, NaN, 0.1]) - 0.216) < 1e-9);
  assert.equal(barsHigh([0.99, 1]), 1.02);
  assert.equal(barsHigh([]), 1.02);
});

test("hovering a bar names its token, its value and the weighting", async () => {
  const { barLines } = await import("../src/steps.js");
  const bars = barData(facts, [matrix], 1, false); // query 2 over keys 0–2
  assert.deepEqual(barLines(facts, bars, 2.3), ['key 2 "␣t2" (generated)', "attention weight 0.5000", 'from query 2 "␣t2", step 1']);
  assert.equal(barLines(facts, bars, 0.9)[0], 'key 0 "␣t0" (prompt)');
  assert.match(barLines(facts, bars, 1.5, "norm")[1], /^value-weighted α·‖f\(x\)‖ 0\.2500$/);
  assert.equal(barLines(facts, bars, 3.2), null, "past the last key");
  assert.equal(barLines(facts, bars, -0.5), null);
  const both = traceFacts({ mode: "compare", sources: [source({ n: 4, prompt: 2 }), source({ label: "B", n: 4, prompt: 2 })] });
  assert.equal(barLines(both, barData(both, [matrix, matrix], 0, false), 1.5)[1], "attention weight: A 0.5000 · B 0.5000");
});

test("a bar holding several keys says which its max came from", async () => {
  const { barLines } = await import("../src/steps.js");
  const long = traceFacts({ mode: "single", sources: [source({ n: 10, prompt: 6 })] });
  const rowSection = { key: "region/0/0/8/9/0/9", dtype: "float16", layout: "dense", shape: [1, 9], rows: [8, 9], cols: [0, 9], data: f16array([0.5, 0, 0, 0, 0.125, 0.25, 0, 0.125, 0]) };
  const bars = barData(long, [rowSection], 3, false, 4); // bucket 3
  assert.deepEqual(barLines(long, bars, 4.2), ['key 5 "␣t5" (prompt)', "attention weight 0.2500", "(the max of keys 3–5)", 'from query 8 "␣t8", step 3']);
});
