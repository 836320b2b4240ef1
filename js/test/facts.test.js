import { test } from "node:test";
import assert from "node:assert/strict";
import { isGenerated, traceFacts, traceTitle } from "../src/facts.js";
import { source, tokens } from "./helpers.js";

test("a single trace: its layers, heads, tokens and spans, keys over the same tokens", () => {
  const f = traceFacts({ mode: "single", sources: [source()] });
  assert.equal(f.compare, false);
  assert.equal(f.cross, false);
  assert.deepEqual(f.layers, [0, 1, 2]);
  assert.deepEqual(f.heads, [0, 1]);
  assert.equal(f.keyTokens, f.tokens);
  assert.deepEqual(f.prompt, [0, 3]);
  assert.deepEqual(f.generated, [3, 5]);
  assert.equal(traceTitle(f), "smollm2 · 5 tokens (prompt 3, generated 2)");
});

test("compare view shows the layers and heads both traces captured, and both in the title", () => {
  const f = traceFacts({ mode: "compare", sources: [source(), source({ label: "B", name: "other", n: 4, layers: [1, 2, 3], heads: [1] })] });
  assert.equal(f.compare, true);
  assert.deepEqual(f.layers, [1, 2]);
  assert.deepEqual(f.heads, [1]);
  assert.equal(traceTitle(f), "A: smollm2 · 5 tokens vs B: other · 4 tokens");
});

test("cross-attention: decoder tokens are the queries, the encoder's the keys", () => {
  const enc = tokens(["a", "b", "c", "d"]);
  const f = traceFacts({ mode: "single", sources: [source({ name: "t5", key_tokens: enc })] });
  assert.equal(f.cross, true);
  assert.deepEqual(f.keyTokens, ["a", "b", "c", "d"]);
  assert.equal(traceTitle(f), "t5 · cross-attention: 5 decoder tokens (queries) → 4 encoder tokens (keys)");
});

test("an encoder trace (input span, nothing generated) and one with no spans", () => {
  const enc = { ...source(), spans: { input: [0, 5] } };
  const f = traceFacts({ mode: "single", sources: [enc] });
  assert.deepEqual(f.prompt, [0, 5]);
  assert.deepEqual(f.generated, [5, 5]);
  assert.deepEqual(traceFacts({ mode: "single", sources: [{ ...source(), spans: {} }] }).prompt, [0, 5]);
});

test("generated positions are those of the generated span", () => {
  const f = traceFacts({ mode: "single", sources: [source()] });
  assert.deepEqual([0, 2, 3, 4, 5].map((p) => isGenerated(f, p)), [false, false, true, true, false]);
});
