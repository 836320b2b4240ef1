import { test } from "node:test";
import assert from "node:assert/strict";
import { excerpt, figureName, figureTitle } from "../src/download.js";
import { traceFacts } from "../src/facts.js";
import { source } from "./helpers.js";

const facts = traceFacts({ mode: "single", sources: [source({ name: "SmolLM2-135M", n: 6, prompt: 4 })] });

test("a heatmap's title names the model, the head, the scale (auto says so), the weighting and the prompt", () => {
  const lines = figureTitle(facts, { view: "heatmap", layer: 2, head: 1, scale: "auto", drawn: "log", weighting: "attention" });
  assert.deepEqual(lines, ["SmolLM2-135M · layer 2, head 1", "colour: log (auto) · attention weights α", `prompt: ${excerpt(facts)}`]);
  const mean = figureTitle(facts, { view: "heatmap", layer: 0, head: -1, scale: "row", drawn: "row", weighting: "norm" });
  assert.equal(mean[0], "SmolLM2-135M · layer 0, mean of heads");
  assert.equal(mean[1], "colour: row · value-weighted α·‖f(x)‖");
});

test("the grid's and the bars' titles say what they show", () => {
  const grid = figureTitle(facts, { view: "grid", scale: "linear", drawn: "linear", weighting: "attention", badge: "sink_score" });
  assert.equal(grid[0], "SmolLM2-135M · all heads (3 layers × 2 heads)");
  assert.equal(grid[1], "thumbnails: √(weight ÷ head max) · badges: sink score · attention weights α");
  const bars = figureTitle(facts, { view: "bars", layer: 1, head: 0, scale: "auto", drawn: "linear", weighting: "attention", step: 1 });
  assert.equal(bars[0], "SmolLM2-135M · layer 1, head 0 · step 1: output “t5”");
  assert.equal(bars[1], "attention weights α");
});

test("the prompt excerpt is the prompt's raw text, cut with … past 90 characters", () => {
  assert.equal(excerpt(facts), "“t0 t1 t2 t3”");
  const long = traceFacts({ mode: "single", sources: [source({ n: 60, prompt: 50 })] });
  const e = excerpt(long);
  assert.equal(e.length, 92);
  assert.ok(e.endsWith("…”"));
});

test("file names are safe and say the view", () => {
  const odd = traceFacts({ mode: "single", sources: [source({ name: "Hugging/Face model <x>" })] });
  assert.equal(figureName(odd, { view: "heatmap", layer: 3, head: -1 }), "attn_Hugging-Face-model-x-_L3_mean_heatmap.png");
  assert.equal(figureName(facts, { view: "grid" }), "attn_SmolLM2-135M_all-heads_grid.png");
});
