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

test("when labels do not fit, evenly spaced positions are labelled instead", () => {
  const texts = Array.from({ length: 1024 }, (_, i) => `t${i}`);
  const { ticks, labels, tokens } = axisTicks(0, 1024, texts, 500);
  assert.equal(tokens, false);
  assert.ok(ticks.length < 30);
  assert.equal(labels.get(ticks[1]), String(ticks[1] - 0.5));
});

test("zooming in far enough brings token labels back", () => {
  const texts = Array.from({ length: 1024 }, (_, i) => `t${i}`);
  const { labels, tokens } = axisTicks(100, 120, texts, 500);
  assert.ok(tokens);
  assert.equal(labels.get(100.5), "t100");
});
