import { test } from "node:test";
import assert from "node:assert/strict";
import { shadeWeights } from "../src/strip.js";
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
