import { test } from "node:test";
import assert from "node:assert/strict";
import { sliderKey } from "../src/dom.js";

test("arrow keys move a slider by one, page keys by a tenth, Home and End to the ends, clamped", () => {
  assert.equal(sliderKey("ArrowRight", 3, 0, 29), 4);
  assert.equal(sliderKey("ArrowDown", 3, 0, 29), 2);
  assert.equal(sliderKey("PageUp", 3, 0, 29), 6);
  assert.equal(sliderKey("PageDown", 3, 0, 29), 0);
  assert.equal(sliderKey("Home", 3, 0, 29), 0);
  assert.equal(sliderKey("End", 3, 0, 29), 29);
  assert.equal(sliderKey("ArrowRight", 29, 0, 29), 29);
});

test("other keys are left to the host", () => {
  assert.equal(sliderKey("a", 3, 0, 29), undefined);
  assert.equal(sliderKey("Enter", 3, 0, 29), undefined);
});
