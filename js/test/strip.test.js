import { test } from "node:test";
import assert from "node:assert/strict";
import { findText, parseJump, shadeWeights } from "../src/strip.js";
import { f16array, packTril } from "./helpers.js";

const dense = [1, 0, 0, 0.5, 0.5, 0, 0.25, 0.25, 0.5];
const matrix = { key: "head/0/0", dtype: "float16", layout: "tril", shape: [3], data: f16array(packTril(dense, 3)) };

test("attention from a token is its row, divided by the row's largest weight", () => {
  const w = shadeWeights(matrix, 2, "from");
  assert.deepEqual([...w], [0.5, 0.5, 1]);
});

test("attention to a token is its column over the later tokens; earlier ones are not shaded", () => {
  const w = shadeWeights(matrix, 1, "to");
  assert.ok(Number.isNaN(w[0]));
  assert.deepEqual([...w.subarray(1)], [1, 0.5]);
});

test("no token or no matrix: nothing to shade", () => {
  assert.equal(shadeWeights(matrix, null, "from"), null);
  assert.equal(shadeWeights(undefined, 1, "from"), null);
});

test("a long trace's strip shades from the most exact section covering each token", () => {
  const pooled = { key: "pool/0/0/2", dtype: "float16", layout: "dense", shape: [2, 2], side: 2, data: f16array([1, -0, 0.5, 0.25]) };
  const region = { key: "region/0/0/3/4/2/4", dtype: "float16", layout: "dense", shape: [1, 2], rows: [3, 4], cols: [2, 4], data: f16array([0.125, 0.25]) };
  const w = shadeWeights([region, pooled], 3, "from", 4);
  assert.deepEqual([...w], [1, 1, 0.25, 0.5]); // keys 0–1 pooled (0.5), 2–3 exact; ÷ the max 0.5
});

test("the go-to box reads a position, a span (typed inclusive) or text", () => {
  assert.deepEqual(parseJump(" 1200 ", 8192), { position: 1200 });
  assert.deepEqual(parseJump("1200-1400", 8192), { span: [1200, 1401] });
  assert.deepEqual(parseJump("1400 – 1200", 8192), { span: [1200, 1401] });
  assert.deepEqual(parseJump("7..9", 8192), { span: [7, 10] });
  assert.deepEqual(parseJump("9000", 8192), { error: "position must be 0…8191; got 9000" });
  assert.deepEqual(parseJump("Paris", 8192), { text: "Paris" });
  assert.equal(parseJump("   ", 8192), null);
});

test("text is found where it starts, after the pinned token, wrapping around, across tokens", () => {
  const tokens = [" The", " capital", " of", " France", " is", " Paris", ".", " Paris", " again"];
  assert.deepEqual(findText(tokens, "paris", -1), { position: 5, index: 1, count: 2 });
  assert.deepEqual(findText(tokens, "Paris", 5), { position: 7, index: 2, count: 2 });
  assert.deepEqual(findText(tokens, "Paris", 7), { position: 5, index: 1, count: 2 });
  assert.deepEqual(findText(tokens, "of France", -1), { position: 2, index: 1, count: 1 });
  assert.equal(findText(tokens, "Berlin", -1), null);
});

test("a token a region covers keeps the region's answer, no attention included; causal shading stops at the token", () => {
  const pooled = { key: "pool/0/0/4", dtype: "float16", layout: "dense", shape: [2, 2], side: 4, data: f16array([0.5, -0, 0.25, 0.75]) };
  const region = { key: "region/0/0/4/8/4/8", dtype: "float16", layout: "dense", shape: [4, 4], rows: [4, 8], cols: [4, 8],
    data: f16array([0.5, -0, -0, -0, 0.25, 0.25, -0, -0, 0.1, 0.1, 0.1, -0, 0.2, 0.2, 0.2, 0.2]) };
  const w = shadeWeights([region, pooled], 5, "from", 8, true);
  assert.deepEqual([...w.subarray(0, 6)], [1, 1, 1, 1, 1, 1]); // keys 0–3 pooled 0.25, 4–5 exact 0.25
  assert.ok(w.subarray(6).every(Number.isNaN), "after the token: nothing, not the pooled square's max");
});
