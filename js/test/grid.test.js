import { test } from "node:test";
import assert from "node:assert/strict";
import { formatMetric } from "../src/grid.js";

test("badges keep about three digits and show a missing value as a dash", () => {
  assert.deepEqual([0.123456, 12.345, 123.45, -0.5, NaN].map(formatMetric), ["0.12", "12.3", "123", "-0.50", "–"]);
});
