import { test } from "node:test";
import assert from "node:assert/strict";
import { formatMetric, spritePixels } from "../src/grid.js";

test("badges keep about three digits and show a missing value as a dash", () => {
  assert.deepEqual([0.123456, 12.345, 123.45, -0.5, NaN].map(formatMetric), ["0.12", "12.3", "123", "-0.50", "–"]);
});

test("the grid's sprite tiles thumbnails layers down, heads across, transparent above a causal diagonal and where not computed", () => {
  // 2 layers × 3 heads of 2 × 2 thumbnails; pixel value = 10 * thumbnail index + position.
  const data = Uint8Array.from({ length: 24 }, (_, i) => 10 * Math.floor(i / 4) + (i % 4));
  const lut = Uint32Array.from({ length: 256 }, (_, v) => 1000 + v);
  const { px, width, height } = spritePixels({ shape: [2, 3, 2, 2], data }, lut, true, 5);
  assert.equal(width, 6);
  assert.equal(height, 4);
  const at = (x, y) => px[y * width + x];
  // layer 0, head 1 (index 1): rows at y 0–1, columns 2–3; (0,1) is above the diagonal.
  assert.equal(at(2, 0), 1010);
  assert.equal(at(3, 0), 0);
  assert.equal(at(2, 1), 1012);
  assert.equal(at(3, 1), 1013);
  // layer 1, head 1 (index 4): y 2–3, x 2–3.
  assert.equal(at(2, 3), 1042);
  // layer 1, head 2 (index 5) is not computed yet: transparent.
  assert.equal(at(5, 3), 0);
  const full = spritePixels({ shape: [2, 3, 2, 2], data }, lut, false, 6).px;
  assert.equal(full[0 * 6 + 1], 1001);
  assert.equal(full[3 * 6 + 5], 1053);
});
