import { test } from "node:test";
import assert from "node:assert/strict";
import { axisTicks, quoted, shortLabel, tokenLabel } from "../src/tokens.js";

test("newlines and tabs are made visible", () => {
  assert.equal(tokenLabel("a\nb\tc"), "a⏎b⇥c");
});

test("long labels are cut to whole characters with an ellipsis", () => {
  assert.equal(shortLabel("abcdefghijklmnop", 5), "abcd…");
  assert.equal(shortLabel("😀😀😀😀😀😀", 3), "😀😀…");
});

test("a leading space stays visible in quotes", () => {
  assert.equal(quoted(" Paris"), '"␣Paris"');
});

test("every token gets its text as a label when labels fit", () => {
  const { ticks, labels, tokens } = axisTicks(0, 3, ["The", " cat", "\n"], 300);
  assert.ok(tokens);
  assert.deepEqual(ticks, [0.5, 1.5, 2.5]);
  assert.deepEqual([...labels.values()], ["The", " cat", "⏎"]);
});

test("when every label does not fit, every step-th token keeps its text, with its position", () => {
  const texts = Array.from({ length: 1024 }, (_, i) => `t${i}`);
  const { ticks, labels, tokens } = axisTicks(0, 1024, texts, 500);
  assert.equal(tokens, false);
  assert.ok(ticks.length <= 50 && ticks.length >= 20, `${ticks.length} ticks in 500 px`);
  const i = ticks[1] - 0.5;
  assert.equal(labels.get(ticks[1]), `${i} t${i}`);
  // 190 tokens in 384 px: thinned, with text (not bare positions past ~50 tokens).
  const few = axisTicks(0, 190, texts.slice(0, 190), 384);
  assert.ok([...few.labels.values()].every((l) => /^\d+ t\d+$/.test(l)));
});

test("at deep zoom a tick stays in view, at the visible part of its cell", () => {
  const texts = Array.from({ length: 100 }, (_, i) => `t${i}`);
  const { ticks, labels } = axisTicks(10.6, 10.9, texts, 400);
  assert.equal(ticks.length, 1);
  assert.ok(ticks[0] > 10.6 && ticks[0] < 10.9);
  assert.equal(labels.get(ticks[0]), "t10");
});

test("zooming in far enough brings token labels back", () => {
  const texts = Array.from({ length: 1024 }, (_, i) => `t${i}`);
  const { labels, tokens } = axisTicks(100, 120, texts, 500);
  assert.ok(tokens);
  assert.equal(labels.get(100.5), "t100");
});
