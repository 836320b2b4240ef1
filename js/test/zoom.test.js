import { test } from "node:test";
import assert from "node:assert/strict";
import { DETAIL_MAX_TOKENS, cellRegion, coversView, detailRegion, pixelsFor, placement, resolutionText, stepBox } from "../src/zoom.js";
import { f16array } from "./helpers.js";

// An 8192-token head pooled to 16 × 16 squares, and a region of it at full resolution.
const pooled = { key: "pool/0/1/16", dtype: "float16", layout: "dense", shape: [512, 512], side: 16, data: new Uint16Array(512 * 512) };
const region = { key: "region/0/1/4000/4100/3968/4096", dtype: "float16", layout: "dense", shape: [100, 128], rows: [4000, 4100], cols: [3968, 4096], data: f16array(new Array(100 * 128).fill(0.5)) };

test("the visible tokens map to the pooled squares that hold them", () => {
  assert.deepEqual(cellRegion(pooled, { q0: 0, q1: 8192, k0: 0, k1: 8192 }), { q0: 0, q1: 512, k0: 0, k1: 512 });
  assert.deepEqual(cellRegion(pooled, { q0: 4001, q1: 4300, k0: 17, k1: 33 }), { q0: 250, q1: 269, k0: 1, k1: 3 });
});

test("a region's cells are offset by its first row and key, and nothing outside it is drawn", () => {
  assert.deepEqual(cellRegion(region, { q0: 4050, q1: 5000, k0: 0, k1: 4000 }), { q0: 50, q1: 100, k0: 0, k1: 32 });
  assert.equal(cellRegion(region, { q0: 0, q1: 3000, k0: 0, k1: 3000 }), null);
  assert.deepEqual(placement(region, { q0: 50, q1: 100, k0: 0, k1: 32 }, 32, 50, 1), { x: 3968, y: 4050, dw: 32, dh: 50, side: 1 });
  assert.deepEqual(placement(pooled, { q0: 250, q1: 269, k0: 0, k1: 512 }, 256, 10, 2), { x: 0, y: 4000, dw: 8192, dh: 320, side: 32 });
});

test("a region covering part of the view gets that part of the pixels", () => {
  const view = { q0: 3900, q1: 4300, k0: 3900, k1: 4300 }; // 400 tokens over 540 px
  const cells = cellRegion(region, view);
  assert.equal(pixelsFor(region, cells, view, 540), Math.ceil((540 * 128) / 400));
  assert.ok(coversView(region, { q0: 4010, q1: 4090, k0: 3970, k1: 4090 }));
  assert.ok(!coversView(region, view));
});

test("full resolution is asked for only once a pooled square spans two pixels, snapped and trimmed", () => {
  const facts = { side: 16, pixels: 540, nq: 8192, nk: 8192, causal: true };
  assert.equal(detailRegion({ q0: 0, q1: 8192, k0: 0, k1: 8192 }, facts), null, "the whole head: pooled is enough");
  assert.equal(detailRegion({ q0: 0, q1: 6000, k0: 0, k1: 6000 }, facts), null, "11 tokens a pixel: still under 2 px a square");
  assert.deepEqual(detailRegion({ q0: 0, q1: 4000, k0: 0, k1: 4000 }, facts), { tooBig: true });
  assert.deepEqual(detailRegion({ q0: 4000, q1: 4300, k0: 3990, k1: 4290 }, facts), { q0: 3968, q1: 4352, k0: 3968, k1: 4352 });
  // causal: keys after the last row, and rows before the first key, hold no attention
  assert.deepEqual(detailRegion({ q0: 100, q1: 400, k0: 1000, k1: 1300 }, facts), null);
  assert.deepEqual(detailRegion({ q0: 900, q1: 1200, k0: 1000, k1: 1300 }, facts), { q0: 960, q1: 1216, k0: 960, k1: 1216 });
  assert.equal(detailRegion({ q0: 0, q1: 100, k0: 0, k1: 100 }, { ...facts, side: 1 }), null, "whole heads need none");
  assert.equal(DETAIL_MAX_TOKENS, 2048);
});

test("the note says what a pixel is and how to get more detail", () => {
  assert.equal(resolutionText(16, true), "pooled: 1 px = 16×16 tokens (max) · zoom in for full resolution");
  assert.equal(resolutionText(16, true, "loading"), "pooled: 1 px = 16×16 tokens (max) · loading full resolution…");
  assert.equal(resolutionText(32, true, "tooBig"), "pooled: 1 px = 32×32 tokens (max) · zoom in to ≤ 2048 tokens for full resolution");
  assert.equal(resolutionText(1, false), "full resolution");
  assert.equal(resolutionText(3, false), "1 px = 3×3 tokens (max); zoom in for full resolution");
});

test("the generation step's box stays inside the visible tokens, inset, and hides out of view", () => {
  const view = { q0: 10, q1: 50, k0: 5, k1: 45 };
  assert.deepEqual(stepBox(20, view, 0.1), { left: 5.1, right: 44.9, top: 20, bottom: 21 });
  assert.deepEqual(stepBox(49, view, 0.1), { left: 5.1, right: 44.9, top: 49, bottom: 49.9 });
  assert.equal(stepBox(60, view, 0.1), null);
  assert.equal(stepBox(9, view, 0.1), null);
  assert.equal(stepBox(-1, view, 0.1), null);
});
